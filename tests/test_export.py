"""Tests of m2f_jax/data/export.py: export -> the `coco_format` dataset -> the same records."""

import json
import os

import numpy as np
import pytest

from m2f_jax import config_lib
from m2f_jax.data import datasets
from m2f_jax.data import export
from m2f_jax.data import pipeline
from m2f_jax.data.panoptic_png import read_panoptic_png

_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                     "tiny.py")


def _synthetic_cfg(num_val=3):
  cfg = config_lib.data_config("synthetic")
  cfg.update(num_train=2, num_val=num_val, seed=11)
  return cfg


def _same_segmentation(a_ids, a_segments, b_ids, b_segments):
  """Pixel-for-pixel equal panoptic maps up to a renumbering of the segment ids, with the
  same (category_id, iscrowd, isthing) for each pair of matched segments."""
  pairs = set(zip(a_ids.ravel().tolist(), b_ids.ravel().tolist()))
  a_to_b = dict(pairs)
  assert len(a_to_b) == len(pairs) == len(set(a_to_b.values())), "not a renumbering"
  assert a_to_b.get(0, 0) == 0  # void stays void
  a_info = {int(i): k for k, i in enumerate(a_segments["id"])}
  b_info = {int(i): k for k, i in enumerate(b_segments["id"])}
  for a, b in a_to_b.items():
    if a == 0:
      continue
    for key in ("category_id", "iscrowd", "isthing"):
      assert a_segments[key][a_info[a]] == b_segments[key][b_info[b]], key


def test_export_reads_back_through_the_coco_format_dataset(tmp_path):
  pytest.importorskip("tensorflow_datasets").disable_progress_bar()
  source_cfg = _synthetic_cfg(num_val=3)
  out = tmp_path / "export"
  json_path = export.export(source_cfg, "validation", str(out), log_every=0)
  with open(json_path) as f:
    dataset_json = json.load(f)
  assert [(c["id"], c["name"], c["isthing"]) for c in dataset_json["categories"]] == [
      (c["id"], c["name"], c["isthing"]) for c in datasets.categories(source_cfg)]
  assert len(dataset_json["images"]) == len(dataset_json["annotations"]) == 3
  ann = dataset_json["annotations"][0]
  ids = read_panoptic_png(out / "panoptic" / ann["file_name"])
  for s in ann["segments_info"]:
    mask = ids == s["id"]
    assert s["area"] == mask.sum() > 0
    x, y, w, h = s["bbox"]
    assert mask[y:y + h, x:x + w].sum() == s["area"]

  cfg = config_lib.data_config("coco_format")
  cfg.update(val_json_file=json_path, val_image_dir=str(out / "images"),
             val_panoptic_dir=str(out / "panoptic"), data_dir=str(tmp_path / "tfds"))
  datasets.prepare_dataset(cfg)
  read_back = datasets.data_source(cfg, "validation")
  original = datasets.data_source(source_cfg, "validation")
  assert len(read_back) == len(original)
  names = {c["name"]: c["isthing"] for c in datasets.categories(cfg)}
  assert names == {c["name"]: c["isthing"] for c in datasets.categories(source_cfg)}
  for i in range(len(read_back)):
    record = pipeline.normalize_record(read_back[i])
    expected = original[record["image_id"]]
    np.testing.assert_array_equal(record["image"], expected["image"])
    np.testing.assert_array_equal(record["semantic"], expected["semantic"])
    _same_segmentation(expected["panoptic"], expected["segments_info"],
                       record["panoptic"], record["segments_info"])


def test_dataset_ids_renumbering_and_semantic_only_records():
  categories = [{"id": 0, "name": "a", "isthing": 1, "dataset_id": 7},
                {"id": 1, "name": "b", "isthing": 0, "dataset_id": 9}]
  image = np.zeros((4, 5, 3), np.uint8)
  big = np.full((4, 5), 2**25, np.int64)  # does not fit the PNG encoding
  big[0, :2] = 5
  big[3, 4] = 0
  record = {"image": image, "panoptic": big,
            "segments_info": {"id": np.array([5, 2**25]), "category_id": np.array([0, 1]),
                              "iscrowd": np.array([True, False]),
                              "isthing": np.array([True, False])}}
  ids, segments = export.record_to_panoptic(record, categories)
  assert ids.max() < 256**3 and ids[3, 4] == 0
  assert [(s["class"], s["iscrowd"]) for s in segments] == [(0, 1), (1, 0)]
  np.testing.assert_array_equal(ids == segments[0]["id"], big == 5)
  semantic = np.array([[0, 0, 1, 1, 255]] * 4, np.uint8)
  instances = {"masks": np.zeros((2, 4, 5), np.uint8), "category_id": np.array([0, 0]),
               "iscrowd": np.array([False, False])}
  instances["masks"][0, :, :2] = 1
  instances["masks"][1, :2, 1] = 1  # smaller, on top where they overlap
  ids, segments = export.record_to_panoptic(
      {"image": image, "semantic": semantic, "instances": instances}, categories)
  by_class = [s["class"] for s in segments]
  assert by_class == [0, 0, 1]  # two instances, then the stuff left in the semantic map
  assert ids[0, 1] == segments[1]["id"] and ids[2, 1] == segments[0]["id"]
  assert np.all(ids[:, 4] == 0) and np.all(ids[:, 2:4] == segments[2]["id"])


def test_cli_writes_atomically_and_refuses_a_non_empty_output(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  args = ["--dataset", "synthetic", "--split", "train", "--num-examples", "2",
          "--output", str(out)]
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.main(args)
  assert os.listdir(out) == ["keep.txt"]
  path = export.main(args + ["--overwrite"])
  assert "wrote 2 images of synthetic train" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["images", "panoptic", "panoptic.json"]
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left behind
  with open(path) as f:
    assert [i["id"] for i in json.load(f)["images"]] == [0, 1]
  with pytest.raises(ValueError, match="differs"):
    export.main(["--dataset", "coco_panoptic", "--config", _TINY,
                 "--output", str(tmp_path / "o2")])
