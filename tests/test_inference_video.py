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


# ------------------------------------------------------------------------------------------
# Video panoptic inference and clip linking
# ------------------------------------------------------------------------------------------

ISTHING = [True, True, False, False, False]  # K = 5
PAN_SIZES = dict(padded_size=(32, 64), image_size=(30, 61), output_size=(37, 70))


def _official_panoptic(logits, mask_logits, isthing, threshold=0.8, overlap=0.8):
  """The official `panoptic_inference` in numpy, per pixel, on the whole [T, H, W] volume."""
  z = np.exp(logits - logits.max(-1, keepdims=True))
  probs = z / z.sum(-1, keepdims=True)
  scores, labels = probs.max(-1), probs.argmax(-1)
  keep = (labels != logits.shape[1] - 1) & (scores > threshold)
  masks = 1 / (1 + np.exp(-mask_logits[keep].astype(np.float64)))  # [k, T, H, W]
  panoptic = np.zeros(mask_logits.shape[1:], np.int32)
  segments = []
  if not keep.any():
    return panoptic, segments
  ids = np.argmax(scores[keep][:, None, None, None] * masks, axis=0)  # [T, H, W]
  stuff, current = {}, 0
  for k, label in enumerate(labels[keep]):
    thing = isthing[label]
    area, original = (ids == k).sum(), (masks[k] >= 0.5).sum()
    mask = (ids == k) & (masks[k] >= 0.5)
    if area > 0 and original > 0 and mask.sum() > 0:
      if area / original < overlap:
        continue
      if not thing:
        if label in stuff:
          panoptic[mask] = stuff[label]
          continue
        stuff[label] = current + 1
      current += 1
      panoptic[mask] = current
      segments.append({"id": current, "category_id": int(label), "isthing": bool(thing)})
  return panoptic, segments


@pytest.fixture(scope="module")
def panoptic_video():
  """Q = 10 queries over T = 5 frames: 7 confident (classes 0, 1, stuff 2 twice, stuff 3
  twice, 0), one no-object, two unsure; each mask a moving blob over noise; query 6 covers
  query 0's blob (one of them loses to the overlap rule); query 1 leaves after frame 2."""
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((10, 6)).astype(np.float32)
  for q, k in enumerate([0, 1, 2, 2, 3, 3, 0, 5]):
    logits[q, k] += 6.0
  yy, xx = np.mgrid[:8, :16]
  masks = rng.standard_normal((10, 5, 8, 16)).astype(np.float32)
  for q in range(10):
    cy, cx = 2 + 4 * (q % 2), 1.5 + 3 * (q // 2) + rng.uniform(-1, 1)
    r = rng.uniform(1.5, 2.5)
    if q == 6:
      cy, cx, r = 2, 2.5, 3.0
    for t in range(5):
      masks[q, t] += 3 * (r - np.hypot(yy - cy - 0.3 * t, xx - cx + 0.3 * t))
  masks[1, 3:] = -5.0
  return logits, masks


def test_video_panoptic_matches_a_per_pixel_computation(panoptic_video):
  logits, masks = panoptic_video
  full = np.asarray(iv.logits_at_output(masks, **PAN_SIZES))  # [Q, T, H, W], every query
  expected, segments = _official_panoptic(logits, full, ISTHING)
  assert {s["isthing"] for s in segments} == {True, False}
  assert 3 <= len(segments) < 7  # merged stuff, an overlap drop
  assert not (expected[3:] == [s["id"] for s in segments if s["category_id"] == 1][0]).any()
  for chunk in (1, 2, 5):
    got = iv.video_panoptic_inference(pred_logits=logits, pred_masks=masks, isthing=ISTHING,
                                      frame_chunk=chunk, **PAN_SIZES)
    np.testing.assert_array_equal(got["panoptic"], expected)
    assert [{k: s[k] for k in ("id", "category_id", "isthing")}
            for s in got["segments_info"]] == segments
    for t, ids in enumerate(got["frame_segments"]):
      assert ids == sorted(set(np.unique(expected[t]).tolist()) - {0})
  # Stuff merged per class over the whole video: one segment per stuff class.
  stuff = [s["category_id"] for s in segments if not s["isthing"]]
  assert len(stuff) == len(set(stuff))
  assert all(0.8 < s["score"] <= 1 and 0 <= s["query"] < 10 for s in got["segments_info"])


def test_video_panoptic_without_confident_queries(panoptic_video):
  logits, masks = panoptic_video
  none = np.zeros_like(logits)
  none[:, -1] = 5.0
  got = iv.video_panoptic_inference(pred_logits=none, pred_masks=masks, isthing=ISTHING,
                                    **PAN_SIZES)
  assert got["panoptic"].shape == (5, 37, 70) and not got["panoptic"].any()
  assert got["segments_info"] == [] and got["frame_segments"] == [[]] * 5


def test_clip_starts():
  assert iv.clip_starts(5, 8, 2) == [0]
  assert iv.clip_starts(10, 4, 1) == [0, 3, 6]
  assert iv.clip_starts(11, 4, 1) == [0, 3, 6, 7]
  with pytest.raises(ValueError, match="overlap"):
    iv.clip_starts(10, 4, 4)


class _PerFrameModel:
  """A model whose tubes are per-frame functions of the video (no temporal context), its
  queries shuffled differently in every clip: linking must undo the shuffles exactly."""

  def __init__(self, logits, masks, seed=0):
    self.logits, self.masks = logits, masks
    self.rng = np.random.default_rng(seed)

  def clip(self, start, length):
    order = self.rng.permutation(len(self.logits))
    return self.logits[order], self.masks[order, start:start + length]


def test_linked_clips_equal_whole_video_inference(panoptic_video):
  logits, masks = panoptic_video
  # Every query not "no object" present in every frame (a tube empty in the overlap frames
  # links by class similarity only, see link_clips); the others identical.
  logits, masks = logits.copy(), masks.copy()
  masks[7:] = -5.0
  logits[8:] = logits[7]
  masks[:7] = np.maximum(masks[:7], -1.0)
  for q in range(7):
    masks[q, :, q % 8, q] = 4.0  # a pixel of its own in every frame
  whole = iv.video_panoptic_inference(pred_logits=logits, pred_masks=masks, isthing=ISTHING,
                                      **PAN_SIZES)
  model = _PerFrameModel(logits, masks)
  for clip_frames, overlap in ((2, 1), (3, 1), (4, 2)):
    starts = iv.clip_starts(5, clip_frames, overlap)
    clips = [model.clip(s, clip_frames) for s in starts]
    linked_logits, linked_masks = iv.link_clips(clips, starts, 5)
    got = iv.video_panoptic_inference(pred_logits=linked_logits, pred_masks=linked_masks,
                                      isthing=ISTHING, **PAN_SIZES)
    # The same segments over the video, up to their ids (ids follow the query order, here
    # the first clip's shuffled order).
    rename = {0: 0}
    for s in got["segments_info"]:
      rename[s["id"]] = int(np.unique(whole["panoptic"][got["panoptic"] == s["id"]])[0])
    np.testing.assert_array_equal(np.vectorize(rename.get)(got["panoptic"]), whole["panoptic"])
    category = {s["id"]: s["category_id"] for s in whole["segments_info"]}
    assert sorted(rename[s["id"]] for s in got["segments_info"]) == sorted(category)
    assert all(category[rename[s["id"]]] == s["category_id"] for s in got["segments_info"])
  with pytest.raises(ValueError, match="does not overlap"):
    iv.link_clips([model.clip(0, 2), model.clip(2, 2)], [0, 2], 4)


def test_link_clips_starts_tubes_for_new_objects():
  """Clips [0, 3) and [2, 5) of Q = 3 queries, K = 1: a tube present in the shared frame 2
  links; an object entering at frame 4 starts a new tube; an unlinked no-object query is
  dropped; a tube's frames outside its clips are ABSENT_LOGIT."""
  on, off = 5.0, -5.0
  a_logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0]], np.float32)  # 2 objects, 1 none
  a = np.full((3, 3, 2, 2), off, np.float32)
  a[0, :, 0, 0] = on  # object 0 in every frame
  a[1, :2, 1, 1] = on  # object 1 leaves after frame 1
  b_logits = np.array([[0.0, 4.0], [4.0, 0.0], [2.0, 0.0]], np.float32)
  b = np.full((3, 3, 2, 2), off, np.float32)
  b[1, :, 0, 0] = on  # object 0 continues as query 1
  b[2, 2, 1, 0] = on  # a new object at frame 4 (query 2)
  b[0, :, 0, 1] = on  # a no-object query with a mask: not linked (no overlap), dropped
  logits, masks = iv.link_clips([(a_logits, a), (b_logits, b)], [0, 2], 5)
  assert logits.shape == (4, 2) and masks.shape == (4, 5, 2, 2)
  np.testing.assert_allclose(logits[0], (a_logits[0] + b_logits[1]) / 2)
  np.testing.assert_array_equal(masks[0, :, 0, 0], on)
  np.testing.assert_array_equal(masks[1, 3:], iv.ABSENT_LOGIT)  # not in the second clip
  np.testing.assert_array_equal(masks[2, 3:], iv.ABSENT_LOGIT)  # the first clip's no-object
  np.testing.assert_allclose(logits[3], b_logits[2])
  np.testing.assert_array_equal(masks[3, :2], iv.ABSENT_LOGIT)
  assert masks[3, 4, 1, 0] == on
