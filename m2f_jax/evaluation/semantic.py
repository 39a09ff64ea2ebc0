"""Semantic segmentation metrics: mIoU, fwIoU, mACC, pACC.

Follows Detectron2's `SemSegEvaluator` (detectron2/evaluation/sem_seg_evaluation.py): a
`(K+1) x (K+1)` confusion matrix indexed [prediction, ground truth], where ground-truth pixels
with the ignore label go to the extra index K (and so count for no class); then per class
IoU = TP / (GT + PRED - TP) and ACC = TP / GT over the classes present in the ground truth,
averaged (mIoU, mACC), weighted by ground-truth frequency (fwIoU), and pixel accuracy
pACC = sum TP / sum GT. Values in percent. (Detectron2's boundary IoU is not computed.)
"""

from typing import Sequence

import numpy as np


def confusion_matrix(*, pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_label: int = 255) -> np.ndarray:
  """int64 `[K+1, K+1]` pixel counts indexed [prediction, ground truth].

  Args:
    pred: int `[H, W]` predicted class per pixel, in [0, K).
    gt: int `[H, W]` ground-truth class per pixel, in [0, K) or `ignore_label`.
    num_classes: K.
    ignore_label: ground-truth value of pixels that count for nothing.
  """
  pred = np.asarray(pred).astype(np.int64)
  gt = np.asarray(gt).astype(np.int64)
  if pred.shape != gt.shape:
    raise ValueError(f"confusion_matrix: pred {pred.shape} and gt {gt.shape} must have the same "
                     "shape (resize the prediction to the ground-truth size first).")
  if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
    raise ValueError(f"confusion_matrix: pred values must lie in [0, {num_classes}), got "
                     f"[{pred.min()}, {pred.max()}].")
  gt = np.where(gt == ignore_label, num_classes, gt)
  if gt.size and (gt.min() < 0 or gt.max() > num_classes):
    raise ValueError(f"confusion_matrix: gt values must lie in [0, {num_classes}) or be the "
                     f"ignore label {ignore_label}, got [{gt.min()}, {gt.max()}].")
  n = num_classes + 1
  return np.bincount(n * pred.reshape(-1) + gt.reshape(-1), minlength=n * n).reshape(n, n)


def semantic_metrics(conf_matrix: np.ndarray,
                     class_names: Sequence[str] | None = None) -> dict[str, float]:
  """mIoU, fwIoU, mACC, pACC (percent) from a `[K+1, K+1]` confusion matrix.

  With `class_names`, also Detectron2's per-class "IoU-{name}" and "ACC-{name}" (NaN for
  classes absent from the ground truth).
  """
  conf = np.asarray(conf_matrix)
  num_classes = conf.shape[0] - 1
  acc = np.full(num_classes, np.nan)
  iou = np.full(num_classes, np.nan)
  tp = conf.diagonal()[:-1].astype(np.float64)
  pos_gt = conf[:-1, :-1].sum(axis=0).astype(np.float64)
  pos_pred = conf[:-1, :-1].sum(axis=1).astype(np.float64)
  acc_valid = pos_gt > 0
  acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
  union = pos_gt + pos_pred - tp
  iou_valid = acc_valid & (union > 0)
  iou[iou_valid] = tp[iou_valid] / union[iou_valid]
  with np.errstate(invalid="ignore", divide="ignore"):
    class_weights = pos_gt / pos_gt.sum()
    res = {
        "mIoU": 100 * iou[iou_valid].sum() / iou_valid.sum(),
        "fwIoU": 100 * (iou[iou_valid] * class_weights[iou_valid]).sum(),
        "mACC": 100 * acc[acc_valid].sum() / acc_valid.sum(),
        "pACC": 100 * tp.sum() / pos_gt.sum(),
    }
  res = {k: float(v) for k, v in res.items()}
  if class_names is not None:
    if len(class_names) != num_classes:
      raise ValueError(f"{len(class_names)} class names for {num_classes} classes.")
    for i, name in enumerate(class_names):
      res[f"IoU-{name}"] = float(100 * iou[i])
      res[f"ACC-{name}"] = float(100 * acc[i])
  return res


class SemanticEvaluator:
  """Streaming semantic segmentation evaluator.

  `update(pred=..., gt=...)` per image, then `compute()` ->
  `{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC"}}` in percent. For several processes, add up
  the `conf_matrix` attributes (or `merge`) before `compute()`.
  """

  def __init__(self, *, num_classes: int, ignore_label: int = 255,
               class_names: Sequence[str] | None = None):
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.class_names = class_names
    self.reset()

  def reset(self):
    self.conf_matrix = np.zeros((self.num_classes + 1,) * 2, np.int64)

  def update(self, *, pred: np.ndarray, gt: np.ndarray):
    """Adds one image: `pred` int `[H, W]` (the "sem_seg" of `postprocess`), `gt` int `[H, W]`."""
    self.conf_matrix += confusion_matrix(pred=pred, gt=gt, num_classes=self.num_classes,
                                         ignore_label=self.ignore_label)

  def merge(self, other: "SemanticEvaluator"):
    self.conf_matrix += other.conf_matrix

  def compute(self) -> dict[str, dict[str, float]]:
    return {"sem_seg": semantic_metrics(self.conf_matrix, self.class_names)}
