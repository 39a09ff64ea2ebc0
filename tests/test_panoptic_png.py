"""The COCO panoptic PNG codec (m2f_jax/data/panoptic_png.py)."""

import numpy as np
import pytest

from m2f_jax.data import panoptic_png


def test_id_rgb_round_trip():
  ids = np.array([[0, 1, 255, 256], [65535, 65536, 256 ** 3 - 1, 12345678]])
  rgb = panoptic_png.id2rgb(ids)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
  np.testing.assert_array_equal(panoptic_png.rgb2id(rgb), ids)


def test_png_file_round_trip(tmp_path):
  ids = np.arange(12 * 7).reshape(12, 7) * 1000
  panoptic_png.write_panoptic_png(tmp_path / "a.png", ids)
  np.testing.assert_array_equal(panoptic_png.read_panoptic_png(tmp_path / "a.png"), ids)


def test_out_of_range_ids_are_refused():
  with pytest.raises(ValueError, match="256"):
    panoptic_png.id2rgb(np.array([[-1, 0]]))
