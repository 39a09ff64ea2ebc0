"""Instance segmentation mask AP through pycocotools.

Follows Detectron2's `COCOEvaluator` for the "segm" task (detectron2/evaluation/
coco_evaluation.py): each predicted mask is RLE-encoded (`instances_to_coco_json`), results
carry no box (so small/medium/large use the mask area), `COCOeval(iouType="segm")` with
maxDets [1, 10, 100], and the report is `stats[:6]` x 100 as AP, AP50, AP75, APs, APm, APl
(NaN where COCOeval gives -1, all NaN when there is no prediction), plus "AP-{name}" per
category when the categories have names.

Ground truth comes either from a COCO instances JSON (or `pycocotools.coco.COCO`), as in
Detectron2, or from masks passed to `update` (areas = mask pixel counts, annotation ids from
1). Only the images passed to `update` are evaluated (Detectron2 evaluates every image of the
JSON; the same thing once the whole dataset has been seen).
"""

import contextlib
import copy
import io
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def mask_to_rle(masks: np.ndarray):
  """COCO RLE of binary masks, "counts" as str (JSON-ready).

  Args:
    masks: bool/uint8 `[H, W]` or `[N, H, W]`.

  Returns:
    One `{"size": [H, W], "counts": str}` for `[H, W]`, a list of N for `[N, H, W]`.
  """
  masks = np.asarray(masks)
  if masks.ndim not in (2, 3):
    raise ValueError(f"mask_to_rle: masks must be [H, W] or [N, H, W], got {masks.shape}.")
  single = masks.ndim == 2
  stack = masks[None] if single else masks
  fortran = np.asfortranarray(stack.transpose(1, 2, 0).astype(np.uint8))  # [H, W, N]
  rles = mask_util.encode(fortran) if stack.shape[0] else []
  for rle in rles:
    rle["counts"] = rle["counts"].decode("utf-8")
  return rles[0] if single else list(rles)


class InstanceEvaluator:
  """Streaming COCO mask AP evaluator.

  Args:
    coco_gt: a COCO instances JSON path or a `pycocotools.coco.COCO`; None to pass the ground
      truth to `update` instead.
    categories: with ground truth from `update`: the COCO categories (dicts with "id",
      optionally "name").
    category_ids: optional map from contiguous class index to category id, applied to the
      predicted classes (and to the ground-truth classes given to `update`).
    verbose: let pycocotools print its tables.

  `update(...)` per image, then `compute()` -> `{"segm": {"AP", "AP50", "AP75", "APs", "APm",
  "APl"}}` in percent.
  """

  def __init__(self, *, coco_gt: "str | COCO | None" = None,
               categories: Sequence[Mapping[str, Any]] | None = None,
               category_ids: Sequence[int] | None = None, verbose: bool = False):
    if (coco_gt is None) == (categories is None):
      raise ValueError("InstanceEvaluator: give either coco_gt (ground truth from a COCO JSON) "
                       "or categories (ground truth passed to update).")
    if isinstance(coco_gt, str):
      with self._quiet(not verbose):
        coco_gt = COCO(coco_gt)
    self.coco_gt = coco_gt
    self.categories = None if categories is None else [dict(c) for c in categories]
    self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
    self.verbose = verbose
    self.reset()

  @staticmethod
  def _quiet(quiet: bool):
    return contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()

  def reset(self):
    self.results = []  # COCO result dicts.
    self.images = {}  # image id -> (height, width)
    self.gt_annotations = []

  def _category(self, k) -> int:
    return int(k) if self.category_ids is None else self.category_ids[int(k)]

  def update(self, *, image_id: int, pred_masks: np.ndarray, pred_scores: np.ndarray,
             pred_classes: np.ndarray, gt_masks: np.ndarray | None = None,
             gt_classes: np.ndarray | None = None, gt_iscrowd: np.ndarray | None = None):
    """Adds one image.

    Args:
      image_id: the COCO image id (an int).
      pred_masks: bool `[N, H, W]` (the "instances" of `postprocess`: masks, scores, classes).
      pred_scores: float `[N]`.
      pred_classes: int `[N]`.
      gt_masks: bool `[M, H, W]` (only without coco_gt).
      gt_classes: int `[M]`.
      gt_iscrowd: `[M]` (default all 0).
    """
    pred_masks = np.asarray(pred_masks)
    n = len(pred_scores)
    if pred_masks.ndim != 3 or pred_masks.shape[0] != n or len(pred_classes) != n:
      raise ValueError(f"Image {image_id}: pred_masks {pred_masks.shape} must be [N, H, W] with "
                       f"N = {n} scores and {len(pred_classes)} classes.")
    image_id = int(image_id)
    if self.coco_gt is None:
      if gt_masks is None or gt_classes is None:
        raise ValueError(f"Image {image_id}: without coco_gt, update needs gt_masks and "
                         "gt_classes.")
      gt_masks = np.asarray(gt_masks)
      if gt_masks.ndim != 3 or len(gt_classes) != gt_masks.shape[0]:
        raise ValueError(f"Image {image_id}: gt_masks {gt_masks.shape} must be [M, H, W] with M "
                         f"= {len(gt_classes)} gt_classes.")
      if n and gt_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"Image {image_id}: gt masks {gt_masks.shape[1:]} and predicted masks "
                         f"{pred_masks.shape[1:]} differ in size.")
      if image_id in self.images:
        raise ValueError(f"Image {image_id} was added twice.")
      iscrowd = np.zeros(len(gt_classes), int) if gt_iscrowd is None else np.asarray(gt_iscrowd)
      for rle, k, crowd in zip(mask_to_rle(gt_masks), gt_classes, iscrowd):
        self.gt_annotations.append({
            "id": len(self.gt_annotations) + 1, "image_id": image_id,
            "category_id": self._category(k), "segmentation": rle,
            "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
            "iscrowd": int(crowd)})
      self.images[image_id] = tuple(gt_masks.shape[1:])
    else:
      if gt_masks is not None:
        raise ValueError("InstanceEvaluator has coco_gt: do not pass gt_masks to update.")
      if image_id not in self.coco_gt.imgs:
        raise KeyError(f"Image id {image_id} is not in the COCO ground truth.")
      self.images[image_id] = None
    for rle, score, k in zip(mask_to_rle(pred_masks), pred_scores, pred_classes):
      self.results.append({"image_id": image_id, "category_id": self._category(k),
                           "segmentation": rle, "score": float(score)})

  def merge(self, other: "InstanceEvaluator"):
    offset = len(self.gt_annotations)
    self.gt_annotations += [dict(a, id=a["id"] + offset) for a in other.gt_annotations]
    self.images.update(other.images)
    self.results += other.results

  def _ground_truth(self) -> COCO:
    if self.coco_gt is not None:
      return self.coco_gt
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "height": h, "width": w} for i, (h, w) in self.images.items()],
        "annotations": copy.deepcopy(self.gt_annotations),
        "categories": copy.deepcopy(self.categories)}
    with self._quiet(not self.verbose):
      coco.createIndex()
    return coco

  def compute(self) -> dict[str, dict[str, float]]:
    if not self.results:
      return {"segm": {m: float("nan") for m in METRICS}}
    coco_gt = self._ground_truth()
    with self._quiet(not self.verbose):
      coco_dt = coco_gt.loadRes(copy.deepcopy(self.results))
      coco_eval = COCOeval(coco_gt, coco_dt, "segm")
      coco_eval.params.maxDets = [1, 10, 100]
      coco_eval.params.imgIds = sorted(self.images)
      coco_eval.evaluate()
      coco_eval.accumulate()
      coco_eval.summarize()
    report = {m: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
              for i, m in enumerate(METRICS)}
    categories = coco_gt.loadCats(coco_eval.params.catIds)
    if len(categories) > 1 and all("name" in c for c in categories):
      precision = coco_eval.eval["precision"]  # [T IoUs, R recalls, K, A areas, M maxDets]
      for i, c in enumerate(categories):
        p = precision[:, :, i, 0, -1]
        p = p[p > -1]
        report[f"AP-{c['name']}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return {"segm": report}
