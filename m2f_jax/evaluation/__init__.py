"""Metrics with Detectron2's report names, in percent; numpy, Pillow and pycocotools, no JAX.

  semantic.SemanticEvaluator  -> {"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC"}}
  pq.PanopticEvaluator        -> {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st"}}
  instance.InstanceEvaluator  -> {"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl"}}
  video_instance.VideoInstanceEvaluator -> {"segm": {..., "AR1", "AR10"}} (YouTube-VIS, per
                                 video; `m2f_jax.evaluate_video`)
  video_panoptic.VideoPanopticEvaluator -> {"video_panoptic_seg": {"VPQ", "VPQ_th", "VPQ_st",
                                 "STQ", "AQ", "SQ"}, "vpq_windows"} (VIPSeg, per video)

Each is streaming: `update(...)` per image (keyword-only), `compute()` at the end, `merge`
to combine evaluators of several processes. `EVALUATORS` maps the names that
`config.eval.evaluators` lists to them, each with the post-processing output it needs;
`make_evaluators` builds them behind one interface (`ImageEvaluator`: a post-processed result
and an annotation record in, a report section out), so a new metric is one new entry.

CLIs over files on disk: `python -m m2f_jax.evaluation.panoptic --help` (PQ of
COCO-panoptic-format predictions).
"""

import collections
from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any

from m2f_jax.data import targets
from m2f_jax.evaluation import instance
from m2f_jax.evaluation import pq
from m2f_jax.evaluation import semantic
from m2f_jax.evaluation import video_instance
from m2f_jax.evaluation import video_panoptic


def _update_semantic(metric, result, annotation, image_id):
  del image_id
  if "semantic" in annotation:
    metric.update(pred=result["sem_seg"], gt=annotation["semantic"])


def _update_panoptic(metric, result, annotation, image_id):
  info = annotation["segments_info"]
  gt_segments = [{"id": int(s), "category_id": int(c), "iscrowd": int(cr)}
                 for s, c, cr in zip(info["id"], info["category_id"], info["iscrowd"])]
  pred_ids, pred_segments = result["panoptic_seg"]
  metric.update(gt_ids=annotation["panoptic"], gt_segments=gt_segments, pred_ids=pred_ids,
                pred_segments=pred_segments, image_id=image_id)


def _update_instance(metric, result, annotation, image_id):
  """Instance annotations when the record has them (COCO: instances_val2017.json, as
  Detectron2 evaluates), else the thing segments of its panoptic map; returns which."""
  gt = targets.instance_annotations(annotation)
  source = ("instance annotations" if "instances" in annotation
            else "thing segments of the panoptic annotations")
  r = result["instances"]
  metric.update(image_id=image_id, pred_masks=r["masks"], pred_scores=r["scores"],
                pred_classes=r["classes"], gt_masks=gt["masks"], gt_classes=gt["category_id"],
                gt_iscrowd=gt["iscrowd"])
  return source


def _update_video_instance(metric, result, annotation, image_id):
  """One video: `result["video_instances"]` (YouTube-VIS results, contiguous class ids) and
  `annotation` {"ground_truth": its tubes, "size": (H, W), "length": T}."""
  height, width = annotation["size"]
  metric.update(video_id=image_id, predictions=result["video_instances"],
                ground_truth=annotation["ground_truth"], height=height, width=width,
                length=annotation["length"])


def _update_video_panoptic(metric, result, annotation, image_id):
  """One video: `result["video_panoptic"]` {"ids": [T, H, W], "segments": per frame [{"id",
  "category_id"}]} and `annotation["panoptic_ground_truth"]` of the same form (+ "iscrowd")."""
  pred, gt = result["video_panoptic"], annotation["panoptic_ground_truth"]
  metric.update(video_id=image_id, gt_ids=gt["ids"], gt_segments=gt["segments"],
                pred_ids=pred["ids"], pred_segments=pred["segments"])


@dataclasses.dataclass(frozen=True)
class EvaluatorSpec:
  """One metric: the post-processing output it reads, how to build and feed it.

  Attributes:
    needs: the key of `inference.postprocess` results it reads ("sem_seg", "panoptic_seg"
      or "instances"), or "video_instances" (one video's `inference_video.to_results`) or
      "video_panoptic" (one video's id maps and per-frame segments).
    make: `make(categories=..., ignore_label=...)` -> the streaming metric.
    update: `update(metric, result, annotation, image_id)` for one image; returns a name
      of the ground truth it used when there is a choice (counted in the report under
      "ground_truth"), else None.
  """
  needs: str
  make: Callable[..., Any]
  update: Callable[[Any, Mapping[str, Any], Mapping[str, Any], int], str | None]


EVALUATORS: dict[str, EvaluatorSpec] = {
    "semantic": EvaluatorSpec(
        needs="sem_seg",
        make=lambda *, categories, ignore_label: semantic.SemanticEvaluator(
            num_classes=len(categories), ignore_label=ignore_label,
            class_names=[c["name"] for c in categories]),
        update=_update_semantic),
    "panoptic": EvaluatorSpec(
        needs="panoptic_seg",
        make=lambda *, categories, ignore_label: pq.PanopticEvaluator(categories=categories),
        update=_update_panoptic),
    "instance": EvaluatorSpec(
        needs="instances",
        make=lambda *, categories, ignore_label: instance.InstanceEvaluator(
            categories=categories),
        update=_update_instance),
    # Videos (m2f_jax.evaluate_video): one update per video, image_id = the video id.
    "video_instance": EvaluatorSpec(
        needs="video_instances",
        make=lambda *, categories, ignore_label: video_instance.VideoInstanceEvaluator(
            categories=categories),
        update=_update_video_instance),
    # `windows`: VPQ's window lengths (VIPSeg's 1, 2, 4, 6, 8 frames by default).
    "video_panoptic": EvaluatorSpec(
        needs="video_panoptic",
        make=lambda *, categories, ignore_label, windows=video_panoptic.WINDOWS: (
            video_panoptic.VideoPanopticEvaluator(categories=categories, windows=windows)),
        update=_update_video_panoptic),
}


class ImageEvaluator:
  """One metric of `EVALUATORS` behind the update / merge / compute interface."""

  def __init__(self, name: str, *, categories: Sequence[Mapping[str, Any]],
               ignore_label: int = 255, **options):
    if name not in EVALUATORS:
      raise ValueError(f"unknown evaluator {name!r} in eval.evaluators: use any of "
                       f"{sorted(EVALUATORS)}")
    self.name = name  # the spec is looked up by name: evaluators pickle (multi-host merge)
    self.metric = self.spec.make(categories=categories, ignore_label=ignore_label, **options)
    self.ground_truth = collections.Counter()  # images per ground-truth source

  @property
  def spec(self) -> EvaluatorSpec:
    return EVALUATORS[self.name]

  def update(self, *, result: Mapping[str, Any], annotation: Mapping[str, Any],
             image_id: int):
    source = self.spec.update(self.metric, result, annotation, image_id)
    if source is not None:
      self.ground_truth[source] += 1

  def merge(self, other: "ImageEvaluator"):
    self.metric.merge(other.metric)
    self.ground_truth.update(other.ground_truth)

  def compute(self) -> dict[str, Any]:
    """The metric's report sections, and {"ground_truth": {name: {source: images}}}."""
    report = dict(self.metric.compute())
    if self.ground_truth:
      report["ground_truth"] = {self.name: dict(self.ground_truth)}
    return report


def make_evaluators(names: Sequence[str], *, categories: Sequence[Mapping[str, Any]],
                    ignore_label: int = 255,
                    options: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> list[ImageEvaluator]:
  """`options`: per evaluator name, extra arguments of its `make` (e.g. {"video_panoptic":
  {"windows": (1, 2, 4)}})."""
  options = options or {}
  return [ImageEvaluator(n, categories=categories, ignore_label=ignore_label,
                         **options.get(n, {})) for n in names]
