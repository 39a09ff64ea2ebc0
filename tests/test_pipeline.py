"""Tests of m2f_jax/data/{targets,pipeline}.py: targets, basic transforms, determinism, resume,
sharding and evaluation batches, on small synthetic images."""

from absl import flags
import grain
import numpy as np
import pytest

from m2f_jax.data import eval_sizes
from m2f_jax.data import pipeline
from m2f_jax.data import synthetic
from m2f_jax.data import targets
from m2f_jax.data import transforms
from m2f_jax.data.panoptic_png import id2rgb

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZE = (64, 64)


def _train_kwargs(**overrides):
  kwargs = dict(batch_size=4, seed=0, task="panoptic", num_targets=10, image_size=SIZE,
                pixel_mean=MEAN, pixel_std=STD, scale_range=(0.75, 1.5),
                shard_options=grain.sharding.NoSharding())
  kwargs.update(overrides)
  return kwargs


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _id_coded(record):
  """The record with its image replaced by a colour code of the panoptic id."""
  record = dict(record)
  code = (record["panoptic"] * 20 + 10).astype(np.uint8)
  record["image"] = np.stack([code, 255 - code, np.full_like(code, 7)], axis=-1)
  return record


# ------------------------------------------------------------------------------------------
# Records and targets
# ------------------------------------------------------------------------------------------


def test_normalize_record_reads_tfds_style_examples():
  record = synthetic.generate_record(2, image_size=(24, 40))
  info = record["segments_info"]
  example = {
      "image": record["image"],
      "panoptic": id2rgb(record["panoptic"]),
      "semantic": record["semantic"][..., None],
      "segments_info": {k: list(v) for k, v in info.items()},
      "image_id": np.int64(2),
  }
  out = pipeline.normalize_record(example)
  for key in ("image", "panoptic", "semantic"):
    np.testing.assert_array_equal(out[key], record[key])
    assert out[key].dtype == record[key].dtype
  for key, value in info.items():
    np.testing.assert_array_equal(out["segments_info"][key], value)
    assert out["segments_info"][key].dtype == value.dtype
  with pytest.raises(ValueError, match="annotation"):
    pipeline.normalize_record({"image": record["image"]})


def test_targets_format_and_padding():
  record = synthetic.generate_record(0, image_size=(40, 56))
  info = record["segments_info"]
  m = 9
  for task in targets.TASKS:
    t = targets.make_targets(record, task=task, num_targets=m)
    assert t["labels"].shape == (m,) and t["labels"].dtype == np.int32
    assert t["masks"].shape == (m, 40, 56) and t["masks"].dtype == np.uint8
    assert t["valid"].shape == (m,) and t["valid"].dtype == bool
    n = t["valid"].sum()
    assert np.all(t["valid"][:n]) and not np.any(t["valid"][n:])  # real targets first
    assert not t["masks"][n:].any() and not t["labels"][n:].any()
    assert np.all(t["masks"][:n].reshape(n, -1).sum(1) > 0)
  pan = targets.make_targets(record, task="panoptic", num_targets=m)
  assert pan["valid"].sum() == len(info["id"])
  np.testing.assert_array_equal(pan["labels"][:len(info["id"])], info["category_id"])
  # Panoptic masks partition the labelled pixels.
  np.testing.assert_array_equal(pan["masks"].sum(0), record["panoptic"] > 0)
  sem = targets.make_targets(record, task="semantic", num_targets=m)
  np.testing.assert_array_equal(sem["labels"][sem["valid"]], np.unique(info["category_id"]))
  ins = targets.make_targets(record, task="instance", num_targets=m)
  assert ins["valid"].sum() == info["isthing"].sum()
  with pytest.raises(ValueError, match="task"):
    targets.make_targets(record, task="depth", num_targets=m)


def test_crowd_and_ignore_pixels_are_not_targets():
  record = synthetic.generate_record(0, image_size=(48, 48), crowd_prob=1.0)
  info = record["segments_info"]
  assert info["iscrowd"].any()
  crowd_id = info["id"][info["iscrowd"]][0]
  for task in ("panoptic", "instance"):
    t = targets.make_targets(record, task=task, num_targets=10)
    assert t["valid"].sum() == np.sum(~info["iscrowd"] & (info["isthing"] | (task == "panoptic")))
    assert not t["masks"][:, record["panoptic"] == crowd_id].any()
  semantic = record["semantic"].copy()
  semantic[:8] = 255
  t = targets.make_targets(dict(record, semantic=semantic), task="semantic", num_targets=10)
  assert not t["masks"][:, :8].any()
  np.testing.assert_array_equal(t["masks"].sum(0), semantic != 255)


def test_too_many_targets_keep_the_largest():
  record = synthetic.generate_record(3, image_size=(48, 48))
  full = targets.make_targets(record, task="panoptic", num_targets=12)
  n = full["valid"].sum()
  assert n >= 3
  cut = targets.make_targets(record, task="panoptic", num_targets=2)
  areas = full["masks"][:n].reshape(n, -1).sum(1)
  kept = np.sort(np.argsort(-areas, kind="stable")[:2])
  np.testing.assert_array_equal(cut["masks"], full["masks"][kept])
  np.testing.assert_array_equal(cut["labels"], full["labels"][kept])


def test_semantic_map_is_derived_from_panoptic():
  record = synthetic.generate_record(4, image_size=(32, 32))
  derived = targets.semantic_map({k: v for k, v in record.items() if k != "semantic"})
  np.testing.assert_array_equal(derived, record["semantic"])


# ------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------


def test_crop_pad_and_flip_move_every_field_together():
  record = _id_coded(synthetic.generate_record(1, image_size=(30, 40)))
  record["instances"] = {"masks": (record["panoptic"][None] == record["segments_info"]["id"][
      :, None, None]).astype(np.uint8), "category_id": record["segments_info"]["category_id"],
                         "iscrowd": record["segments_info"]["iscrowd"]}
  out = transforms.crop_pad(transforms.hflip(record), -3, 5, 36, 32)
  expected_pan = np.zeros((36, 32), np.int32)
  expected_pan[3:33] = record["panoptic"][:, ::-1][:, 5:37]
  np.testing.assert_array_equal(out["panoptic"], expected_pan)
  np.testing.assert_array_equal(out["image"][..., 0][3:33], (expected_pan[3:33] * 20 + 10))
  assert not out["image"][:3].any() and np.all(out["semantic"][:3] == 255)
  assert not out["panoptic"][33:].any() and np.all(out["semantic"][33:] == 255)
  np.testing.assert_array_equal(
      out["instances"]["masks"],
      out["panoptic"][None] == record["segments_info"]["id"][:, None, None])


@pytest.mark.parametrize("scale_range", [None, (0.6, 1.6)])
def test_augment_keeps_masks_on_the_image(scale_range):
  source_size = (48, 64)  # fits SIZE: without jitter nothing is resampled, only padded
  flipped = []
  for seed in range(6):
    record = _id_coded(synthetic.generate_record(seed, image_size=source_size))
    out = transforms.augment(record, np.random.default_rng(seed), image_size=SIZE,
                           scale_range=scale_range)
    valid = out["padding_mask"]
    assert out["image"].shape == SIZE + (3,) and valid.shape == SIZE
    # Padding (bottom / right) carries no label and a zero image.
    assert not out["image"][~valid].any() and not out["panoptic"][~valid].any()
    assert np.all(out["semantic"][~valid] == 255)
    code = out["image"][..., 0][valid].astype(np.int32)
    expected = out["panoptic"][valid] * 20 + 10
    if scale_range is None:  # exact: the original or its mirror image, then padding
      assert valid[:48].all() and not valid[48:].any()
      flipped.append(not np.array_equal(out["panoptic"][:48], record["panoptic"]))
      mirror = record["panoptic"][:, ::-1] if flipped[-1] else record["panoptic"]
      np.testing.assert_array_equal(out["panoptic"][:48], mirror)
      np.testing.assert_array_equal(code, expected)
    else:  # the bilinear image matches the nearest-neighbour labels but on edges
      assert np.mean(np.abs(code - expected) < 10) > 0.93
    t = pipeline.train_example(out, task="panoptic", num_targets=10, pixel_mean=MEAN,
                               pixel_std=STD)
    assert not t["images"][~valid].any() and not t["masks"][:, ~valid].any()
  if scale_range is None:
    assert any(flipped) and not all(flipped)


# ------------------------------------------------------------------------------------------
# Training iterator
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source():
  return synthetic.SyntheticSource(12, image_size=(56, 72))


def test_train_batches_format(source):
  batch = next(pipeline.train_iterator(source, **_train_kwargs()))
  b, m = 4, 10
  assert batch["images"].shape == (b,) + SIZE + (3,) and batch["images"].dtype == np.float32
  assert batch["padding_mask"].shape == (b,) + SIZE and batch["padding_mask"].dtype == bool
  assert batch["labels"].shape == (b, m) and batch["labels"].dtype == np.int32
  assert batch["masks"].shape == (b, m) + SIZE and batch["masks"].dtype == np.uint8
  assert batch["valid"].shape == (b, m) and batch["image_id"].shape == (b,)
  assert np.all(batch["valid"].sum(1) > 0)
  assert not (batch["masks"] & ~batch["padding_mask"][:, None]).any()


def test_same_seed_same_batches(source):
  a = _take(pipeline.train_iterator(source, **_train_kwargs()), 4)
  b = _take(pipeline.train_iterator(source, **_train_kwargs(read_threads=2, prefetch=2)), 4)
  _assert_batches_equal(a, b)
  c = _take(pipeline.train_iterator(source, **_train_kwargs(seed=1)), 4)
  assert [x["image_id"].tolist() for x in a] != [x["image_id"].tolist() for x in c]
  # Every epoch (3 batches) holds each record once, reshuffled.
  ids = np.concatenate([x["image_id"] for x in a + _take(
      pipeline.train_iterator(source, **_train_kwargs()), 6)[4:]])
  epochs = ids[:24].reshape(2, 12)
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
  assert epochs[0].tolist() != epochs[1].tolist()


def test_resume_from_state(source):
  iterator = pipeline.train_iterator(source, **_train_kwargs())
  _take(iterator, 2)
  state = iterator.get_state()
  expected = _take(iterator, 3)  # crosses the epoch boundary
  resumed = pipeline.train_iterator(source, **_train_kwargs())
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 3), expected)


def test_worker_processes_give_the_same_batches_and_resume(source):
  flags.FLAGS.mark_as_parsed()
  expected = _take(pipeline.train_iterator(source, **_train_kwargs(task="semantic")), 4)
  iterator = pipeline.train_iterator(source, **_train_kwargs(task="semantic", worker_count=1))
  try:
    got = _take(iterator, 2)
    state = iterator.get_state()
  finally:
    iterator.close()
  resumed = pipeline.train_iterator(source, **_train_kwargs(task="semantic", worker_count=1))
  try:
    resumed.set_state(state)
    got += _take(resumed, 2)
  finally:
    resumed.close()
  _assert_batches_equal(got, expected)


def test_process_shards_are_disjoint():
  source = synthetic.SyntheticSource(13, image_size=(32, 32))
  shards = []
  for index in range(2):
    kwargs = _train_kwargs(batch_size=2, num_epochs=1, image_size=(32, 32), scale_range=None,
                           shard_options=grain.sharding.ShardOptions(index, 2,
                                                                     drop_remainder=True))
    shards.append([i for b in pipeline.train_iterator(source, **kwargs)
                   for i in b["image_id"]])
  assert len(shards[0]) == len(shards[1]) == 6
  assert not set(shards[0]) & set(shards[1])
  assert len(set(shards[0]) | set(shards[1])) == 12
  # The default shards by JAX process: one process here, so it sees everything.
  default = _train_kwargs(batch_size=13, num_epochs=1, image_size=(32, 32))
  del default["shard_options"]
  assert sorted(next(pipeline.train_iterator(source, **default))["image_id"]) == list(range(13))


# ------------------------------------------------------------------------------------------
# Evaluation batches
# ------------------------------------------------------------------------------------------


def test_eval_batches_pad_and_carry_annotations():
  source = synthetic.SyntheticSource(10, split="validation", image_size=(50, 70))
  per_shard = []
  for index in range(2):
    batches = list(pipeline.eval_batches(
        source, batch_size=4, pixel_mean=MEAN, pixel_std=STD,
        shard_options=grain.sharding.ShardOptions(index, 2)))
    per_shard.append(batches)
    for batch in batches:
      assert batch["images"].shape == (4, 64, 96, 3)
      np.testing.assert_array_equal(batch["padding_mask"].sum((1, 2)), [50 * 70] * 4)
      assert not batch["images"][~batch["padding_mask"]].any()
      np.testing.assert_array_equal(batch["image_size"], [[50, 70]] * 4)
      np.testing.assert_array_equal(batch["output_size"], [[50, 70]] * 4)
      for i, annotation in enumerate(batch["annotations"]):
        expected = source[int(batch["image_id"][i])]
        np.testing.assert_array_equal(annotation["panoptic"], expected["panoptic"])
        np.testing.assert_array_equal(annotation["semantic"], expected["semantic"])
        np.testing.assert_allclose(
            batch["images"][i, :50, :70],
            targets.normalize_image(expected["image"], pixel_mean=MEAN, pixel_std=STD))
  assert len(per_shard[0]) == len(per_shard[1]) == 2
  real = [i for batches in per_shard for b in batches
          for i in b["image_id"][b["example_valid"]]]
  assert sorted(real) == list(range(10))
  assert [b["example_valid"].sum() for b in per_shard[0]] == [4, 1]


def test_eval_batches_resize_and_fixed_pad():
  source = synthetic.SyntheticSource(3, split="validation", image_size=(40, 60))
  batch = next(iter(pipeline.eval_batches(source, batch_size=3, pixel_mean=MEAN,
                                          pixel_std=STD, min_size=60, max_size=80,
                                          pad_to="64x96")))
  np.testing.assert_array_equal(batch["image_size"], [[53, 80]] * 3)  # longest edge capped
  np.testing.assert_array_equal(batch["output_size"], [[40, 60]] * 3)
  assert batch["images"].shape == (3, 64, 96, 3)
  assert batch["padding_mask"][0].sum() == 53 * 80
  assert batch["annotations"][0]["panoptic"].shape == (40, 60)
  with pytest.raises(ValueError, match="pad_to='32x64'.*do not fit"):
    pipeline.eval_batches(source, batch_size=3, pixel_mean=MEAN, pixel_std=STD, pad_to="32x64")
  with pytest.raises(ValueError, match="pad_to='buckets'"):
    pipeline.eval_batches(source, batch_size=3, pixel_mean=MEAN, pixel_std=STD,
                          pad_to="buckets")


def test_image_sizes_without_decoding_and_the_schedule(tmp_path):
  source = synthetic.SyntheticSource(12, split="validation")
  sizes = pipeline.image_sizes(source)
  assert sizes == [source[i]["image"].shape[:2] for i in range(12)]
  assert pipeline.image_sizes([source[i] for i in range(3)]) == sizes[:3]
  builder = synthetic.build_tfds(str(tmp_path), num_train=1, num_validation=5)
  tfds_source = builder.as_data_source()["validation"]
  assert pipeline.image_sizes(tfds_source) == [tfds_source[i]["image"].shape[:2]
                                               for i in range(5)]
  batches = pipeline.eval_batches(source, batch_size=2, pixel_mean=MEAN, pixel_std=STD,
                                  min_size=96, max_size=96)
  schedule = batches.schedule()
  seen = []
  for batch in batches:  # the schedule: padded sizes in the order of their first batches
    size = batch["images"].shape[1:3]
    if size not in seen:
      seen.append(size)
  assert [s.padded_size for s in schedule] == seen
  assert sum(s.images for s in schedule) == 12
  first = schedule[0]
  assert set(first.output_sizes) == {
      s for s, r in zip(sizes, (transforms.eval_resize_size(h, w, 96, 96) for h, w in sizes))
      if eval_sizes.padded_to_multiple(r) == first.padded_size}


def test_cropped_away_segments_stay_panoptic_targets_as_official():
  """LSJ / panoptic mappers keep every non-crowd segment; the instance mapper drops empty."""
  record = synthetic.generate_record(0, image_size=(48, 48))
  info = record["segments_info"]
  things = np.flatnonzero(info["isthing"] & ~info["iscrowd"])
  assert len(things) >= 1
  gone = info["id"][things[0]]
  cropped = dict(record, panoptic=np.where(record["panoptic"] == gone, 0, record["panoptic"]))
  pan = targets.make_targets(cropped, task="panoptic", num_targets=12)
  assert pan["valid"].sum() == np.sum(~info["iscrowd"])  # the empty segment is still there
  empty = np.flatnonzero(pan["valid"] & (pan["masks"].reshape(12, -1).sum(1) == 0))
  np.testing.assert_array_equal(pan["labels"][empty], [info["category_id"][things[0]]])
  ins = targets.make_targets(cropped, task="instance", num_targets=12)
  assert ins["valid"].sum() == len(things) - 1
