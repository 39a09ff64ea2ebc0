"""Tests of m2f_jax/data/video_pipeline.py: the batch contract, one augmentation per clip,
the official frame sampling, resumable iterators, evaluation videos and their ground truth."""

import ml_collections
import numpy as np
import pytest

from m2f_jax import data
from m2f_jax.data import synthetic_video
from m2f_jax.data import video_pipeline as vp

MEAN, STD = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)


def _iterator(source, **kwargs):
  args = dict(batch_size=2, seed=3, num_frames=2, num_targets=6, image_size=(64, 96),
              pixel_mean=MEAN, pixel_std=STD)
  args.update(kwargs)
  return vp.train_iterator(source, **args)


def test_batch_contract_on_synthetic_clips():
  source = synthetic_video.SyntheticVideoSource(6, seed=1)
  batch = next(_iterator(source, num_frames=3))
  assert batch["images"].shape == (2, 3, 64, 96, 3) and batch["images"].dtype == np.float32
  assert batch["labels"].shape == (2, 6) and batch["labels"].dtype == np.int32
  assert batch["masks"].shape == (2, 6, 3, 64, 96) and batch["masks"].dtype == np.uint8
  assert batch["valid"].shape == (2, 6) and batch["valid"].dtype == bool
  assert batch["padding_mask"].shape == (2, 64, 96)
  assert batch["video_id"].shape == (2,)
  assert batch["valid"].any(axis=1).all()
  masks = batch["masks"]
  assert set(np.unique(masks)) <= {0, 1}
  # Padded targets are empty; valid ones have a pixel in some frame and are things.
  assert not masks[~batch["valid"]].any()
  assert masks[batch["valid"]].reshape(batch["valid"].sum(), -1).any(axis=1).all()
  assert set(batch["labels"][batch["valid"]].tolist()) <= set(synthetic_video.synthetic.THING_IDS)
  # Padding is 0 after normalization, in every frame.
  for b in range(2):
    assert not batch["images"][b, :, ~batch["padding_mask"][b]].any()


class _StaticSource:
  """Videos whose frames (and masks) are all the same: one augmentation per clip keeps
  them the same."""

  def __init__(self, n=4, length=7):
    rng = np.random.default_rng(0)
    self.examples = []
    for i in range(n):
      frame = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
      panoptic = np.zeros((40, 60), np.int32)
      panoptic[5:20, 10:30] = 1
      panoptic[22:35, 35:55] = 2
      self.examples.append({
          "video": np.repeat(frame[None], length, 0),
          "panoptic": np.repeat(panoptic[None], length, 0),
          "segments_info": {"id": np.array([1, 2], np.int32),
                            "category_id": np.array([1, 3], np.int32),
                            "iscrowd": np.array([False, False]),
                            "isthing": np.array([True, True])},
          "video_id": i})

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    return self.examples[i]


@pytest.mark.parametrize("augmentation", ["synthetic", "ytvis"])
def test_one_augmentation_for_every_frame_of_a_clip(augmentation):
  it = _iterator(_StaticSource(), num_frames=3, augmentation=augmentation,
                 scale_range=(0.5, 2.0), min_size_train=(48, 96, 128))
  flips = set()
  for _ in range(4):
    batch = next(it)
    for t in range(1, 3):
      np.testing.assert_array_equal(batch["images"][:, t], batch["images"][:, 0])
      np.testing.assert_array_equal(batch["masks"][:, :, t], batch["masks"][:, :, 0])
    # Which of the two boxes lies left tells a flip (when both survive the crop).
    for b in range(2):
      if batch["valid"][b, :2].all() and (batch["labels"][b, :2] == [1, 3]).all():
        cx = [np.nonzero(batch["masks"][b, m, 0].any(0))[0].mean() for m in range(2)]
        flips.add(cx[0] > cx[1])
  assert flips == {False, True}


def test_sample_frames_as_official():
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(300):
    frames = vp.sample_frames(50, rng, num_frames=3, frame_range=5)
    assert frames.shape == (3,) and (np.diff(frames) >= 0).all()
    assert frames.max() - frames.min() <= 10
    seen.update(frames.tolist())
  assert min(seen) == 0 and max(seen) == 49
  np.testing.assert_array_equal(vp.sample_frames(1, rng, num_frames=2, frame_range=20), [0, 0])
  frames = vp.sample_frames(2, rng, num_frames=2, frame_range=20)
  np.testing.assert_array_equal(frames, [0, 1])  # the other frame must differ from the ref


def test_iterator_resumes_exactly():
  source = synthetic_video.SyntheticVideoSource(5, seed=2)
  it = _iterator(source)
  next(it)
  state = it.get_state()
  expected = next(it)
  resumed = _iterator(source)
  resumed.set_state(state)
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


def test_official_labels_last_frame_quirk():
  masks = np.zeros((3, 2, 4, 4), np.uint8)
  masks[0, 1, 0, 0] = 1  # present in the last frame
  masks[1, 0, 0, 0] = 1  # only in the first
  from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top
  got = train_step.official_video_labels(np.array([[2, 3, 1]]), masks[None], 4)[0]
  np.testing.assert_array_equal(got, [2, 4, 4])


def test_eval_videos_and_ground_truth():
  source = synthetic_video.SyntheticVideoSource(3, seed=0)
  examples = list(vp.eval_videos(source, pixel_mean=MEAN, pixel_std=STD, min_size=64,
                                 max_size=200))
  assert [e["video_id"] for e in examples] == [0, 1, 2]
  for e, i in zip(examples, range(3)):
    clip = source[i]
    t, h, w = clip["panoptic"].shape
    _, t2, hp, wp, _ = e["images"].shape
    assert t2 == t and hp % 32 == 0 and wp % 32 == 0
    assert min(e["image_size"]) == 64 and tuple(e["output_size"]) == (h, w)
    things = clip["segments_info"]["id"][clip["segments_info"]["isthing"]]
    assert [g["id"] for g in e["ground_truth"]] == things.tolist()
    for g in e["ground_truth"]:
      assert len(g["segmentations"]) == t
      for f, (rle, area) in enumerate(zip(g["segmentations"], g["areas"])):
        pixels = int((clip["panoptic"][f] == g["id"]).sum())
        assert (rle is None) == (pixels == 0) and (area or 0) == pixels
  absent = [a for e in examples for g in e["ground_truth"] for a in g["areas"] if a is None]
  assert absent  # tracks enter and leave: some frames have None


def test_registered_dataset():
  spec = data.spec("synthetic_video")
  assert spec.task == "video_instance"
  cfg = ml_collections.ConfigDict(dict(dataset="synthetic_video", num_train=7, num_val=3,
                                       seed=0))
  assert len(data.data_source(cfg, "train")) == 7
  assert len(data.data_source(cfg, "validation")) == 3
  assert [c["name"] for c in data.categories(cfg)] == ["disc", "square", "triangle", "cross"]
  cfg.update(video_frames=5, video_size=(64, 80))  # one shape: one compile at evaluation
  clip = data.data_source(cfg, "validation")[2]
  assert clip["video"].shape == (5, 64, 80, 3)
