"""Tests of m2f_jax/data/synthetic_video.py: clip format, track ids stable across frames,
entering / leaving / same-class crossing tracks, determinism, the random-access source."""

import pickle

import numpy as np
import pytest

from m2f_jax.data import synthetic
from m2f_jax.data import synthetic_video


def _clips(n, **kwargs):
  return [synthetic_video.generate_clip(i, **kwargs) for i in range(n)]


def test_clip_format_and_labels_agree():
  lengths = set()
  for clip in _clips(6, seed=2):
    video, panoptic, info = clip["video"], clip["panoptic"], clip["segments_info"]
    t, h, w = panoptic.shape
    lengths.add(t)
    assert synthetic_video.FRAME_RANGE[0] <= t <= synthetic_video.FRAME_RANGE[1]
    assert synthetic.SIZE_RANGE[0] <= min(h, w) and max(h, w) <= synthetic.SIZE_RANGE[1]
    assert video.shape == (t, h, w, 3) and video.dtype == np.uint8
    assert panoptic.dtype == np.int32 and clip["semantic"].shape == (t, h, w)
    assert sorted(np.unique(panoptic)) == sorted(info["id"])  # no void, nothing unlisted
    np.testing.assert_array_equal(info["isthing"], np.isin(info["category_id"],
                                                           synthetic.THING_IDS))
    lut = np.full(info["id"].max() + 1, 255, np.uint8)
    lut[info["id"]] = info["category_id"]
    np.testing.assert_array_equal(clip["semantic"], lut[panoptic])
  assert len(lengths) >= 3
  clip = synthetic_video.generate_clip(0, image_size=(20, 36), num_frames=3)
  assert clip["video"].shape == (3, 20, 36, 3)


def test_track_ids_follow_one_object_through_the_clip():
  """Each id's pixels lie inside one shape that moves in a straight line at constant speed."""
  checked = 0
  for clip in _clips(8, seed=4, image_size=(96, 128), with_amodal=True):
    panoptic = clip["panoptic"]
    for sid, whole in zip(clip["amodal"]["id"], clip["amodal"]["masks"]):  # [T, H, W]
      assert not np.any((panoptic == sid) & ~whole)  # visible part within its own shape
      inside = [t for t in range(len(whole)) if whole[t].any() and not (
          whole[t, 0].any() or whole[t, -1].any() or whole[t, :, 0].any()
          or whole[t, :, -1].any())]
      centres = np.array([np.argwhere(whole[t]).mean(0) for t in inside])
      runs = [i for i in range(len(inside) - 2)
              if inside[i + 2] - inside[i] == 2]  # three consecutive whole frames
      for i in runs:  # zero acceleration (up to rasterization)
        assert np.abs(centres[i] - 2 * centres[i + 1] + centres[i + 2]).max() < 1.5
        checked += 1
  assert checked >= 20


def test_tracks_enter_leave_and_cross_paths_with_their_own_class():
  entered = left = crossed = 0
  for clip in _clips(12, seed=6, image_size=(96, 128), with_amodal=True):
    panoptic, info = clip["panoptic"], clip["segments_info"]
    class_of = dict(zip(info["id"].tolist(), info["category_id"].tolist()))
    amodal = dict(zip(clip["amodal"]["id"].tolist(), clip["amodal"]["masks"]))
    for sid, whole in amodal.items():
      seen = whole.reshape(len(whole), -1).any(1)  # [T]
      entered += bool(not seen[0] and seen.any())
      left += bool(seen.any() and not seen[-1])
    order = list(amodal)  # back to front
    for i, back in enumerate(order):
      for front in order[i + 1:]:
        if class_of.get(back) is not None and class_of.get(back) == class_of.get(front):
          # The front one hides part of the back one in some frame, which shows elsewhere.
          hidden = amodal[back] & (panoptic == front)  # [T, H, W]
          crossed += bool(hidden.any() and (panoptic == back).any())
  assert entered >= 2 and left >= 2 and crossed >= 3


def test_deterministic_source_and_splits():
  a = synthetic_video.generate_clip(3, seed=1)
  b = synthetic_video.generate_clip(3, seed=1)
  np.testing.assert_array_equal(a["video"], b["video"])
  np.testing.assert_array_equal(a["panoptic"], b["panoptic"])
  c = synthetic_video.generate_clip(3, seed=1, split="validation")
  assert a["video"].shape != c["video"].shape or not np.array_equal(a["video"], c["video"])
  source = synthetic_video.SyntheticVideoSource(5, seed=1, image_size=(32, 40), num_frames=4)
  clone = pickle.loads(pickle.dumps(source))
  assert len(clone) == 5
  np.testing.assert_array_equal(clone[4]["panoptic"], source[4]["panoptic"])
  np.testing.assert_array_equal(
      source[2]["video"],
      synthetic_video.generate_clip(2, seed=1, image_size=(32, 40), num_frames=4)["video"])
  with pytest.raises(IndexError):
    source[5]
  with pytest.raises(ValueError, match="split"):
    synthetic_video.SyntheticVideoSource(2, split="test")
