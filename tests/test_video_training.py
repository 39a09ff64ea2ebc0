"""Video training: the train step on hand-made clip batches (the batch contract of
`m2f_jax.data.video_pipeline`), the official last-frame labels, and initialization of a video
model from an image checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax import checkpoint
from m2f_jax import config_lib
from m2f_jax.models.mask2former import build_model
from m2f_jax.training import checkpoints
from m2f_jax.training import optimizer as optim_lib
from m2f_jax.training import train_step

T, SIZE, B, M = 2, 64, 2, 3


def _config():
  config = config_lib.load_config_file("configs/synthetic_video.py")
  config.data.update(image_size=(SIZE, SIZE), num_targets=M, batch_size=B)
  config.loss.train_num_points = 64
  return config


def _clip_batch(seed=0):
  """The contract: images [B, T, H, W, 3], labels [B, M], masks [B, M, T, H, W], valid."""
  rng = np.random.RandomState(seed)
  masks = np.zeros((B, M, T, SIZE, SIZE), np.uint8)
  images = rng.randn(B, T, SIZE, SIZE, 3).astype(np.float32) * 0.1
  for b in range(B):
    for m in range(M):
      y, x = rng.randint(0, SIZE - 24, 2)
      for t in range(T):
        masks[b, m, t, y + 4 * t:y + 4 * t + 20, x:x + 20] = 1
        images[b, t, y + 4 * t:y + 4 * t + 20, x:x + 20] += m + 1
  masks[0, 1, 1] = 0  # absent from the last frame: trained as "no object" (official)
  return {"images": images, "labels": rng.randint(0, 4, (B, M)).astype(np.int32),
          "masks": masks, "valid": np.array([[True, True, True], [True, True, False]])}


def test_official_video_labels():
  batch = _clip_batch()
  got = np.asarray(train_step.official_video_labels(jnp.asarray(batch["labels"]),
                                                    jnp.asarray(batch["masks"]), 4))
  want = batch["labels"].copy()
  want[0, 1] = 4
  np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def state_and_step():
  config = _config()
  model, tx, _ = train_step.abstract_train_state(config)
  state = train_step.create_train_state(model, tx, jax.random.PRNGKey(0),
                                        train_step.input_shape(config))
  return config, model, state, jax.jit(train_step.make_train_step(model, tx, config))


def test_train_step_on_clip_batches(state_and_step):
  config, _, state, step = state_and_step
  assert train_step.input_shape(config) == (T, SIZE, SIZE)
  batch = jax.tree.map(jnp.asarray, _clip_batch())
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics["total_loss"]))
  assert all(np.isfinite(losses)), losses
  assert float(metrics["num_masks"]) == 5.0
  assert losses[-1] < losses[0], losses


def test_video_model_initialized_from_image_checkpoint(state_and_step, tmp_path):
  config, _, state, _ = state_and_step
  image_config = config_lib.load_config_file("configs/tiny.py")  # an image model
  num_classes = config.model.num_classes + 2  # another dataset's classes
  image_config.model.num_classes = num_classes
  image_config.data.class_names = [f"class_{i}" for i in range(num_classes)]
  image_model = build_model(image_config.model)
  image_vars = image_model.init(jax.random.PRNGKey(5), jnp.zeros((1, SIZE, SIZE, 3)))
  directory = checkpoint.save_model(str(tmp_path / "image"), image_config, image_vars)
  got = checkpoints.initialize_from(str(directory), state, "resnet")
  # Everything but the class head comes from the image model; the head keeps its fresh init.
  theirs = dict(jax.tree_util.tree_leaves_with_path(image_vars["params"]))
  for path, value in jax.tree_util.tree_leaves_with_path(got.params):
    if "class_predictor" not in jax.tree_util.keystr(path):
      np.testing.assert_array_equal(np.asarray(value), np.asarray(theirs[path]))
  for a, b in zip(jax.tree.leaves(got.params["class_predictor"]),
                  jax.tree.leaves(state.params["class_predictor"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert got.params["class_predictor"]["bias"].shape == (config.model.num_classes + 1,)


@pytest.mark.slow  # minutes on a loaded 2-core machine (three compilations)
def test_video_forward_benchmark_smoke():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "video_forward.py"
  spec = importlib.util.spec_from_file_location("benchmarks_video_forward", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  results = bench.main(["--smoke", "--runs", "1"])
  assert [r["frames"] for r in results["forward"]] == [2, 3]
  assert results["train"]["clips_per_s"] > 0
