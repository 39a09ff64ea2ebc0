"""Panoptic quality (PQ, SQ, RQ) exactly as panopticapi's `pq_compute`.

Follows cocodataset/panopticapi `panopticapi/evaluation.py` (and Detectron2's
`COCOPanopticEvaluator`, which calls it and reports in percent):

* segment id 0 is VOID; a ground-truth segment and a predicted segment of the same category
  match when IoU > 0.5, where the union leaves out the predicted pixels that fall on VOID:
  `union = pred_area + gt_area - intersection - |pred ∩ VOID|`; ground-truth areas are the
  "area" of the annotation when given (panopticapi reads it from the JSON), else pixel counts;
* crowd ground-truth segments (iscrowd = 1) never match and are not false negatives;
* an unmatched predicted segment is a false positive unless more than half of its pixels lie
  on VOID plus the (last listed) crowd segment of its category;
* per category PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 +
  FN/2), averaged over the categories with TP + FP + FN > 0, for all, things and stuff.

Deviation: panopticapi divides by zero when no category of a group (e.g. stuff) occurs; here
that group's PQ, SQ and RQ are NaN (with n = 0).

The CLI over files on disk is `python -m m2f_jax.evaluation.panoptic`.
"""

import collections
import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from m2f_jax.data.panoptic_png import OFFSET

VOID = 0


@dataclasses.dataclass
class PQStatCat:
  """Sums for one category: IoU of the matches, true/false positives, false negatives."""
  iou: float = 0.0
  tp: int = 0
  fp: int = 0
  fn: int = 0

  def __iadd__(self, other: "PQStatCat") -> "PQStatCat":
    self.iou += other.iou
    self.tp += other.tp
    self.fp += other.fp
    self.fn += other.fn
    return self


def new_stats() -> "collections.defaultdict[int, PQStatCat]":
  """Empty per-category sums: category id -> PQStatCat."""
  return collections.defaultdict(PQStatCat)


def add_stats(total, stats):
  """Adds the per-category `stats` into `total` (both from `new_stats`)."""
  for category_id, stat in stats.items():
    total[category_id] += stat
  return total


def pq_stats(*, gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]],
             pred_ids: np.ndarray, pred_segments: Sequence[Mapping[str, Any]],
             categories: Mapping[int, Any], image_id: Any = None):
  """Per-category TP/FP/FN/IoU sums of one image (panopticapi's `pq_compute_single_core`).

  Args:
    gt_ids: int `[H, W]` ground-truth segment ids (0 = VOID).
    gt_segments: dicts with "id", "category_id", and optionally "iscrowd" (default 0) and
      "area" (default: the pixel count).
    pred_ids: int `[H, W]` predicted segment ids (0 = VOID), ids < 256^3.
    pred_segments: dicts with "id" and "category_id" (other keys are ignored).
    categories: category id -> info (only membership is checked here).
    image_id: used in error messages.

  Returns:
    `new_stats()` filled for this image.
  """
  gt_ids = np.asarray(gt_ids).astype(np.uint64)
  pred_ids = np.asarray(pred_ids).astype(np.uint64)
  if gt_ids.shape != pred_ids.shape:
    raise ValueError(f"Image {image_id}: ground truth {gt_ids.shape} and prediction "
                     f"{pred_ids.shape} panoptic maps differ in shape.")
  stats = new_stats()
  gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
  pred_segms = {int(s["id"]): dict(s) for s in pred_segments}
  if len(gt_segms) != len(gt_segments) or len(pred_segms) != len(pred_segments):
    raise ValueError(f"Image {image_id}: segment ids in segments_info must be unique.")

  # Predicted areas and sanity checks.
  unlisted = set(pred_segms)
  labels, counts = np.unique(pred_ids, return_counts=True)
  for label, count in zip(labels.tolist(), counts.tolist()):
    if label not in pred_segms:
      if label == VOID:
        continue
      raise KeyError(f"Image {image_id}: segment id {label} is in the predicted panoptic map "
                     "but not in its segments_info.")
    pred_segms[label]["area"] = count
    unlisted.remove(label)
    if pred_segms[label]["category_id"] not in categories:
      raise KeyError(f"Image {image_id}: predicted segment {label} has unknown category_id "
                     f"{pred_segms[label]['category_id']}.")
  if unlisted:
    raise KeyError(f"Image {image_id}: segment ids {sorted(unlisted)} are in the predicted "
                   "segments_info but not in the panoptic map.")
  if any("area" not in s for s in gt_segms.values()):
    labels, counts = np.unique(gt_ids, return_counts=True)
    gt_area = dict(zip(labels.tolist(), counts.tolist()))
    for label, s in gt_segms.items():
      s.setdefault("area", gt_area.get(label, 0))

  # Intersections of every (gt, pred) pair of ids.
  labels, counts = np.unique(gt_ids * np.uint64(OFFSET) + pred_ids, return_counts=True)
  intersections = {(label // OFFSET, label % OFFSET): count
                   for label, count in zip(labels.tolist(), counts.tolist())}

  gt_matched, pred_matched = set(), set()
  for (gt_label, pred_label), intersection in intersections.items():
    if gt_label not in gt_segms or pred_label not in pred_segms:
      continue
    gt, pred = gt_segms[gt_label], pred_segms[pred_label]
    if gt.get("iscrowd", 0) == 1 or gt["category_id"] != pred["category_id"]:
      continue
    union = (pred["area"] + gt["area"] - intersection
             - intersections.get((VOID, pred_label), 0))
    iou = intersection / union
    if iou > 0.5:
      stats[gt["category_id"]].tp += 1
      stats[gt["category_id"]].iou += iou
      gt_matched.add(gt_label)
      pred_matched.add(pred_label)

  crowd_of_category = {}
  for gt_label, gt in gt_segms.items():
    if gt_label in gt_matched:
      continue
    if gt.get("iscrowd", 0) == 1:  # Crowd segments are ignored.
      crowd_of_category[gt["category_id"]] = gt_label
      continue
    stats[gt["category_id"]].fn += 1

  for pred_label, pred in pred_segms.items():
    if pred_label in pred_matched:
      continue
    ignored = intersections.get((VOID, pred_label), 0)
    if pred["category_id"] in crowd_of_category:
      ignored += intersections.get((crowd_of_category[pred["category_id"]], pred_label), 0)
    if ignored / pred["area"] > 0.5:  # Mostly on VOID or crowd: not a false positive.
      continue
    stats[pred["category_id"]].fp += 1
  return stats


def pq_average(stats, categories: Mapping[int, Mapping[str, Any]], isthing: bool | None):
  """panopticapi's `PQStat.pq_average`: `({"pq", "sq", "rq", "n"}, per_class)` (fractions)."""
  pq = sq = rq = 0.0
  n = 0
  per_class = {}
  for label, info in categories.items():
    if isthing is not None and isthing != (info["isthing"] == 1):
      continue
    stat = stats.get(label, PQStatCat())
    if stat.tp + stat.fp + stat.fn == 0:
      per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
      continue
    n += 1
    denominator = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
    per_class[label] = {"pq": stat.iou / denominator,
                        "sq": stat.iou / stat.tp if stat.tp else 0.0,
                        "rq": stat.tp / denominator}
    pq += per_class[label]["pq"]
    sq += per_class[label]["sq"]
    rq += per_class[label]["rq"]
  if n == 0:
    return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}, per_class
  return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_results(stats, categories: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """panopticapi's result: {"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}, "per_class"}."""
  results = {}
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    results[name], per_class = pq_average(stats, categories, isthing)
    if name == "All":
      results["per_class"] = per_class
  return results


def detectron2_report(results: Mapping[str, Any]) -> dict[str, float]:
  """`pq_results` -> Detectron2's {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st"} in percent."""
  report = {}
  for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
    for key in ("pq", "sq", "rq"):
      report[key.upper() + suffix] = 100 * results[name][key]
  return report


def format_table(results: Mapping[str, Any]) -> str:
  """The PQ table (percent) as panopticapi prints it."""
  lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"),
           "-" * (10 + 7 * 4)]
  for name in ("All", "Things", "Stuff"):
    r = results[name]
    lines.append("{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
        name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["n"]))
  return "\n".join(lines)


def categories_dict(categories: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
  out = {}
  for c in categories:
    if "id" not in c or "isthing" not in c:
      raise ValueError(f"A category needs 'id' and 'isthing' (COCO panoptic categories), got {c}.")
    out[int(c["id"])] = dict(c)
  return out


class PanopticEvaluator:
  """Streaming PQ evaluator (panopticapi's definition, Detectron2's report).

  Args:
    categories: COCO panoptic categories, dicts with "id" and "isthing" (1/True for things).
    category_ids: optional map from the contiguous class index of the predictions (as
      `m2f_jax.inference.postprocess` returns) to the category id: `category_ids[k]`. Ground
      truth is given with category ids.

  `update(...)` per image, then `compute()` -> `{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th",
  "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"}, "panoptic_per_class": {name: {"PQ", "SQ",
  "RQ"}}}` in percent; `results()` gives panopticapi's
  full result (fractions, with per-class values).
  """

  def __init__(self, *, categories: Sequence[Mapping[str, Any]],
               category_ids: Sequence[int] | None = None):
    self.categories = categories_dict(categories)
    self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
    self.reset()

  def reset(self):
    self.stats = new_stats()

  def update(self, *, gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]],
             pred_ids: np.ndarray, pred_segments: Sequence[Mapping[str, Any]],
             image_id: Any = None):
    """Adds one image.

    Args:
      gt_ids: int `[H, W]` ground-truth segment ids, 0 = VOID.
      gt_segments: dicts with "id", "category_id", "iscrowd" (and optionally "area").
      pred_ids: int `[H, W]` predicted segment ids, 0 = VOID (the first element of
        "panoptic_seg" from `postprocess`).
      pred_segments: dicts with "id", "category_id" (mapped through `category_ids` if given).
      image_id: for error messages.
    """
    if self.category_ids is not None:
      pred_segments = [dict(s, category_id=self.category_ids[s["category_id"]])
                       for s in pred_segments]
    add_stats(self.stats, pq_stats(gt_ids=gt_ids, gt_segments=gt_segments, pred_ids=pred_ids,
                                   pred_segments=pred_segments, categories=self.categories,
                                   image_id=image_id))

  def merge(self, other: "PanopticEvaluator"):
    add_stats(self.stats, other.stats)

  def results(self) -> dict[str, Any]:
    return pq_results(self.stats, self.categories)

  def compute(self) -> dict[str, dict[str, float]]:
    """Detectron2's "panoptic_seg", and "panoptic_per_class": {name: {"PQ", "SQ", "RQ"}} in
    percent (None for a class neither annotated nor predicted)."""
    results = self.results()
    per_class = {}
    for label, values in results["per_class"].items():
      stat = self.stats.get(label, PQStatCat())
      defined = stat.tp + stat.fp + stat.fn > 0
      name = str(self.categories[label].get("name", label))
      per_class[name] = {k.upper(): 100 * v if defined else None for k, v in values.items()}
    return {"panoptic_seg": detectron2_report(results), "panoptic_per_class": per_class}
