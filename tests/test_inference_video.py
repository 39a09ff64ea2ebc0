"""Tests of m2f_jax/inference_video.py against a direct numpy computation of the official
`inference_video` (all tubes upsampled first, then the top 10), chunking independence and the
YouTube-VIS result format."""

import numpy as np
from pycocotools import mask as mask_util
import pytest

from m2f_jax import inference_video as iv


def _official(logits, masks, padded, image, output, topk=10):
  """The official order with torch's interpolate: upsample all Q tubes, then choose."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  probs = torch.softmax(torch.from_numpy(logits), -1)[:, :-1]
  num_classes = probs.shape[1]
  scores, index = probs.flatten().topk(topk, sorted=True)
  up = F.interpolate(torch.from_numpy(masks), size=padded, mode="bilinear", align_corners=False)
  tubes = up[index // num_classes][:, :, :image[0], :image[1]]
  tubes = F.interpolate(tubes, size=output, mode="bilinear", align_corners=False)
  return scores.numpy(), (index % num_classes).numpy(), (tubes > 0).numpy()


@pytest.fixture(scope="module")
def video():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((12, 6)).astype(np.float32) * 3  # Q = 12, K = 5
  masks = rng.standard_normal((12, 5, 8, 12)).astype(np.float32)  # T = 5, h = 8, w = 12
  return logits, masks


def test_matches_the_official_computation(video):
  logits, masks = video
  sizes = dict(padded_size=(32, 48), image_size=(30, 41), output_size=(45, 61))
  scores, labels, expected = _official(logits, masks, (32, 48), (30, 41), (45, 61))
  got = iv.inference_video(pred_logits=logits, pred_masks=masks, encode=False, **sizes)
  np.testing.assert_allclose(got["scores"], scores, rtol=1e-6)
  np.testing.assert_array_equal(got["labels"], labels)
  assert got["masks"].shape == (10, 5, 45, 61) and got["masks"].dtype == bool
  # Bilinear weights in float32: a pixel may flip where the logit is ~0.
  assert (got["masks"] != expected).mean() < 1e-3


def test_chunks_and_encoding_do_not_change_the_result(video):
  logits, masks = video
  sizes = dict(padded_size=(32, 48), image_size=(32, 48), output_size=(20, 30))
  dense = iv.inference_video(pred_logits=logits, pred_masks=masks, encode=False,
                             frame_chunk=5, **sizes)
  for chunk in (1, 2, 3):
    encoded = iv.inference_video(pred_logits=logits, pred_masks=masks, frame_chunk=chunk,
                                 **sizes)
    decoded = np.stack([np.stack([mask_util.decode(r) for r in tube])
                        for tube in encoded["segmentations"]])
    np.testing.assert_array_equal(decoded.astype(bool), dense["masks"])
  results = iv.to_results(9, encoded, category_ids=[10, 11, 12, 13, 14])
  assert len(results) == 10
  assert set(results[0]) == {"video_id", "category_id", "score", "segmentations"}
  assert all(r["video_id"] == 9 and r["category_id"] in range(10, 15) for r in results)
  assert all(len(r["segmentations"]) == 5 and isinstance(r["segmentations"][0]["counts"], str)
             for r in results)
  assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_shape_errors(video):
  logits, masks = video
  with pytest.raises(ValueError, match="one video"):
    iv.inference_video(pred_logits=logits[None], pred_masks=masks[None], padded_size=(32, 48),
                       image_size=(32, 48), output_size=(32, 48))
