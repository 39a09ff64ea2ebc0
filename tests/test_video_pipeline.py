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


# ------------------------------------------------------------------------------------------
# Video panoptic: panoptic tubes
# ------------------------------------------------------------------------------------------


def _panoptic_example():
  """3 frames 8x10: a thing (id 7) moving right, stuff class 5 as two segments (ids 1, 2),
  stuff class 6 (id 3) only in frame 2, a crowd stuff segment of class 5 (id 4), void."""
  panoptic = np.zeros((3, 8, 10), np.int32)
  panoptic[:, :4] = 1
  panoptic[:, 4:] = 2
  panoptic[2, 6:, :5] = 3
  panoptic[:, 0, 9] = 4
  panoptic[:, 7, 9] = 0  # void
  for t in range(3):
    panoptic[t, 2:5, 2 + t:5 + t] = 7
  return {"video": np.zeros((3, 8, 10, 3), np.uint8), "panoptic": panoptic,
          "segments_info": {"id": np.array([1, 2, 3, 4, 7], np.int32),
                            "category_id": np.array([5, 5, 6, 5, 2], np.int32),
                            "iscrowd": np.array([0, 0, 0, 1, 0], bool),
                            "isthing": np.array([0, 0, 0, 0, 1], bool)},
                    "video_id": 3}


def test_panoptic_tubes_one_per_thing_and_per_stuff_class():
  example = _panoptic_example()
  things = vp.clip_record(example, [0, 2])["instances"]
  assert things["track_id"].tolist() == [7] and things["isthing"].tolist() == [True]
  clip = vp.clip_record(example, [0, 2], stuff=True)
  inst = clip["instances"]
  # Things first, then one tube per (stuff class, iscrowd), track id = the smallest id.
  assert inst["track_id"].tolist() == [7, 1, 4, 3]
  assert inst["category_id"].tolist() == [2, 5, 5, 6]
  assert inst["iscrowd"].tolist() == [False, False, True, False]
  assert inst["isthing"].tolist() == [True, False, False, False]
  panoptic = example["panoptic"][[0, 2]]
  np.testing.assert_array_equal(inst["masks"][1], np.isin(panoptic, [1, 2]))
  np.testing.assert_array_equal(inst["masks"][3], panoptic == 3)  # absent from frame 0
  # Every labelled pixel in exactly one tube, void in none.
  np.testing.assert_array_equal(inst["masks"].sum(0), panoptic > 0)
  # Targets: crowd dropped, the rest kept with their classes.
  targets = vp.clip_targets(clip, num_targets=5)
  assert targets["labels"][targets["valid"]].tolist() == [2, 5, 6]
  # The instance ground truth stays things only.
  assert [g["id"] for g in vp.ground_truth(clip)] == [7]


def test_panoptic_tubes_need_panoptic_maps():
  example = {"video": np.zeros((2, 4, 4, 3), np.uint8),
             "instances": {"category_id": [1], "iscrowd": [0], "track_id": [1]},
             "segmentations": ["", ""]}
  with pytest.raises(ValueError, match="video_instance"):
    vp.clip_record(example, stuff=True)


def _png(array):
  import io  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def test_vipseg_examples_become_panoptic_tubes():
  """A VIPSeg example (encoded frames and RGB panoptic PNGs, `builders/vipseg.py`) gives the
  clip record of its decoded maps."""
  example = _panoptic_example()
  panoptic = example["panoptic"]
  rgb = np.stack([panoptic % 256, panoptic // 256 % 256, panoptic // 65536], -1).astype(np.uint8)
  info = example["segments_info"]
  presence = np.stack([[(panoptic[t] == i).any() for t in range(3)] for i in info["id"]])
  vipseg_example = {
      "video": [_png(np.full((8, 10, 3), 10 * t, np.uint8)) for t in range(3)],
      "panoptic": [_png(rgb[t]) for t in range(3)],
      "segments": {"id": info["id"], "png_id": info["id"], "category_id": info["category_id"],
                   "iscrowd": info["iscrowd"], "isthing": info["isthing"]},
      "presence": presence.reshape(-1), "frame_names": [b"f0", b"f1", b"f2"],
      "video_id": 3, "name": b"vid_3"}
  clip = vp.clip_record(vipseg_example, [1, 2], stuff=True)
  expected = vp.clip_record(example, [1, 2], stuff=True)
  assert clip["frame_indices"].tolist() == [1, 2] and clip["length"] == 3
  assert clip["video"][:, 0, 0, 0].tolist() == [10, 20]
  for key in ("track_id", "category_id", "iscrowd", "isthing", "masks"):
    np.testing.assert_array_equal(clip["instances"][key], expected["instances"][key])
  e = vp.eval_example(vipseg_example, pixel_mean=MEAN, pixel_std=STD, task="video_panoptic")
  assert e["video_name"] == "vid_3" and e["frame_names"] == ["f0", "f1", "f2"]
  gt = e["panoptic_ground_truth"]
  np.testing.assert_array_equal(gt["ids"], panoptic)
  assert [s["id"] for s in gt["segments"][0]] == [1, 2, 4, 7]
  assert [s["id"] for s in gt["segments"][2]] == [1, 2, 3, 4, 7]
  assert gt["segments"][0][2] == {"id": 4, "category_id": 5, "iscrowd": 1}


def test_video_panoptic_batches_carry_stuff_tubes():
  source = synthetic_video.SyntheticVideoSource(4, seed=1)
  batch = next(_iterator(source, num_targets=10, task="video_panoptic"))
  stuff = set(synthetic_video.synthetic.STUFF_IDS)
  for b in range(2):
    labels = batch["labels"][b][batch["valid"][b]]
    assert stuff & set(labels.tolist())
    assert len([k for k in labels if k in stuff]) == len(set(labels) & stuff)  # one per class
    covered = batch["masks"][b][batch["valid"][b]].sum(0)  # [T, H, W]
    assert covered.max() == 1  # tubes do not overlap
    np.testing.assert_array_equal(covered[:, batch["padding_mask"][b]] == 1, True)
  with pytest.raises(ValueError, match="unknown video task"):
    _iterator(source, task="panoptic")


def test_registered_video_panoptic_datasets():
  cfg = ml_collections.ConfigDict(dict(dataset="synthetic_video", task="video_panoptic",
                                       num_train=2, num_val=2, seed=0))
  assert [c["isthing"] for c in data.categories(cfg)] == [1, 1, 1, 1, 0, 0, 0]
  assert data.spec("synthetic_video").evaluators["video_panoptic"] == (
      "video_panoptic", "video_instance")
  spec = data.spec("vipseg")
  assert spec.task == "video_panoptic" and spec.eval_size == (720, 1333)
  cfg = ml_collections.ConfigDict(dict(dataset="vipseg", data_dir="/nonexistent",
                                       source_dir="", on_error="fail", prepare_workers=1))
  with pytest.raises(ValueError, match="source_dir"):
    data.categories(cfg)
