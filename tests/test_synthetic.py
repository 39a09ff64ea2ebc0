"""Tests of m2f_jax/data/synthetic.py: record format, label consistency, the layouts the
generator promises (touching and occluding same-class instances, varied sizes), that colour
alone does not label it, determinism, tfds."""

import pickle

import numpy as np
import pytest

from m2f_jax.data import pipeline
from m2f_jax.data import synthetic
from m2f_jax.data import targets


def _records(n, **kwargs):
  return [synthetic.generate_record(i, **kwargs) for i in range(n)]


def _check_record(record, size=None):
  image = record["image"]
  h, w = image.shape[:2] if size is None else size
  assert image.shape == (h, w, 3) and image.dtype == np.uint8
  assert record["panoptic"].shape == (h, w) and record["panoptic"].dtype == np.int32
  assert record["semantic"].shape == (h, w) and record["semantic"].dtype == np.uint8
  info = record["segments_info"]
  ids, cats = info["id"], info["category_id"]
  assert ids.dtype == np.int32 and cats.dtype == np.int32
  assert info["iscrowd"].dtype == bool and info["isthing"].dtype == bool
  # Every pixel belongs to exactly one listed segment; every listed segment has pixels.
  assert sorted(np.unique(record["panoptic"])) == sorted(ids)
  assert np.all(ids > 0) and len(set(ids)) == len(ids)
  assert np.all((cats >= 0) & (cats < synthetic.NUM_CLASSES))
  np.testing.assert_array_equal(info["isthing"], np.isin(cats, synthetic.THING_IDS))
  assert 1 <= np.sum(~info["isthing"]) <= 3  # stuff: one segment per class
  assert len(set(cats[~info["isthing"]])) == np.sum(~info["isthing"])
  assert np.sum(info["iscrowd"]) <= 1 and not np.any(info["iscrowd"] & ~info["isthing"])
  # Semantic map = class of the panoptic segment, pixel for pixel (crowd keeps its class).
  lut = np.full(ids.max() + 1, 255, np.uint8)
  lut[ids] = cats
  np.testing.assert_array_equal(record["semantic"], lut[record["panoptic"]])


@pytest.mark.parametrize("crowd_prob", [0.0, 1.0])
def test_panoptic_map_matches_segments_info(crowd_prob):
  size = (48, 80)
  records = _records(6, image_size=size, crowd_prob=crowd_prob, seed=3)
  for record in records:
    _check_record(record, size)
  assert any(r["segments_info"]["iscrowd"].any() for r in records) == (crowd_prob == 1.0)


def test_varied_sizes_by_default_and_exact_sizes_when_asked():
  sizes = set()
  for record in _records(12, seed=5):
    _check_record(record)
    h, w = record["image"].shape[:2]
    assert synthetic.SIZE_RANGE[0] <= min(h, w) and max(h, w) <= synthetic.SIZE_RANGE[1]
    assert max(h, w) <= synthetic.MAX_ASPECT * min(h, w)
    sizes.add((h, w))
  assert len(sizes) >= 10 and len({h / w > 1 for h, w in sizes}) == 2  # portrait, landscape
  for size in [(24, 40), (7, 5)]:  # tiny sizes work too
    _check_record(synthetic.generate_record(2, image_size=size), size)


def test_same_class_instances_touch_and_occlude():
  touching = occluding = 0
  for record in _records(30, seed=1, image_size=(96, 128), with_amodal=True):
    panoptic, info = record["panoptic"], record["segments_info"]
    class_of = dict(zip(info["id"].tolist(), info["category_id"].tolist()))
    amodal = dict(zip(record["amodal"]["id"].tolist(), record["amodal"]["masks"]))
    assert set(amodal) == set(info["id"][info["isthing"]].tolist())
    for sid, whole in amodal.items():
      assert not np.any((panoptic == sid) & ~whole)  # visible part within the whole shape
    # Touching: 4-adjacent pixels of two different segments of one thing class.
    for a, b in ((panoptic[1:], panoptic[:-1]), (panoptic[:, 1:], panoptic[:, :-1])):
      pairs = {(int(x), int(y)) for x, y in zip(a[a != b], b[a != b])}
      touching += sum(x in amodal and y in amodal and class_of[x] == class_of[y]
                      for x, y in pairs)
    # Occluding: a later instance of the same class covers part of an earlier one.
    order = list(amodal)
    for i, early in enumerate(order):
      for late in order[i + 1:]:
        if class_of[early] == class_of[late]:
          occluding += bool(np.any(amodal[early] & (panoptic == late)))
  assert touching >= 5 and occluding >= 3


def test_targets_of_the_three_tasks_agree_pixel_for_pixel():
  m = 12
  for record in _records(4, image_size=(64, 64), crowd_prob=0.5, seed=1):
    info = record["segments_info"]
    sem = targets.make_targets(record, task="semantic", num_targets=m)
    pan = targets.make_targets(record, task="panoptic", num_targets=m)
    ins = targets.make_targets(record, task="instance", num_targets=m)
    crowd = np.isin(record["panoptic"], info["id"][info["iscrowd"]])
    for cls in range(synthetic.NUM_CLASSES):
      sem_mask = sem["masks"][sem["valid"] & (sem["labels"] == cls)].sum(0)  # [H, W]
      pan_mask = pan["masks"][pan["valid"] & (pan["labels"] == cls)].sum(0)
      np.testing.assert_array_equal(sem_mask & ~crowd, pan_mask)
      if cls in synthetic.THING_IDS:
        ins_mask = ins["masks"][ins["valid"] & (ins["labels"] == cls)].sum(0)
        np.testing.assert_array_equal(ins_mask, pan_mask)
    # Instance targets are exactly the non-crowd thing segments of the panoptic targets.
    things = np.isin(pan["labels"], synthetic.THING_IDS) & pan["valid"]
    np.testing.assert_array_equal(ins["masks"][ins["valid"]], pan["masks"][things])


def test_deterministic_per_seed_split_and_index():
  a = synthetic.generate_record(5, seed=7)
  b = synthetic.generate_record(5, seed=7)
  for key in ("image", "panoptic", "semantic"):
    np.testing.assert_array_equal(a[key], b[key])
  for other in (dict(index=6, seed=7), dict(index=5, seed=8)):
    c = synthetic.generate_record(other["index"], seed=other["seed"], image_size=(32, 32))
    assert not np.array_equal(synthetic.generate_record(5, seed=7, image_size=(32, 32))["image"],
                              c["image"])
  d = synthetic.generate_record(5, seed=7, image_size=(32, 32), split="validation")
  assert not np.array_equal(synthetic.generate_record(5, seed=7, image_size=(32, 32))["image"],
                            d["image"])


def test_source_is_random_access_and_picklable():
  source = synthetic.SyntheticSource(10, split="validation", seed=2, image_size=(32, 48))
  assert len(source) == 10
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[9]["image"], source[9]["image"])
  np.testing.assert_array_equal(
      source[3]["panoptic"],
      synthetic.generate_record(3, split="validation", seed=2, image_size=(32, 48))["panoptic"])
  varied = synthetic.SyntheticSource(3, seed=2)
  np.testing.assert_array_equal(varied[1]["image"],
                                synthetic.generate_record(1, seed=2)["image"])
  with pytest.raises(IndexError):
    source[10]
  with pytest.raises(ValueError, match="split"):
    synthetic.SyntheticSource(3, split="test")


def test_colour_alone_does_not_tell_the_classes_apart():
  """A nearest-mean-colour pixel classifier fitted on training images is at most 50% right."""
  train = _records(16, image_size=(64, 64))
  val = _records(8, image_size=(64, 64), split="validation")
  pixels = np.concatenate([r["image"].reshape(-1, 3) for r in train]).astype(np.float32)
  labels = np.concatenate([r["semantic"].ravel() for r in train])
  means = np.stack([pixels[labels == c].mean(0) for c in range(synthetic.NUM_CLASSES)])
  val_pixels = np.concatenate([r["image"].reshape(-1, 3) for r in val]).astype(np.float32)
  val_labels = np.concatenate([r["semantic"].ravel() for r in val])
  predicted = np.argmin(((val_pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert np.mean(predicted == val_labels) <= 0.5


def test_tfds_builder_matches_the_in_memory_source(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  tfds.disable_progress_bar()
  kwargs = dict(num_train=4, num_validation=2, seed=4, crowd_prob=0.5)  # varied sizes
  builder = synthetic.build_tfds(str(tmp_path), **kwargs)
  assert [c["name"] for c in builder.info.metadata["categories"]] == [
      c["name"] for c in synthetic.CATEGORIES]
  sources = builder.as_data_source()
  for split, n in (("train", 4), ("validation", 2)):
    assert len(sources[split]) == n
    memory = synthetic.SyntheticSource(n, split=split, seed=4, crowd_prob=0.5)
    seen = set()
    for i in range(n):
      record = pipeline.normalize_record(sources[split][i])
      expected = memory[record["image_id"]]
      seen.add(record["image_id"])
      for key in ("image", "panoptic", "semantic"):
        np.testing.assert_array_equal(record[key], expected[key])
        assert record[key].dtype == expected[key].dtype
      for key, value in expected["segments_info"].items():
        np.testing.assert_array_equal(record["segments_info"][key], value)
    assert seen == set(range(n))
  # A second call reuses the prepared files; a fixed size is another dataset.
  assert synthetic.build_tfds(str(tmp_path), **kwargs).data_dir == builder.data_dir
  assert (synthetic.builder_config(image_size=(32, 48), **kwargs).name
          != synthetic.builder_config(**kwargs).name)
