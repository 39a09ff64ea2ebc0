r"""Video panoptic segmentation metrics of VIPSeg in numpy: VPQ and STQ.

  python -m m2f_jax.evaluation.video_panoptic --gt-json panoptic_gt_VIPSeg_val.json \
      --gt-folder VIPSeg_720P/panomasksRGB --pred-json pred.json --pred-folder pan_pred \
      [--output report.json]

prints and writes (strict JSON, null where undefined, percent)
`{"video_panoptic_seg": {"VPQ", "VPQ_th", "VPQ_st", "STQ", "AQ", "SQ"}, "vpq_windows": {"1":
{"VPQ", "VPQ_th", "VPQ_st", "n", "n_th", "n_st"}, "2": ..., "8": ...}, "num_videos"}`: the
numbers of VIPSeg-Dataset/VIPSeg-Dataset's `ClipPanoFCN/eval_vpq_vspw.py` (VPQ) and
`ClipPanoFCN/eval_stq_vspw.py` (STQ, through its copy of deeplab2's numpy `STQuality`,
google-research/deeplab2 `evaluation/numpy/segmentation_and_tracking_quality.py`).

Input, as VIPSeg's conversion (`create_panoptic_video_labels.py`, `splitjson.py`) and its
submission writer (`ClipPanoFCN/panopticfcn/utils.py: generate_rgb_and_json`) lay it out:
folders `<video_id>/<frame>.png` of RGB-encoded panoptic maps (id = R + 256 G + 256^2 B;
`m2f_jax.data.panoptic_png`); the ground-truth JSON {"videos": [{"video_id", "images":
[{"file_name", ...}]}], "annotations": [{"video_id", "annotations": [{"file_name",
"segments_info": [{"id", "category_id", "iscrowd", "area"}]}] (one per frame)}],
"categories": [{"id", "isthing", ...}]}; the prediction JSON {"annotations": [{"video_id",
"annotations": [{"file_name", "segments_info": [{"id", "category_id"}]}]}]}. As the reference,
frames pair up by position: frame t of a video is the t-th entry of its "images", of its
ground-truth annotations and of its predicted annotations, and both PNGs are read under the
image's "file_name". Videos: those of the ground truth, in its order (predictions of other
videos are ignored, as the reference does).

VPQ (`eval_vpq_vspw.py`, itself VPSNet's `eval_vpq.py` on VIPSeg's layout):

- Windows: for each k in (1, 2, 4, 6, 8), every run of k consecutive frames of a video, stride
  1 (starts 0 .. T - k). A video shorter than k frames has no window of k frames: it adds
  nothing at that k (no false negatives either). The reference names window k "(k - 1) * 5"
  in its output files (vpq-0.txt, vpq-5.txt, ..., vpq-35.txt); here the key is k.
- In a window, a tube is a segment id over its k frames (ids are per video). Its category and
  iscrowd are those of the first frame of the window that lists it; its area is the sum over
  the window: ground truth from the JSON "area" (repeated ids in one frame add up; the pixel
  count where "area" is absent), predictions their pixel counts.
- Matching is panopticapi's on the window (`m2f_jax.evaluation.pq`): segment id 0 is void
  (void is an id, not a category: VIPSeg's category 0, "wall", is a real class); a
  ground-truth id in the PNG that its frame does not list is neither void nor a segment;
  truth and prediction of the same category match when the truth is not crowd and
  IoU = I / (|p| + |g| - I - |p on void|) > 0.5 (TP, its IoU summed); an unmatched non-crowd
  truth is a FN; an unmatched prediction is a FP unless more than half of it lies on void
  plus the crowd tube of its category (the last listed, as the reference).
- TP / FP / FN / IoU sums add up over windows and videos; per k, PQ per category over the
  categories of the ground-truth JSON with TP + FP + FN > 0, averaged over all / things
  (isthing == 1) / stuff categories: VPQ, VPQ_th, VPQ_st of the window. VPQ = the mean of the
  five windows' values, as the reference's vpq-final.txt (there rounded to 4 decimals).

STQ (`eval_stq_vspw.py` + deeplab2's `STQuality`, as VIPSeg reports it):

- Per frame, a pixel's class is the category of its listed segment (255 = void elsewhere:
  id 0 and unlisted ids) and its instance the index of its segment id in the order the
  video's segments_info first list them (0, 1, 2, ...). Quirk kept: the video's first listed
  ground-truth segment gets instance 0, which deeplab2 reads as "crowd" when its class is a
  thing: its pixels leave the association term for truth and prediction alike. iscrowd is
  not read. num_classes = the largest category id + 1 (VIPSeg: 124, the script's n_classes).
- SQ is deeplab2's "IoU": the mean IoU over the classes with a non-zero union, on the
  confusion matrix summed over videos, ground-truth void pixels dropped. Quirk kept: labelled
  pixels predicted as void count as an extra class (the void column) with IoU 0.
- AQ = sum over videos and ground-truth thing tubes g (a (class, instance) over the whole
  video) of 1/|g| sum_p TPA^2 / (TPA + FPA + FNA), over predicted thing tubes p of any class,
  divided by the number of truth tubes (0 when there is none, as deeplab2). Pixel counts are
  int64 as in VIPSeg's copy (deeplab2's current one accumulates float32).
- STQ = sqrt(AQ * SQ), over all frames of every video (no windows).

Differences, on input the reference mishandles: where a group has no category at some k (e.g.
no stuff class occurs, or every video is shorter than k) that window's value is null and so is
the mean of that key (VPQ, VPQ_th or VPQ_st), where the reference divides by zero; SQ and STQ
are null where no class occurs (the reference's NaN). `windows` of the Python API chooses
other window lengths (e.g. for videos shorter than 8 frames). These
raise a ValueError naming video and frame where the reference raises KeyError, asserts,
divides by zero or silently misaligns: a predicted id in the PNG that its segments_info
does not list (or listed but absent), a category outside the ground truth's categories (the
reference skips ground-truth ones), a video without predictions, frame counts that differ,
a predicted "file_name" whose stem differs from the image's, maps of different shapes, a
ground-truth "area" that makes an IoU exceed 1. Within one process the numbers equal the
reference's bit for bit (same sums in the same order); `merge` of several evaluators keeps
that order (self's videos, then other's).

Python API: `VideoPanopticEvaluator` (update per video with [T, H, W] id maps and per-frame
segments_info, merge, compute), and `evaluate_folders` for files on disk.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Iterable, Mapping, Sequence
import json
import os
import sys
from typing import Any

import numpy as np

from m2f_jax.data.panoptic_png import OFFSET
from m2f_jax.data.panoptic_png import read_panoptic_png
from m2f_jax.evaluation import pq
from m2f_jax.workdir import write_text_atomic

WINDOWS = (1, 2, 4, 6, 8)  # eval_vpq_vspw.py's nframes
VOID = 0  # segment id of void pixels
STQ_IGNORE = 255  # eval_stq_vspw.py's class (and instance) of void pixels
STQ_BIT_SHIFT = 16  # panoptic label = (class << 16) + instance
_EPSILON = 1e-15  # deeplab2's


# ------------------------------------------------------------------------------------------
# One frame
# ------------------------------------------------------------------------------------------


def _pair_counts(gt_ids: np.ndarray, pred_ids: np.ndarray, where: str) -> dict:
  """Pixel counts of every (truth id, predicted id) pair, {(g, p): n} in sorted key order."""
  gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
  if gt_ids.ndim != 2 or gt_ids.shape != pred_ids.shape:
    raise ValueError(f"{where}: ground truth {gt_ids.shape} and prediction {pred_ids.shape} "
                     "must be [H, W] id maps of one shape")
  for name, ids in (("ground truth", gt_ids), ("prediction", pred_ids)):
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"{where}: the {name} id map is {ids.dtype}, expected integers")
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
      raise ValueError(f"{where}: {name} ids must lie in [0, 256^3), got "
                       f"[{ids.min()}, {ids.max()}]")
  labels, counts = np.unique(gt_ids.astype(np.uint64) * np.uint64(OFFSET)
                             + pred_ids.astype(np.uint64), return_counts=True)
  return {(label // OFFSET, label % OFFSET): count
          for label, count in zip(labels.tolist(), counts.tolist())}


def _frame_segments(pairs: Mapping, gt_segments: Sequence[Mapping[str, Any]],
                    pred_segments: Sequence[Mapping[str, Any]],
                    categories: Mapping[int, Any], where: str):
  """One frame's segments as the reference merges them: {id: {"category_id", "iscrowd",
  "area"}} for truth and prediction, first listing's category, in listing order."""
  gt_pixels, pred_pixels = collections.Counter(), collections.Counter()
  for (g, p), n in pairs.items():
    gt_pixels[g] += n
    pred_pixels[p] += n
  gt = {}
  for s in gt_segments:
    sid, category = int(s["id"]), int(s["category_id"])
    if category not in categories:
      raise ValueError(f"{where}: ground-truth segment {sid} has category_id {category}, "
                       "which is not in the ground truth's categories")
    if sid not in gt:
      gt[sid] = {"category_id": category, "iscrowd": int(s.get("iscrowd", 0)), "areas": []}
    gt[sid]["areas"].append(s.get("area"))
  for sid, seg in gt.items():
    areas = seg.pop("areas")
    seg["area"] = (sum(int(a) for a in areas) if all(a is not None for a in areas)
                   else gt_pixels.get(sid, 0))
  pred = {}
  for s in pred_segments:
    sid, category = int(s["id"]), int(s["category_id"])
    if category not in categories:
      raise ValueError(f"{where}: predicted segment {sid} has unknown category_id {category}")
    if sid not in pred_pixels:
      raise ValueError(f"{where}: predicted segment {sid} is in segments_info but not in the "
                       "panoptic map")
    pred.setdefault(sid, {"category_id": category, "area": pred_pixels[sid]})
  unlisted = sorted(p for p in pred_pixels if p not in pred and p != VOID)
  if unlisted:
    raise ValueError(f"{where}: predicted segment ids {unlisted} are in the panoptic map but "
                     "not in its segments_info")
  return gt, pred


# ------------------------------------------------------------------------------------------
# VPQ: windows of k frames
# ------------------------------------------------------------------------------------------


def _window_stats(stats, pairs: Mapping, gt: Mapping, pred: Mapping, where: str):
  """panopticapi's matching of one window's tubes, added into `stats` (pq.new_stats())."""
  gt_matched, pred_matched = set(), set()
  for (g, p), intersection in pairs.items():  # sorted by (g, p), as the reference
    if g not in gt or p not in pred:
      continue
    if gt[g]["iscrowd"] == 1 or gt[g]["category_id"] != pred[p]["category_id"]:
      continue
    union = pred[p]["area"] + gt[g]["area"] - intersection - pairs.get((VOID, p), 0)
    if union <= 0 or intersection > union:
      raise ValueError(f"{where}: ground-truth segment {g} has 'area' {gt[g]['area']} but "
                       f"{intersection} pixels on predicted segment {p}; fix its 'area'")
    iou = intersection / union
    if iou > 0.5:
      stats[gt[g]["category_id"]].tp += 1
      stats[gt[g]["category_id"]].iou += iou
      gt_matched.add(g)
      pred_matched.add(p)
  crowd_of_category = {}
  for g, seg in gt.items():
    if g in gt_matched:
      continue
    if seg["iscrowd"] == 1:
      crowd_of_category[seg["category_id"]] = g
      continue
    stats[seg["category_id"]].fn += 1
  for p, seg in pred.items():
    if p in pred_matched:
      continue
    ignored = pairs.get((VOID, p), 0)
    if seg["category_id"] in crowd_of_category:
      ignored += pairs.get((crowd_of_category[seg["category_id"]], p), 0)
    if ignored / seg["area"] > 0.5:
      continue
    stats[seg["category_id"]].fp += 1


def _vpq_video_stats(frames: Sequence[tuple[Mapping, Mapping, Mapping]], *, window: int,
                    video_id: Any = None):
  """One video's TP / FP / FN / IoU sums per category over its windows of `window` frames.

  Args:
    frames: per frame (pair counts {(gt id, pred id): pixels}, truth segments, predicted
      segments), as `_pair_counts` and `_frame_segments` make them.
    window: k, the window length in frames (stride 1; none when the video is shorter).
    video_id: for error messages.

  Returns:
    `pq.new_stats()` filled.
  """
  stats = pq.new_stats()
  for start in range(len(frames) - window + 1):
    pairs, gt, pred = collections.Counter(), {}, {}
    for frame_pairs, frame_gt, frame_pred in frames[start:start + window]:
      pairs.update(frame_pairs)
      for tubes, segments in ((gt, frame_gt), (pred, frame_pred)):
        for sid, seg in segments.items():
          if sid in tubes:
            tubes[sid]["area"] += seg["area"]
          else:
            tubes[sid] = dict(seg)
    pairs = {key: pairs[key] for key in sorted(pairs)}
    _window_stats(stats, pairs, gt, pred,
                  f"video {video_id}, frames {start}..{start + window - 1}")
  return stats


# ------------------------------------------------------------------------------------------
# STQ: deeplab2's sums of one video
# ------------------------------------------------------------------------------------------


def _stq_labels(segments_per_frame: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict]:
  """Per frame {segment id: (class, instance)}: instance = order of first listing in the
  video (eval_stq_vspw.py), class = the frame's last listing (its map writes in order)."""
  instance = {}
  for segments in segments_per_frame:
    for s in segments:
      instance.setdefault(int(s["id"]), len(instance))
  return [{int(s["id"]): (int(s["category_id"]), instance[int(s["id"])]) for s in segments}
          for segments in segments_per_frame]


class _STQVideo:
  """deeplab2 STQuality's per-sequence state: class confusion, tube and intersection areas."""

  def __init__(self, num_classes: int, things: frozenset[int]):
    self.num_classes = num_classes
    self.things = things
    self.confusion = np.zeros((num_classes + 1, num_classes + 1), np.int64)  # [gt, pred]
    self.gt_areas: dict[int, int] = {}  # (class << 16) + instance -> pixels, first seen first
    self.pred_areas: dict[int, int] = {}
    self.intersections: dict[tuple[int, int], int] = {}

  def _row(self, category: int) -> int:
    return self.num_classes if category == STQ_IGNORE else category

  def update(self, pairs: Mapping, gt_labels: Mapping, pred_labels: Mapping):
    void = (STQ_IGNORE, STQ_IGNORE)
    gt_frame, pred_frame = collections.Counter(), collections.Counter()
    for (g, p), n in pairs.items():
      gt_class, gt_instance = gt_labels.get(g, void)
      pred_class, pred_instance = pred_labels.get(p, void)
      self.confusion[self._row(gt_class), self._row(pred_class)] += n
      gt_thing = gt_class in self.things
      crowd = gt_thing and gt_instance == 0
      in_gt = gt_thing and not crowd
      in_pred = pred_class in self.things and not crowd
      gt_key = (gt_class << STQ_BIT_SHIFT) + gt_instance
      pred_key = (pred_class << STQ_BIT_SHIFT) + pred_instance
      if in_gt:
        gt_frame[gt_key] += n
      if in_pred:
        pred_frame[pred_key] += n
      if in_gt and in_pred:
        self.intersections[gt_key, pred_key] = self.intersections.get((gt_key, pred_key), 0) + n
    for areas, frame in ((self.gt_areas, gt_frame), (self.pred_areas, pred_frame)):
      for key in sorted(frame):  # np.unique's order, as deeplab2's _update_dict_stats
        areas[key] = areas.get(key, 0) + frame[key]

  def association(self) -> float:
    """deeplab2's per-sequence AQ sum: sum_g 1/|g| sum_p TPA * IoU(g, p)."""
    rank = {key: i for i, key in enumerate(self.pred_areas)}
    by_gt = collections.defaultdict(list)
    for (g, p), tpa in self.intersections.items():
      by_gt[g].append((rank[p], p, tpa))
    outer = 0.0
    for g, gt_size in self.gt_areas.items():
      inner = 0.0
      for _, p, tpa in sorted(by_gt[g]):  # deeplab2 walks the predictions in their order
        fpa, fna = self.pred_areas[p] - tpa, gt_size - tpa
        inner += tpa * (tpa / (tpa + fpa + fna))
      outer += 1.0 / gt_size * inner
    return outer


# ------------------------------------------------------------------------------------------
# Streaming evaluator
# ------------------------------------------------------------------------------------------


def _percent(value) -> float | None:
  value = float(value)
  return 100 * value if np.isfinite(value) else None


class VideoPanopticEvaluator:
  """VIPSeg's VPQ and STQ over videos (see the module docstring).

  Args:
    categories: COCO panoptic categories, dicts with "id" and "isthing"; ids in [0, 255).
    category_ids: optional map from the contiguous class of predicted segments to the
      category id (`category_ids[k]`), as `pq.PanopticEvaluator`; truth uses category ids.
    windows: the window lengths k of VPQ (VIPSeg's (1, 2, 4, 6, 8)).

  `update(...)` per video, `merge` to combine processes, `compute()` -> the report.
  """

  def __init__(self, *, categories: Sequence[Mapping[str, Any]],
               category_ids: Sequence[int] | None = None,
               windows: Sequence[int] = WINDOWS):
    self.categories = pq.categories_dict(categories)
    bad = [c for c in self.categories if not 0 <= c < STQ_IGNORE]
    if bad:
      raise ValueError(f"category ids {bad} lie outside [0, {STQ_IGNORE}): STQ encodes void "
                       f"as class {STQ_IGNORE}")
    self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
    self.windows = tuple(int(k) for k in windows)
    if not self.windows or min(self.windows) < 1:
      raise ValueError(f"windows must be positive frame counts, got {windows}")
    self.num_classes = max(self.categories) + 1 if self.categories else 0
    self.things = frozenset(c for c, info in self.categories.items() if info["isthing"])
    self.video_ids: list[Any] = []
    self.vpq_stats: list[list] = []  # per video, per window: pq.new_stats()
    self.association: list[float] = []  # per video: deeplab2's AQ sum
    self.num_tubes: list[int] = []  # per video: ground-truth thing tubes
    self.confusion = np.zeros((self.num_classes + 1,) * 2, np.int64)  # [gt, pred], void last

  def update(self, *, video_id: Any, gt_ids: Iterable[np.ndarray],
             gt_segments: Sequence[Sequence[Mapping[str, Any]]],
             pred_ids: Iterable[np.ndarray],
             pred_segments: Sequence[Sequence[Mapping[str, Any]]]):
    """Adds one video.

    Args:
      video_id: its name (each video once).
      gt_ids: T int [H, W] ground-truth id maps (a [T, H, W] array, or any iterable: the CLI
        reads the PNGs as they are needed), 0 = void.
      gt_segments: T lists of {"id", "category_id", "iscrowd", and optionally "area"}.
      pred_ids: T int [H, W] predicted id maps, 0 = void.
      pred_segments: T lists of {"id", "category_id"} (mapped through `category_ids`).
    """
    if video_id in self.video_ids:
      raise ValueError(f"video {video_id} was added twice")
    num_frames = len(gt_segments)
    if len(pred_segments) != num_frames:
      raise ValueError(f"video {video_id}: {num_frames} ground-truth frames but "
                       f"{len(pred_segments)} predicted ones")
    if self.category_ids is not None:
      pred_segments = [[dict(s, category_id=self.category_ids[s["category_id"]]) for s in f]
                       for f in pred_segments]
    gt_labels, pred_labels = _stq_labels(gt_segments), _stq_labels(pred_segments)
    stq = _STQVideo(self.num_classes, self.things)
    frames = []
    ids = zip(gt_ids, pred_ids)
    for t in range(num_frames):
      where = f"video {video_id}, frame {t}"
      try:
        gt_map, pred_map = next(ids)
      except StopIteration:
        raise ValueError(f"video {video_id}: {num_frames} frames of segments_info but only "
                         f"{t} id maps") from None
      pairs = _pair_counts(gt_map, pred_map, where)
      frames.append((pairs, *_frame_segments(pairs, gt_segments[t], pred_segments[t],
                                             self.categories, where)))
      stq.update(pairs, gt_labels[t], pred_labels[t])
    if next(ids, None) is not None:
      raise ValueError(f"video {video_id}: more id maps than the {num_frames} frames of "
                       "segments_info")
    self.video_ids.append(video_id)
    self.vpq_stats.append([_vpq_video_stats(frames, window=k, video_id=video_id)
                           for k in self.windows])
    self.association.append(stq.association())
    self.num_tubes.append(len(stq.gt_areas))
    self.confusion += stq.confusion

  def merge(self, other: VideoPanopticEvaluator):
    if other.windows != self.windows or other.categories != self.categories:
      raise ValueError("merge: the evaluators have different windows or categories")
    for video_id in other.video_ids:
      if video_id in self.video_ids:
        raise ValueError(f"video {video_id} was evaluated by two processes")
    self.video_ids += other.video_ids
    self.vpq_stats += other.vpq_stats
    self.association += other.association
    self.num_tubes += other.num_tubes
    self.confusion += other.confusion

  def vpq_results(self) -> dict[int, dict[str, Any]]:
    """Per window k: panopticapi's results ({"All", "Things", "Stuff", "per_class"},
    fractions, NaN where a group has no category)."""
    out = {}
    for i, k in enumerate(self.windows):
      total = pq.new_stats()
      for video_stats in self.vpq_stats:  # in video order, as the reference's imap
        pq.add_stats(total, video_stats[i])
      out[k] = pq.pq_results(total, self.categories)
    return out

  def stq_results(self) -> dict[str, float]:
    """deeplab2's STQ, AQ and IoU (= SQ), fractions (NaN where no class occurs)."""
    aq = np.sum(self.association) / np.maximum(np.sum(self.num_tubes), _EPSILON)
    confusion = self.confusion.copy()
    confusion[self.num_classes, :] = 0  # ground-truth void
    intersections = confusion.diagonal()
    unions = confusion.sum(axis=0) + confusion.sum(axis=1) - intersections
    num_classes = np.count_nonzero(unions)
    ious = intersections.astype(np.double) / np.maximum(unions, _EPSILON).astype(np.double)
    sq = np.sum(ious) / num_classes if num_classes else float("nan")
    return {"STQ": float(np.sqrt(aq * sq)), "AQ": float(aq), "SQ": float(sq)}

  def compute(self) -> dict[str, Any]:
    """{"video_panoptic_seg": {"VPQ", "VPQ_th", "VPQ_st", "STQ", "AQ", "SQ"}, "vpq_windows":
    {"k": {"VPQ", "VPQ_th", "VPQ_st", "n", "n_th", "n_st"}}, "num_videos"}: percent, None
    where undefined."""
    windows = {}
    for k, r in self.vpq_results().items():
      windows[str(k)] = {
          "VPQ": _percent(r["All"]["pq"]), "VPQ_th": _percent(r["Things"]["pq"]),
          "VPQ_st": _percent(r["Stuff"]["pq"]),
          "n": r["All"]["n"], "n_th": r["Things"]["n"], "n_st": r["Stuff"]["n"]}
    summary = {}
    for key in ("VPQ", "VPQ_th", "VPQ_st"):
      values = [w[key] for w in windows.values()]
      summary[key] = None if None in values else sum(values) / len(values)
    summary.update({k: _percent(v) for k, v in self.stq_results().items()})
    return {"video_panoptic_seg": summary, "vpq_windows": windows,
            "num_videos": len(self.video_ids)}


# ------------------------------------------------------------------------------------------
# Files on disk and CLI
# ------------------------------------------------------------------------------------------


def _by_video(annotations: Sequence[Mapping[str, Any]], name: str) -> dict[Any, list]:
  out = {}
  for a in annotations:
    if "video_id" not in a or not isinstance(a.get("annotations"), list):
      raise ValueError(f"{name}: each entry of 'annotations' needs 'video_id' and a list "
                       "'annotations' (one per frame)")
    out[a["video_id"]] = a["annotations"]
  return out


def _stem(file_name: str) -> str:
  return os.path.splitext(os.path.basename(file_name))[0]


def evaluate_folders(*, gt_json: str, gt_folder: str, pred_json: str, pred_folder: str,
                     windows: Sequence[int] = WINDOWS) -> dict[str, Any]:
  """The report of `VideoPanopticEvaluator.compute` for VIPSeg-layout files on disk."""
  for folder in (gt_folder, pred_folder):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"panoptic PNG folder {folder} does not exist")
  with open(gt_json) as f:
    gt = json.load(f)
  with open(pred_json) as f:
    pred = json.load(f)
  for name, data, keys in ((gt_json, gt, ("videos", "annotations", "categories")),
                           (pred_json, pred, ("annotations",))):
    if not isinstance(data, dict) or any(k not in data for k in keys):
      raise ValueError(f"{name}: expected a JSON object with {', '.join(keys)}")
  gt_anns, pred_anns = _by_video(gt["annotations"], gt_json), _by_video(pred["annotations"],
                                                                       pred_json)
  evaluator = VideoPanopticEvaluator(categories=gt["categories"], windows=windows)
  for video in gt["videos"]:
    video_id = video["video_id"]
    names = [image["file_name"] for image in video["images"]]
    if video_id not in gt_anns:
      raise ValueError(f"{gt_json}: video {video_id} has no entry in 'annotations'")
    if video_id not in pred_anns:
      raise ValueError(f"{pred_json} has no prediction for video {video_id}")
    gt_frames, pred_frames = gt_anns[video_id], pred_anns[video_id]
    if not len(names) == len(gt_frames) == len(pred_frames):
      raise ValueError(f"video {video_id}: {len(names)} images, {len(gt_frames)} ground-truth "
                       f"and {len(pred_frames)} predicted annotations; they pair up by position")
    for t, (name, p) in enumerate(zip(names, pred_frames)):
      if "file_name" in p and _stem(p["file_name"]) != _stem(name):
        raise ValueError(f"{pred_json}: video {video_id}, frame {t} is {p['file_name']} but "
                         f"the ground truth's frame {t} is {name}")
    evaluator.update(
        video_id=video_id,
        gt_ids=(read_panoptic_png(os.path.join(gt_folder, video_id, n)) for n in names),
        gt_segments=[a["segments_info"] for a in gt_frames],
        pred_ids=(read_panoptic_png(os.path.join(pred_folder, video_id, n)) for n in names),
        pred_segments=[a["segments_info"] for a in pred_frames])
  return evaluator.compute()


def format_report(report: Mapping[str, Any]) -> str:
  """The per-window VPQ table and the summary line (percent, "-" where undefined)."""
  fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"  # pylint: disable=unnecessary-lambda-assignment
  keys = ("VPQ", "VPQ_th", "VPQ_st")
  lines = [f"{'k':>6}" + "".join(f"{k:>8}" for k in keys)]
  for k, w in report["vpq_windows"].items():
    lines.append(f"{k:>6}" + "".join(fmt(w[key]) for key in keys))
  summary = report["video_panoptic_seg"]
  lines.append(f"{'mean':>6}" + "".join(fmt(summary[key]) for key in keys))
  lines.append("".join(f"{k:>8}" for k in ("STQ", "AQ", "SQ")))
  lines.append("".join(fmt(summary[k]) for k in ("STQ", "AQ", "SQ")))
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m m2f_jax.evaluation.video_panoptic",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gt-json", required=True, help="panoptic_gt_VIPSeg_{split}.json")
  parser.add_argument("--gt-folder", required=True,
                      help="ground-truth PNGs, <video_id>/<file_name> (panomasksRGB)")
  parser.add_argument("--pred-json", required=True, help="the submission's pred.json")
  parser.add_argument("--pred-folder", required=True,
                      help="predicted PNGs, <video_id>/<file_name> (pan_pred)")
  parser.add_argument("--output", help="write the report here (strict JSON)")
  args = parser.parse_args(argv)
  try:
    report = evaluate_folders(gt_json=args.gt_json, gt_folder=args.gt_folder,
                              pred_json=args.pred_json, pred_folder=args.pred_folder)
  except (OSError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_report(report))
  if args.output:
    write_text_atomic(args.output, json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
