"""Evaluation of a video model on a dataset's validation videos (video instance and video
panoptic segmentation).

`evaluate_video(config=..., model=..., variables=..., workdir=...)` runs the jit-compiled video
network on one whole video at a time (as the official inference: frames resized with the
official test-time rule, padded to a multiple of 32; `data.video_pipeline.eval_videos`), keeps
the official top-10 tubes per video (`m2f_jax.inference_video`), feeds the metrics that
`config.eval.evaluators` names (`m2f_jax.evaluation.EVALUATORS`: "video_instance" = YouTube-VIS
AP as ytvoseval, `evaluation.video_instance`), merges them across processes, and writes to
`workdir`:

  eval_results.json   {"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10",
                      "AP-<class>"...}, "num_videos", "seconds", "timing"} (percent; strict
                      JSON, undefined values null)
  results.json        the predictions in the YouTube-VIS submission format (category ids of
                      the dataset), the file the official server (or `python -m
                      m2f_jax.evaluation.video_instance --pred-json`) reads
  visualizations/<video_id>.gif   the first videos' frames with their results

Video panoptic segmentation (`data.task="video_panoptic"`) also runs the official panoptic
inference over each video's T x H x W volume (`inference_video.video_panoptic_inference`,
thresholds `eval.object_mask_threshold` / `eval.overlap_threshold`), feeds "video_panoptic"
(VIPSeg's VPQ over `eval.vpq_windows`, default 1, 2, 4, 6, 8 frames, and STQ;
`evaluation.video_panoptic`), and writes the predictions in VIPSeg's submission layout:

  eval_results.json   adds {"video_panoptic_seg": {"VPQ", "VPQ_th", "VPQ_st", "STQ", "AQ",
                      "SQ"}, "vpq_windows": {"1": {...}, ...}}; "segm" is the video AP of the
                      things (top 10 tubes of thing classes per video)
  pan_pred/<video>/<frame>.png, pred.json   (`predict_video.write_vipseg_video`; the files
                      `python -m m2f_jax.evaluation.video_panoptic --pred-json --pred-folder` reads)

Videos longer than `eval.clip_frames` (0: none; every video in one forward pass) run as
clips of that many frames overlapping by `eval.clip_overlap`, whose tubes are linked
(`inference_video.link_clips`): one compiled shape whatever the video's length.

The model is anything with `apply(variables, clips [1, T, H, W, 3]) -> {"pred_logits" [1, Q,
K + 1], "pred_masks" [1, Q, T, H/4, W/4]}` (`m2f_jax.models.video`). Each process evaluates
its own share of the videos; a video's frames compile once per (T, padded size). Used by
`eval.py` and at the end of `train.py` for video tasks (`is_video_task`).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from m2f_jax import data
from m2f_jax import evaluation
from m2f_jax import inference_video
from m2f_jax.evaluation import reports
from m2f_jax.evaluation import video_instance
from m2f_jax.evaluation import video_panoptic

VIDEO_TASKS = ("video_instance", "video_panoptic")


def is_video_task(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` evaluates a video task (this module) or an image task (`evaluate`)."""
  return config.data.get("task") in VIDEO_TASKS


def _gather_objects(obj):
  from m2f_jax import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate._gather_objects(obj)  # pylint: disable=protected-access


def _visualize(video, result, panoptic, class_names, path, *, pixel_mean, pixel_std):
  """An animated GIF of the video's frames with its results (`predict_video`'s overlays):
  the panoptic segments when there are some, else the instance tubes."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  from m2f_jax import predict_video  # pylint: disable=g-import-not-at-top
  h, w = video["image_size"]
  out_h, out_w = (int(s) for s in video["output_size"])
  frames = video["images"][0, :, :h, :w] * np.asarray(pixel_std) + np.asarray(pixel_mean)
  frames = [np.asarray(PIL.Image.fromarray(np.clip(f, 0, 255).astype(np.uint8)).resize(
      (out_w, out_h), PIL.Image.BILINEAR)) for f in frames]
  overlays = (predict_video.panoptic_overlays(frames, panoptic, class_names)
              if panoptic is not None else
              predict_video.frame_overlays(frames, result, class_names))
  predict_video.save_gif(overlays, path)


def evaluate_video(*, config: ml_collections.ConfigDict, model, variables,
                   workdir: str | None = None, source=None, max_videos: int | None = None,
                   frame_chunk: int = 4, num_visualizations: int = 2) -> dict:
  """Evaluates on the validation videos; writes eval_results.json and results.json (and
  pan_pred/, pred.json for video panoptic segmentation).

  Args:
    config: the run's config (data, model normalization, eval sizes and evaluators).
    model, variables: the video model and its variables.
    workdir: where the files go (None: nowhere).
    source: random-access source of videos (default: `data.data_source(config.data,
      "validation")`).
    max_videos: evaluate only the first N videos.
    frame_chunk: frames post-processed at a time (`inference_video`; bounds the memory).
    num_visualizations: animated GIFs of the first videos' results written to
      `workdir/visualizations/<video_id>.gif`.

  Returns:
    The report written to eval_results.json.
  """
  from m2f_jax.data import video_pipeline  # pylint: disable=g-import-not-at-top (grain)
  from m2f_jax import predict_video  # pylint: disable=g-import-not-at-top
  d, e = config.data, config.eval
  task = d.get("task") or "video_instance"
  panoptic_task = task == "video_panoptic"
  if source is None:
    source = data.data_source(d, "validation")
  categories = data.categories(d, config.model.num_classes)
  dataset_ids = [int(c.get("dataset_id", c["id"])) for c in categories]
  isthing = [bool(c.get("isthing", 1)) for c in categories]
  windows = e.get("vpq_windows") or None
  evaluators = evaluation.make_evaluators(
      e.evaluators, categories=categories, ignore_label=d.get("ignore_label", 255),
      options={"video_panoptic": {"windows": tuple(windows)}} if windows else None)
  needs = {ev.spec.needs for ev in evaluators}
  wrong = [ev.name for ev in evaluators
           if ev.spec.needs not in ("video_instances", "video_panoptic")]
  if wrong:
    raise ValueError(f"eval.evaluators {wrong} evaluate images, not videos: a video task "
                     "uses ('video_instance',) or ('video_panoptic', 'video_instance')")
  if "video_panoptic" in needs and not panoptic_task:
    raise ValueError("eval.evaluators has 'video_panoptic' but data.task is "
                     f"{task!r}: set data.task='video_panoptic' (a model trained on panoptic "
                     "tubes)")
  videos = video_pipeline.eval_videos(
      source, pixel_mean=config.model.pixel_mean, pixel_std=config.model.pixel_std,
      min_size=e.get("min_size"), max_size=e.get("max_size"), max_videos=max_videos,
      task=task)
  forward = jax.jit(lambda v, x: model.apply(v, x))
  seconds = dict(data=0.0, forward=0.0, postprocess=0.0, metrics=0.0)
  results, pan_annotations, num_videos = [], [], 0
  t0 = t_data = time.perf_counter()
  for video in videos:
    t_forward = time.perf_counter()
    seconds["data"] += t_forward - t_data
    logits, masks = inference_video.video_outputs(forward, variables, video["images"],
                                  clip_frames=int(e.get("clip_frames") or 0),
                                  clip_overlap=int(e.get("clip_overlap") or 0))
    t_post = time.perf_counter()
    seconds["forward"] += t_post - t_forward
    sizes = dict(padded_size=video["images"].shape[2:4], image_size=tuple(video["image_size"]),
                 output_size=tuple(video["output_size"]))
    result = inference_video.inference_video(
        pred_logits=logits, pred_masks=masks, frame_chunk=frame_chunk,
        classes=isthing if panoptic_task else None, **sizes)
    panoptic = None
    if panoptic_task:
      panoptic = inference_video.video_panoptic_inference(
          pred_logits=logits, pred_masks=masks, isthing=isthing, frame_chunk=frame_chunk,
          object_mask_threshold=e.get("object_mask_threshold", 0.8),
          overlap_threshold=e.get("overlap_threshold", 0.8), **sizes)
    t_metrics = time.perf_counter()
    seconds["postprocess"] += t_metrics - t_post
    predictions = inference_video.to_results(video["video_id"], result)  # contiguous ids
    annotation = {"ground_truth": video["ground_truth"], "size": tuple(video["output_size"]),
                  "length": video["images"].shape[1],
                  "panoptic_ground_truth": video.get("panoptic_ground_truth")}
    outputs = {"video_instances": predictions}
    if panoptic is not None:
      outputs["video_panoptic"] = {"ids": panoptic["panoptic"],
                                   "segments": inference_video.frame_segments(panoptic)}
    for evaluator in evaluators:
      evaluator.update(result=outputs, annotation=annotation, image_id=video["video_id"])
    results += [dict(p, category_id=dataset_ids[p["category_id"]]) for p in predictions]
    if panoptic is not None and workdir is not None:
      pan_annotations.append(predict_video.write_vipseg_video(
          os.path.join(workdir, "pan_pred"), video["video_name"], video["frame_names"],
          panoptic, category_ids=dataset_ids))
    if workdir is not None and jax.process_index() == 0 and num_videos < num_visualizations:
      os.makedirs(os.path.join(workdir, "visualizations"), exist_ok=True)
      _visualize(video, result, panoptic, [c["name"] for c in categories],
                 os.path.join(workdir, "visualizations", f"{video['video_id']}.gif"),
                 pixel_mean=config.model.pixel_mean, pixel_std=config.model.pixel_std)
    num_videos += 1
    t_data = time.perf_counter()
    seconds["metrics"] += t_data - t_metrics

  t_compute = time.perf_counter()
  report = {}
  for evaluator in evaluators:
    parts = _gather_objects(evaluator)
    for other in parts[1:]:
      parts[0].merge(other)
    computed = parts[0].compute()
    computed.pop("ground_truth", None)
    report.update(computed)
  all_results = [r for part in _gather_objects(results) for r in part]
  report["num_videos"] = int(sum(_gather_objects(num_videos)))
  seconds["metrics"] += time.perf_counter() - t_compute
  report["seconds"] = time.perf_counter() - t0
  report["timing"] = {f"{k}_s": v for k, v in seconds.items()}
  report["timing"]["forward_compilations"] = forward._cache_size()  # pylint: disable=protected-access
  if panoptic_task:
    all_annotations = [a for part in _gather_objects(pan_annotations) for a in part]
  if workdir is not None and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    reports.write_report(os.path.join(workdir, "eval_results.json"), report)
    reports.write_report(os.path.join(workdir, "results.json"), all_results)
    if panoptic_task:
      reports.write_report(os.path.join(workdir, "pred.json"), {"annotations": all_annotations})
  return report


def format_report(report: dict) -> str:
  """A printable table of the video AP names (and of VPQ / STQ when present)."""
  segm = report.get("segm", {})
  keys = [k for k in video_instance.METRICS if k in segm]
  text = ("segm (video) " + "".join(f"{k:>8}" for k in keys) + "\n" + " " * 13
          + "".join(f"{float('nan') if segm[k] is None else segm[k]:8.2f}" for k in keys))
  if "video_panoptic_seg" in report:
    text += "\nvideo panoptic (VPQ per window k)\n" + video_panoptic.format_report(report)
  return text
