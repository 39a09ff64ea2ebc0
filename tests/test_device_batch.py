"""Compact training batches (m2f_jax/data/targets.py `make_compact_targets`, the pipeline's
`compact` mode, m2f_jax/device_batch.py): expanded on the device they are the dense batch,
bit for bit, and the train step computes the same loss from either."""

import pathlib

import grain
import jax
import numpy as np
import pytest

from m2f_jax import device_batch
from m2f_jax.data import pipeline
from m2f_jax.data import synthetic
from m2f_jax.data import targets

REPO = pathlib.Path(__file__).resolve().parents[1]
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _instance_record(num: int, size=(40, 48), seed=0, depth=3):
  """A record whose instance masks overlap up to `depth` deep (crowd and empty ones too)."""
  rng = np.random.default_rng(seed)
  h, w = size
  masks = np.zeros((num, h, w), np.uint8)
  for i in range(num):
    y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
    masks[i, y:y + rng.integers(4, h // 2), x:x + rng.integers(4, w // 2)] = 1
  masks[:depth, 10:20, 10:20] = 1  # `depth` instances on the same pixels
  masks[-1] = 0  # an empty instance: dropped, as the official mapper
  return {"image": rng.integers(0, 256, (h, w, 3), np.uint8), "image_id": 5,
          "instances": {"masks": masks, "category_id": rng.integers(0, 7, num).astype(np.int32),
                        "iscrowd": np.arange(num) == 1}}


def _expanded(compact):
  segments = compact["segments"][None]
  return np.asarray(device_batch.dense_masks(segments, len(compact["labels"])))[0]


@pytest.mark.parametrize("task", ["panoptic", "semantic"])
def test_disjoint_targets_take_one_layer_and_expand_to_the_dense_ones(task):
  for index in range(3):
    record = synthetic.generate_record(index, image_size=(40, 56))
    dense = targets.make_targets(record, task=task, num_targets=12)
    compact = targets.make_compact_targets(record, task=task, num_targets=12, layers=4)
    assert compact["segments"].shape == (1, 40, 56) and compact["segments"].dtype == np.uint8
    np.testing.assert_array_equal(compact["labels"], dense["labels"])
    np.testing.assert_array_equal(compact["valid"], dense["valid"])
    np.testing.assert_array_equal(_expanded(compact), dense["masks"])


def test_panoptic_targets_keep_empty_segments_and_drop_crowd():
  record = synthetic.generate_record(1, image_size=(40, 56))
  info = dict(record["segments_info"])
  info["iscrowd"] = np.arange(len(info["id"])) == 0  # the first segment is crowd
  info["id"] = np.append(info["id"], 999)  # a segment with no pixel (cropped away)
  for key in ("category_id", "isthing", "iscrowd"):
    info[key] = np.append(info[key], info[key][-1])
  info["iscrowd"][-1] = False
  record = dict(record, segments_info=info)
  compact = targets.make_compact_targets(record, task="panoptic", num_targets=12)
  dense = targets.make_targets(record, task="panoptic", num_targets=12)
  n = len(info["id"]) - 1
  assert compact["valid"].sum() == dense["valid"].sum() == n  # crowd out, empty one in
  assert not dense["masks"][n - 1].any()
  np.testing.assert_array_equal(_expanded(compact), dense["masks"])


def test_overlapping_instances_expand_exactly_when_the_layers_suffice():
  record = _instance_record(9, depth=3)
  dense = targets.make_targets(record, task="instance", num_targets=10)
  assert dense["valid"].sum() == 7  # 9 - crowd - empty
  depth = int(dense["masks"].sum(axis=0).max())  # the most targets on one pixel
  assert depth >= 3
  for layers in (depth, depth + 1):
    compact = targets.make_compact_targets(record, task="instance", num_targets=10,
                                           layers=layers)
    assert compact["segments"].shape[0] == layers
    np.testing.assert_array_equal(compact["labels"], dense["labels"])
    np.testing.assert_array_equal(_expanded(compact), dense["masks"])


def test_too_few_layers_drop_pixels_with_a_warning():
  record = _instance_record(9, depth=3)
  dense = targets.make_targets(record, task="instance", num_targets=10)
  with pytest.MonkeyPatch.context() as mp:
    warnings = []
    mp.setattr(targets.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    compact = targets.make_compact_targets(record, task="instance", num_targets=10, layers=1)
  masks = _expanded(compact)
  lost = int(dense["masks"].sum() - masks.sum())
  assert lost > 0 and not (masks & ~dense["masks"]).any()
  assert len(warnings) == 1 and f"{lost} pixels" in warnings[0]
  assert "data.target_layers" in warnings[0]


def test_segment_dtype_is_the_smallest_that_fits():
  assert targets.segment_dtype(255) == np.uint8
  assert targets.segment_dtype(256) == np.uint16
  record = synthetic.generate_record(0, image_size=(32, 32))
  compact = targets.make_compact_targets(record, task="panoptic", num_targets=300)
  assert compact["segments"].dtype == np.uint16
  np.testing.assert_array_equal(
      _expanded(compact), targets.make_targets(record, task="panoptic", num_targets=300)["masks"])


def _iterators(**kwargs):
  source = synthetic.SyntheticSource(8, image_size=(56, 72))
  common = dict(batch_size=2, seed=0, num_targets=10, image_size=(64, 64), pixel_mean=MEAN,
                pixel_std=STD, scale_range=(0.75, 1.5),
                shard_options=grain.sharding.NoSharding(), **kwargs)
  return (pipeline.train_iterator(source, compact=False, **common),
          pipeline.train_iterator(source, compact=True, **common))


@pytest.mark.parametrize("augmentation,task", [("synthetic", "panoptic"),
                                               ("coco_lsj", "instance")])
def test_compact_batches_expand_to_the_dense_batches(augmentation, task):
  dense_it, compact_it = _iterators(augmentation=augmentation, task=task)
  for _ in range(2):
    dense, compact = next(dense_it), next(compact_it)
    assert compact["images"].dtype == np.uint8 and "masks" not in compact
    expanded = jax.device_get(device_batch.dense_batch(
        compact, pixel_mean=MEAN, pixel_std=STD, zero_padding=augmentation == "synthetic"))
    assert sorted(expanded) == sorted(dense)
    for key in dense:
      assert expanded[key].dtype == dense[key].dtype, key
      if key == "images":  # XLA may divide by the std as a multiplication: 1 ulp
        np.testing.assert_allclose(expanded[key], dense[key], rtol=1e-6, atol=1e-6)
      else:
        np.testing.assert_array_equal(expanded[key], dense[key], err_msg=key)
    # What crosses to the device: several times less.
    size = lambda b: sum(np.asarray(v).nbytes for v in b.values())
    assert size(compact) * 4 < size(dense)


@pytest.mark.slow  # two compilations of the train step (uint8 and float32 images)
def test_train_step_loss_is_the_same_from_compact_and_dense_batches():
  from m2f_jax import config_lib  # pylint: disable=g-import-not-at-top
  from m2f_jax.training import train_step  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(f"{REPO / 'configs' / 'tiny.py'}:slim")  # a small model
  config.data.image_size = (64, 64)
  config.loss.train_num_points = 256
  model, tx, _ = train_step.abstract_train_state(config)
  state = jax.jit(lambda rng: train_step.create_train_state(model, tx, rng, (64, 64)))(
      jax.random.PRNGKey(0))
  step = jax.jit(train_step.make_train_step(model, tx, config))
  dense_it, compact_it = _iterators(augmentation="synthetic", task="panoptic")
  dense, compact = next(dense_it), next(compact_it)
  keys = ("images", "padding_mask", "labels", "valid")
  _, m_dense = step(state, {k: dense[k] for k in keys + ("masks",)})
  _, m_compact = step(state, {k: compact[k] for k in keys + ("segments",)})
  for key in ("total_loss", "loss_ce", "loss_mask", "loss_dice", "grad_norm"):
    np.testing.assert_allclose(m_compact[key], m_dense[key], rtol=1e-5, err_msg=key)
