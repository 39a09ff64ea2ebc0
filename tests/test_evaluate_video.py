"""Tests of m2f_jax/evaluate_video.py with a fake video model of the contract's shapes: a
model that predicts the ground truth scores AP 100, one that predicts nothing useful scores
0; the files it writes; the dispatch predicate."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import pytest
from pycocotools import mask as mask_util

from m2f_jax import evaluate_video
from m2f_jax import inference_video
from m2f_jax.data import synthetic_video


class _OracleModel:
  """`apply(variables, clips [1, T, H, W, 3])` -> one query per true track (its class and its
  masks at H/4 x W/4; the video is found by its frame count), the others no-object. `noise`
  predicts empty masks instead."""

  def __init__(self, source, num_classes, num_queries=8, noise=False):
    self.noise = noise
    self.video_of_length = {source[i]["panoptic"].shape[0]: i for i in range(len(source))}
    self.tubes = {}
    for i in range(len(source)):
      clip = source[i]
      info = clip["segments_info"]
      things = info["isthing"]
      self.tubes[i] = (info["id"][things], info["category_id"][things], clip["panoptic"])
    self.num_classes, self.num_queries = num_classes, num_queries

  def apply(self, variables, clips):
    b, t, h, w, _ = clips.shape
    assert b == 1 and h % 32 == 0 and w % 32 == 0
    del variables
    video = self.video_of_length[t]
    ids, classes, panoptic = self.tubes[video]
    logits = np.full((1, self.num_queries, self.num_classes + 1), -10.0, np.float32)
    logits[0, :, -1] = 10.0
    masks = np.full((1, self.num_queries, t, h // 4, w // 4), -10.0, np.float32)
    for q, (i, k) in enumerate(zip(ids, classes)):
      logits[0, q, int(k)], logits[0, q, -1] = 10.0, -10.0
      full = np.zeros((t, h, w), bool)
      full[:, :panoptic.shape[1], :panoptic.shape[2]] = panoptic == i
      coverage = full.reshape(t, h // 4, 4, w // 4, 4).mean(axis=(2, 4))  # [T, H/4, W/4]
      masks[0, q] = -10.0 if self.noise else 20.0 * (coverage - 0.5)
    return {"pred_logits": jnp.asarray(logits), "pred_masks": jnp.asarray(masks)}


@pytest.fixture(scope="module")
def setup():
  # Lengths 4..12 differ per clip: the fake model finds the video from T.
  source = synthetic_video.SyntheticVideoSource(3, split="validation", image_size=(64, 64))
  lengths = [source[i]["panoptic"].shape[0] for i in range(3)]
  assert len(set(lengths)) == 3
  config = ml_collections.ConfigDict(dict(
      data=dict(dataset="synthetic_video", task="video_instance", num_train=4, num_val=3,
                seed=0, ignore_label=255),
      model=dict(num_classes=4, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)),
      eval=dict(min_size=None, max_size=None, evaluators=("video_instance",))))
  return source, config, {"params": {}}


def test_oracle_scores_100_and_files_are_written(setup, tmp_path):
  source, config, variables = setup
  model = _OracleModel(source, num_classes=4)
  report = evaluate_video.evaluate_video(config=config, model=model,
                                         variables=variables,
                                         workdir=str(tmp_path), source=source)
  segm = report["segm"]
  # Masks sampled at stride 4 and upsampled: IoU high but below 1 at the edges.
  assert segm["AP50"] == pytest.approx(100.0)
  assert segm["AP"] > 60.0 and segm["AR10"] > 60.0
  assert report["num_videos"] == 3
  written = json.loads((tmp_path / "eval_results.json").read_text())
  assert written["segm"]["AP50"] == pytest.approx(100.0)
  results = json.loads((tmp_path / "results.json").read_text())
  assert {r["video_id"] for r in results} == {0, 1, 2}
  assert all(len(r) == 4 for r in results)
  r = results[0]
  frames = source[r["video_id"]]["panoptic"].shape[0]
  assert len(r["segmentations"]) == frames
  assert mask_util.decode(r["segmentations"][0]).shape == (64, 64)
  assert "AP" in evaluate_video.format_report(report)
  gifs = sorted(os.listdir(tmp_path / "visualizations"))
  assert gifs == ["0.gif", "1.gif"]
  assert PIL.Image.open(tmp_path / "visualizations" / "0.gif").size == (64, 64)


def test_empty_masks_score_zero_and_max_videos(setup):
  source, config, variables = setup
  report = evaluate_video.evaluate_video(config=config, model=_OracleModel(source, 4, noise=True),
                                         variables=variables, source=source,
                                         max_videos=2)
  assert report["num_videos"] == 2
  assert report["segm"]["AP"] == pytest.approx(0.0)


def test_dispatch_predicate_and_image_evaluators_rejected(setup):
  source, config, variables = setup
  assert evaluate_video.is_video_task(config)
  image = ml_collections.ConfigDict(dict(data=dict(task="panoptic")))
  assert not evaluate_video.is_video_task(image)
  bad = ml_collections.ConfigDict(config.to_dict())
  bad.eval.evaluators = ("panoptic",)
  with pytest.raises(ValueError, match="evaluate images"):
    evaluate_video.evaluate_video(config=bad, model=_OracleModel(source, 4),
                                  variables=variables, source=source)
