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
from m2f_jax.training import train_step

T, SIZE, B, M = 2, 64, 2, 3


def _config():
  config = config_lib.load_config_file("configs/synthetic_video.py:slim")  # a small model
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
  shape = train_step.input_shape(config)
  state = jax.jit(lambda rng: train_step.create_train_state(model, tx, rng, shape))(
      jax.random.PRNGKey(0))
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
  image_config = config_lib.load_config_file("configs/tiny.py:slim")  # the same model, images
  num_classes = config.model.num_classes + 2  # another dataset's classes
  image_config.model.num_classes = num_classes
  image_config.data.class_names = [f"class_{i}" for i in range(num_classes)]
  image_model = build_model(image_config.model)
  image_vars = jax.jit(image_model.init)(jax.random.PRNGKey(5), jnp.zeros((1, SIZE, SIZE, 3)))
  directory = checkpoint.save_model(str(tmp_path / "image"), image_config, image_vars)
  got = checkpoints.initialize_from(str(directory), state, "resnet")
  # Everything but the class heads comes from the image model; the heads (class_predictor
  # and the per-pixel semantic_head, both K-sized) keep their fresh init.
  heads = ("class_predictor", "semantic_head")
  assert config.model.semantic_head and image_config.model.semantic_head
  _assert_from_checkpoint_but(heads, got, image_vars, state)
  assert got.params["class_predictor"]["bias"].shape == (config.model.num_classes + 1,)
  # A checkpoint without the auxiliary head (e.g. an imported official one): a fresh head,
  # everything else (class_predictor included: same classes) from the checkpoint.
  image_config.model.update(num_classes=config.model.num_classes, semantic_head=False)
  image_config.data.class_names = [f"class_{i}" for i in range(config.model.num_classes)]
  image_vars = jax.jit(build_model(image_config.model).init)(jax.random.PRNGKey(6),
                                                              jnp.zeros((1, SIZE, SIZE, 3)))
  assert "semantic_head" not in image_vars["params"]
  directory = checkpoint.save_model(str(tmp_path / "official"), image_config, image_vars)
  got = checkpoints.initialize_from(str(directory), state, "resnet")
  _assert_from_checkpoint_but(("semantic_head",), got, image_vars, state)


def _assert_from_checkpoint_but(heads, got, checkpoint_vars, fresh):
  theirs = dict(jax.tree_util.tree_leaves_with_path(checkpoint_vars["params"]))
  for path, value in jax.tree_util.tree_leaves_with_path(got.params):
    if not any(head in jax.tree_util.keystr(path) for head in heads):
      np.testing.assert_array_equal(np.asarray(value), np.asarray(theirs[path]))
  for head in heads:
    for a, b in zip(jax.tree.leaves(got.params[head]), jax.tree.leaves(fresh.params[head])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


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


@pytest.mark.slow  # minutes: train.py, eval.py and predict compile the video model in turn
def test_video_panoptic_end_to_end(tmp_path):
  """`python train.py --config configs/synthetic_video.py` (2 steps, tiny) reports VPQ and the
  video AP of its things in eval_results.json and writes VIPSeg's layout; eval.py on its
  checkpoint and `predict --task video_panoptic` run on the result (issue #13)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top
  from tests import proc  # pylint: disable=g-import-not-at-top

  def run(*args):
    return proc.finish(proc.start(*args), timeout=900)

  workdir = tmp_path / "train"
  run("train.py", "--config", "configs/synthetic_video.py:slim", "--workdir", str(workdir),
      "--config.optim.max_steps=2", "--config.data.num_train=4", "--config.data.num_val=2",
      "--config.data.batch_size=2", "--config.data.image_size=(64, 64)",
      "--config.data.video_size=(64, 64)", "--config.eval.min_size=64",
      "--config.eval.max_size=64", "--config.eval.object_mask_threshold=0.0",
      "--config.loss.train_num_points=256", "--config.train.log_every=1")
  report = json.loads((workdir / "eval_results.json").read_text())
  assert set(report["video_panoptic_seg"]) == {"VPQ", "VPQ_th", "VPQ_st", "STQ", "AQ", "SQ"}
  assert sorted(report["vpq_windows"], key=int) == ["1", "2", "4", "6", "8"]
  assert report["video_panoptic_seg"]["VPQ"] is not None  # 8-frame videos: every window fits
  assert "AP" in report["segm"] and report["num_videos"] == 2
  assert report["timing"]["forward_compilations"] == 1
  pred = json.loads((workdir / "pred.json").read_text())
  assert [len(v["annotations"]) for v in pred["annotations"]] == [8, 8]
  assert len(os.listdir(workdir / "pan_pred" / "0")) == 8
  # eval.py on the checkpoint, in another folder: the same numbers.
  run("eval.py", "--checkpoint", str(workdir / "checkpoints" / "2"), "--workdir",
      str(tmp_path / "eval"))
  again = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
  assert again["video_panoptic_seg"] == report["video_panoptic_seg"]
  # predict on a folder of frames.
  frames = tmp_path / "frames" / "clip"
  os.makedirs(frames)
  rng = np.random.default_rng(0)
  for t in range(3):
    PIL.Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(
        frames / f"{t:03d}.jpg")
  run("-m", "m2f_jax.predict", "--checkpoint", str(workdir / "checkpoints" / "2"), "--task",
      "video_panoptic", "--output", str(tmp_path / "pred"), str(frames))
  assert (tmp_path / "pred" / "clip.gif").exists()
  assert sorted(os.listdir(tmp_path / "pred" / "pan_pred" / "clip")) == [
      "000.png", "001.png", "002.png"]


def test_fresh_heads_drops_a_semantic_head_the_model_has_not():
  kernel = lambda k: {"kernel": np.zeros((4, k)), "bias": np.zeros(k)}
  loaded = {"params": {"class_predictor": kernel(8), "semantic_head": kernel(7), "x": 1}}
  model = {"params": {"class_predictor": kernel(8), "x": 0}}
  got = checkpoints._fresh_heads("ckpt", loaded, model)  # pylint: disable=protected-access
  assert sorted(got["params"]) == ["class_predictor", "x"] and got["params"]["x"] == 1
