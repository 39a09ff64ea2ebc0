"""Tests of m2f_jax/evaluate_video.py with a fake video model of the contract's shapes: a
model that predicts the ground truth scores AP 100, one that predicts nothing useful scores
0; the files it writes; the dispatch predicate."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import pytest
from pycocotools import mask as mask_util

from m2f_jax import evaluate_video
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


# ------------------------------------------------------------------------------------------
# Video panoptic segmentation
# ------------------------------------------------------------------------------------------


class _PanopticOracle:
  """One query per panoptic tube of the video (its things, one tube per stuff class), the
  others no-object. Each input frame is recognised by its pixel sum, so clips of any frames
  of any video get that video's tubes in those frames. Query n is tube n in every clip: its
  many exact ties (masks of logit +-10) are then broken in the same query order by whole-video
  and linked inference (`test_inference_video` links shuffled queries)."""

  def __init__(self, source, num_classes=7, num_queries=12):
    from m2f_jax.data import video_pipeline  # pylint: disable=g-import-not-at-top
    self.num_classes, self.num_queries = num_classes, num_queries
    self.frames, self.tubes = {}, {}
    for i in range(len(source)):
      images = video_pipeline.eval_example(source[i], pixel_mean=(0, 0, 0),
                                           pixel_std=(1, 1, 1))["images"][0]
      for t, frame in enumerate(images):
        self.frames[float(frame.sum())] = (i, t)
      clip = video_pipeline.clip_record(source[i], stuff=True)
      self.tubes[i] = (clip["instances"]["masks"], clip["instances"]["category_id"])

  def apply(self, variables, clips):
    """Traced under jit: the lookup runs on the host (`jax.pure_callback`)."""
    del variables
    _, t, h, w, _ = clips.shape
    shapes = (jax.ShapeDtypeStruct((1, self.num_queries, self.num_classes + 1), np.float32),
              jax.ShapeDtypeStruct((1, self.num_queries, t, h // 4, w // 4), np.float32))
    logits, masks = jax.pure_callback(self._outputs, shapes, clips)
    return {"pred_logits": logits, "pred_masks": masks}

  def _outputs(self, clips):
    clips = np.asarray(clips)
    _, t, h, w, _ = clips.shape
    where = [self.frames[float(clips[0, f].sum())] for f in range(t)]
    video = where[0][0]
    masks_all, classes = self.tubes[video]
    logits = np.full((1, self.num_queries, self.num_classes + 1), -10.0, np.float32)
    logits[0, :, -1] = 10.0
    masks = np.full((1, self.num_queries, t, h // 4, w // 4), -10.0, np.float32)
    for q, k in enumerate(classes):
      n = q
      logits[0, q, int(k)], logits[0, q, -1] = 10.0, -10.0
      full = np.zeros((t, h, w), np.float32)
      tube = masks_all[n][[f for _, f in where]]
      full[:, :tube.shape[1], :tube.shape[2]] = tube
      coverage = full.reshape(t, h // 4, 4, w // 4, 4).mean(axis=(2, 4))
      masks[0, q] = 20.0 * (coverage - 0.5)
    return logits, masks


@pytest.fixture(scope="module")
def panoptic_setup():
  source = synthetic_video.SyntheticVideoSource(3, split="validation", image_size=(64, 64),
                                                num_frames=6)
  config = ml_collections.ConfigDict(dict(
      data=dict(dataset="synthetic_video", task="video_panoptic", num_train=4, num_val=3,
                seed=0, ignore_label=255),
      model=dict(num_classes=7, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)),
      eval=dict(min_size=None, max_size=None, evaluators=("video_panoptic", "video_instance"),
                vpq_windows=(1, 2, 4, 6), clip_frames=0, clip_overlap=1,
                object_mask_threshold=0.8, overlap_threshold=0.8)))
  return source, config, _PanopticOracle(source)


def test_video_panoptic_oracle_and_vipseg_files(panoptic_setup, tmp_path):
  from m2f_jax.evaluation import video_panoptic  # pylint: disable=g-import-not-at-top
  source, config, model = panoptic_setup
  report = evaluate_video.evaluate_video(config=config, model=model, variables={},
                                         workdir=str(tmp_path), source=source)
  vpq = report["video_panoptic_seg"]
  # Masks at stride 4: IoU below 1 at the edges, every tube matched (RQ 1).
  assert vpq["VPQ"] > 75 and vpq["VPQ_th"] > 60 and vpq["VPQ_st"] > 90
  assert sorted(report["vpq_windows"]) == ["1", "2", "4", "6"]
  assert report["segm"]["AP50"] == pytest.approx(100.0)
  assert report["timing"]["forward_compilations"] == 1  # one video shape
  assert "VPQ" in evaluate_video.format_report(report)
  # The VIPSeg submission files give the same VPQ through the CLI's reader.
  pred = json.loads((tmp_path / "pred.json").read_text())
  assert [a["video_id"] for a in pred["annotations"]] == ["0", "1", "2"]
  assert sorted(os.listdir(tmp_path / "pan_pred" / "0")) == [f"{t:05d}.png" for t in range(6)]
  gt_json, gt_dir = _vipseg_ground_truth(source, tmp_path / "gt")
  files = video_panoptic.evaluate_folders(gt_json=gt_json, gt_folder=gt_dir,
                                          pred_json=str(tmp_path / "pred.json"),
                                          pred_folder=str(tmp_path / "pan_pred"),
                                          windows=(1, 2, 4, 6))
  assert files["video_panoptic_seg"] == pytest.approx(vpq)
  assert PIL.Image.open(tmp_path / "visualizations" / "0.gif").n_frames == 6


def _vipseg_ground_truth(source, root):
  """The source's videos as VIPSeg's ground-truth JSON and PNG folders."""
  from m2f_jax.data import panoptic_png  # pylint: disable=g-import-not-at-top
  from m2f_jax.data import video_pipeline  # pylint: disable=g-import-not-at-top
  videos, annotations = [], []
  for i in range(len(source)):
    gt = video_pipeline.panoptic_ground_truth(video_pipeline.clip_record(source[i]))
    name = str(i)
    os.makedirs(root / name)
    images, frames = [], []
    for t, (ids, segments) in enumerate(zip(gt["ids"], gt["segments"])):
      file_name = f"{t:05d}.png"
      panoptic_png.write_panoptic_png(root / name / file_name, ids)
      images.append({"file_name": file_name})
      frames.append({"file_name": file_name, "segments_info": segments})
    videos.append({"video_id": name, "images": images})
    annotations.append({"video_id": name, "annotations": frames})
  categories = [{"id": k, "isthing": int(k < 4)} for k in range(7)]
  path = root / "gt.json"
  path.write_text(json.dumps({"videos": videos, "annotations": annotations,
                              "categories": categories}))
  return str(path), str(root)


def test_video_panoptic_clips_linked_equal_the_whole_video(panoptic_setup):
  """Clips of 4 frames overlapping by 2 over 6-frame videos, linked: the oracle's per-frame
  tubes give the same VPQ as whole videos; one compiled shape."""
  source, config, model = panoptic_setup
  whole = evaluate_video.evaluate_video(config=config, model=model, variables={},
                                        source=source)
  clipped = ml_collections.ConfigDict(config.to_dict())
  clipped.eval.clip_frames, clipped.eval.clip_overlap = 4, 2
  linked = evaluate_video.evaluate_video(config=clipped, model=model, variables={},
                                         source=source)
  assert linked["video_panoptic_seg"] == pytest.approx(whole["video_panoptic_seg"])
  assert linked["segm"]["AP"] == pytest.approx(whole["segm"]["AP"])
  assert linked["timing"]["forward_compilations"] == 1


def test_video_panoptic_evaluator_needs_the_task(panoptic_setup):
  source, config, model = panoptic_setup
  bad = ml_collections.ConfigDict(config.to_dict())
  bad.data.task = "video_instance"
  with pytest.raises(ValueError, match="video_panoptic"):
    evaluate_video.evaluate_video(config=bad, model=model, variables={}, source=source)
