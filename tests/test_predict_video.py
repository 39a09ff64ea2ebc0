"""Tests of m2f_jax/predict_video.py through `python -m m2f_jax.predict --task
video_instance` with a fake video model: per-frame overlays, a GIF per video, results.json in
the YouTube-VIS format with the dataset's category ids, bad folders reported and skipped."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import PIL.Image
from pycocotools import mask as mask_util

from m2f_jax import predict
from m2f_jax import predict_video


class _BoxModel:
  """One confident query of class 1 whose mask is the top-left quarter of every frame."""

  def apply(self, variables, clips):
    del variables
    b, t, h, w, _ = clips.shape
    logits = np.full((b, 3, 4), -10.0, np.float32)
    logits[:, :, -1] = 10.0
    logits[:, 0, 1], logits[:, 0, -1] = 10.0, -10.0
    masks = np.full((b, 3, t, h // 4, w // 4), -10.0, np.float32)
    masks[:, 0, :, :h // 8, :w // 8] = 10.0
    return {"pred_logits": jnp.asarray(logits), "pred_masks": jnp.asarray(masks)}


def _config():
  return ml_collections.ConfigDict(dict(
      data=dict(categories=[{"id": k, "name": n, "isthing": 1, "dataset_id": 10 + k}
                            for k, n in enumerate(["cat", "dog", "owl"])]),
      model=dict(num_classes=3, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)),
      eval=dict(min_size=None, max_size=None)))


def _frames(folder, n, size=(40, 64)):
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  for t in range(n):
    PIL.Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(
        os.path.join(folder, f"{t:05d}.png"))


def test_predict_cli_writes_overlays_gif_and_results(tmp_path, monkeypatch):
  _frames(tmp_path / "in" / "walk", 3)
  _frames(tmp_path / "in" / "run", 2, size=(30, 30))
  os.makedirs(tmp_path / "in" / "empty")
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpoint, "load_for_inference",
                      lambda path, config=None: (_config(), _BoxModel(), {}))
  out = tmp_path / "out"
  status = predict.main(["--checkpoint", "unused", "--task", "video_instance", "--output",
                         str(out), str(tmp_path / "in" / "walk"), str(tmp_path / "in" / "run"),
                         str(tmp_path / "in" / "empty")])
  assert status == 1  # the empty folder failed; the others were written
  assert sorted(os.listdir(out / "walk")) == [f"{t:05d}.overlay.png" for t in range(3)]
  gif = PIL.Image.open(out / "walk.gif")
  assert gif.n_frames == 3 and gif.size == (64, 40)
  results = json.loads((out / "results.json").read_text())
  videos = json.loads((out / "videos.json").read_text())
  assert [v["name"] for v in videos] == ["walk", "run"]
  assert videos[0]["file_names"] == ["00000.png", "00001.png", "00002.png"]
  top = [r for r in results if r["video_id"] == 0][0]
  assert top["category_id"] == 11 and top["score"] > 0.99
  assert len(top["segmentations"]) == 3
  mask = mask_util.decode(top["segmentations"][0])
  # The top-left quarter of the padded 64x64 input, cropped to the 40x64 frame.
  assert mask.shape == (40, 64) and mask[:30, :30].all()
  assert not mask[34:, :].any() and not mask[:, 34:].any()
  # The overlay shows the tube (coloured) and leaves the rest of the frame as it was.
  overlay = np.asarray(PIL.Image.open(out / "walk" / "00000.overlay.png"))
  frame = np.asarray(PIL.Image.open(tmp_path / "in" / "walk" / "00000.png"))
  np.testing.assert_array_equal(overlay[36:, 36:], frame[36:, 36:])
  assert (overlay[5:15, 5:25] != frame[5:15, 5:25]).any()


def test_read_frames_errors(tmp_path):
  _frames(tmp_path / "v", 2)
  PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "v" / "00009.png")
  try:
    predict_video.read_frames(str(tmp_path / "v"))
  except ValueError as e:
    assert "00009.png" in str(e) and "one size" in str(e)
  else:
    raise AssertionError("frames of different sizes were accepted")


class _PanopticBoxModel:
  """Query 0: thing class 0 on the top-left quarter; query 1: stuff class 2 on the bottom
  half; the others no object."""

  def apply(self, variables, clips):
    del variables
    b, t, h, w, _ = clips.shape
    logits = np.full((b, 3, 4), -10.0, np.float32)
    logits[:, :, -1] = 10.0
    logits[:, 0, 0], logits[:, 0, -1] = 10.0, -10.0
    logits[:, 1, 2], logits[:, 1, -1] = 10.0, -10.0
    masks = np.full((b, 3, t, h // 4, w // 4), -10.0, np.float32)
    masks[:, 0, :, :h // 8, :w // 8] = 10.0
    masks[:, 1, :, h // 8:, :] = 10.0
    return {"pred_logits": jnp.asarray(logits), "pred_masks": jnp.asarray(masks)}


def test_predict_video_panoptic_writes_vipseg_layout(tmp_path, monkeypatch):
  from m2f_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from m2f_jax.data import panoptic_png  # pylint: disable=g-import-not-at-top
  config = _config()
  config.data.categories[2]["isthing"] = 0  # "owl" is stuff here
  config.eval.update(clip_frames=2, clip_overlap=1)  # 3 frames: two linked clips
  monkeypatch.setattr(checkpoint, "load_for_inference",
                      lambda path, config_=None: (config, _PanopticBoxModel(), {}))
  _frames(tmp_path / "in" / "walk", 3)
  out = tmp_path / "out"
  status = predict.main(["--checkpoint", "unused", "--task", "video_panoptic", "--output",
                         str(out), str(tmp_path / "in" / "walk")])
  assert status == 0
  assert sorted(os.listdir(out / "walk")) == [f"{t:05d}.overlay.png" for t in range(3)]
  assert PIL.Image.open(out / "walk.gif").n_frames == 3
  pred = json.loads((out / "pred.json").read_text())
  (video,) = pred["annotations"]
  assert video["video_id"] == "walk"
  assert [a["file_name"] for a in video["annotations"]] == [f"{t:05d}.png" for t in range(3)]
  for t, a in enumerate(video["annotations"]):
    ids = panoptic_png.read_panoptic_png(out / "pan_pred" / "walk" / a["file_name"])
    assert ids.shape == (40, 64)
    segments = {s["id"]: s for s in a["segments_info"]}
    assert sorted(segments) == sorted(set(np.unique(ids).tolist()) - {0})
    assert sorted(s["category_id"] for s in segments.values()) == [10, 12]  # dataset ids
    thing = next(i for i, s in segments.items() if s["isthing"])
    assert (ids[:10, :16] == thing).all()
    if t == 0:
      first = dict(segments)
    assert segments == first  # the same ids in every frame
  assert not (out / "results.json").exists()


def test_predict_video_of_a_missing_checkpoint_names_it(tmp_path):
  """The video tasks read the checkpoint as the image tasks do (checkpoint.load_checked): one
  CheckpointError line (the CLI prints it, status 2), before any output is written."""
  from m2f_jax import errors  # pylint: disable=g-import-not-at-top
  _frames(tmp_path / "in" / "walk", 2)
  with pytest.raises(errors.CheckpointError, match=r"--checkpoint: .*/nothing is neither a "
                                                   r"model directory"):
    predict.main(["--checkpoint", str(tmp_path / "nothing"), "--task", "video_panoptic",
                  "--output", str(tmp_path / "out"), str(tmp_path / "in" / "walk")])
  assert not (tmp_path / "out").exists()
