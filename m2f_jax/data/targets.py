"""Records -> training targets (one format for semantic, instance and panoptic training).

Follows the official Mask2Former dataset mappers (`mask2former/data/dataset_mappers/`):
semantic targets are one binary mask per class present in the semantic map (ignore pixels
belong to none, as in `MaskFormerSemanticDatasetMapper`); panoptic targets are one mask per
non-crowd segment, things and stuff, also one left with no pixel (e.g. cropped away), as
`MaskFormerPanopticDatasetMapper`; instance targets one per non-crowd thing instance with at
least one pixel (`COCOInstanceNewBaselineDatasetMapper`'s `filter_empty_instances`).

Targets are padded to a fixed number M (`num_targets`), in one of two forms:

- dense (`make_targets`):
    "labels": int32 [M] class index in [0, K) (0 on padding)
    "masks":  uint8 [M, H, W] binary masks (zeros on padding)
    "valid":  bool [M]
- compact (`make_compact_targets`), what the input pipeline ships to the device by default:
    "labels", "valid" as above, and
    "segments": uint8 (M < 256) or uint16 [L, H, W]: layer l holds, at each pixel, 1 + the
      index of a target covering it (0: none). Panoptic and semantic targets never overlap:
      L = 1. Instance masks may overlap: each pixel lists up to L of its targets, one per
      layer. `m2f_jax.device_batch.dense_masks` rebuilds the [M, H, W] masks on the device,
      equal to the dense form whenever no pixel has more than L targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np

TASKS = ("semantic", "instance", "panoptic")


def normalize_image(image: np.ndarray, *, pixel_mean: Sequence[float],
                    pixel_std: Sequence[float]) -> np.ndarray:
  """uint8 [..., 3] RGB on the 0..255 scale -> float32 (image - mean) / std."""
  mean = np.asarray(pixel_mean, np.float32)
  std = np.asarray(pixel_std, np.float32)
  return (np.asarray(image, np.float32) - mean) / std


def semantic_map(record: Mapping[str, Any], *, ignore_label: int = 255) -> np.ndarray:
  """The record's semantic map, uint8 [H, W], or the class of each panoptic segment.

  Panoptic void pixels (id 0, or ids missing from segments_info) get `ignore_label`; crowd
  segments keep their class, as Detectron2's semantic maps of COCO panoptic do.
  """
  if "semantic" in record:
    return record["semantic"]
  if "panoptic" not in record:
    raise ValueError(f"record {record.get('image_id')} has neither 'semantic' nor 'panoptic' "
                     "annotations: a semantic target needs one of them")
  panoptic, info = record["panoptic"], record["segments_info"]
  ids = np.asarray(info["id"], np.int64)
  lut = np.full(int(max(ids.max(initial=0), panoptic.max(initial=0))) + 1, ignore_label,
                np.uint8)
  lut[ids] = info["category_id"]
  return lut[panoptic]


def _semantic_targets(record, ignore_label):
  """(labels int32 [N], index int32 [H, W]): one target per class present; index = the
  target of each pixel, -1 where none."""
  semantic = semantic_map(record, ignore_label=ignore_label)  # [H, W]
  classes, index = np.unique(semantic, return_inverse=True)
  index = index.reshape(semantic.shape).astype(np.int32)
  present = classes != ignore_label
  renumber = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
  return classes[present].astype(np.int32), renumber[index]


def _panoptic_targets(record):
  """(labels int32 [N], index int32 [H, W]): one target per non-crowd segment of
  segments_info (also one with no pixel); index as `_semantic_targets`."""
  panoptic, info = record["panoptic"], record["segments_info"]
  keep = ~np.asarray(info["iscrowd"], bool)
  ids = np.asarray(info["id"], np.int64)[keep]
  order = np.argsort(ids, kind="stable")
  pos = np.clip(np.searchsorted(ids[order], panoptic), 0, max(len(ids) - 1, 0))
  found = ids[order][pos] == panoptic if len(ids) else np.zeros(panoptic.shape, bool)
  index = np.where(found, order[pos] if len(ids) else 0, -1).astype(np.int32)
  return np.asarray(info["category_id"], np.int32)[keep], index


def instance_annotations(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The record's instances, or the thing segments of its panoptic map (crowd kept).

  Returns {"masks": uint8 [N, H, W], "category_id": int32 [N], "iscrowd": bool [N]}.
  """
  if "instances" in record:
    return record["instances"]
  panoptic, info = record["panoptic"], record["segments_info"]
  things = np.asarray(info["isthing"], bool)
  ids = np.asarray(info["id"])[things]
  return {"masks": (panoptic[None] == ids[:, None, None]).astype(np.uint8),  # [N, H, W]
          "category_id": np.asarray(info["category_id"], np.int32)[things],
          "iscrowd": np.asarray(info["iscrowd"], bool)[things]}


def _instance_targets(record):
  instances = instance_annotations(record)
  keep = ~np.asarray(instances["iscrowd"], bool)
  return (np.asarray(instances["category_id"], np.int32)[keep],
          np.asarray(instances["masks"], bool)[keep])


def _selected_targets(record: Mapping[str, Any], *, task: str, num_targets: int,
                      ignore_label: int):
  """The targets kept (at most `num_targets`, N): (labels int32 [N], index, masks) where
  panoptic and semantic targets (disjoint) come as `index` int32 [H, W] (the target of each
  pixel, -1: none) and `masks` None, instance targets as `masks` bool [N, H, W] and `index`
  None."""
  height, width = record["image"].shape[:2]
  index = masks = None
  if task in ("semantic", "panoptic"):
    labels, index = (_semantic_targets(record, ignore_label) if task == "semantic"
                     else _panoptic_targets(record))
    shape = index.shape
    areas = np.bincount(index.ravel() + 1, minlength=len(labels) + 1)[1:]
  elif task == "instance":
    labels, masks = _instance_targets(record)
    shape = masks.shape[1:]
    areas = masks.reshape(len(masks), -1).sum(axis=1)
  else:
    raise ValueError(f"unknown task {task!r}: use one of {TASKS}")
  if shape != (height, width):
    raise ValueError(f"record {record.get('image_id')}: {task} masks of shape "
                     f"{shape} do not match the image {(height, width)}")
  # Panoptic: every non-crowd segment is a target, also one that augmentation cropped away
  # (the official panoptic mappers build targets from segments_info: an empty mask still
  # counts in num_masks and is matched). Instances: empty ones are dropped, as the official
  # instance mapper's `filter_empty_instances`. Semantic targets are never empty.
  keep = np.arange(len(labels)) if task == "panoptic" else np.flatnonzero(areas > 0)
  if len(keep) > num_targets:
    logging.warning("record %s has %d %s targets; keeping the %d largest (num_targets), "
                    "dropping %d: raise data.num_targets to keep them",
                    record.get("image_id"), len(keep), task, num_targets,
                    len(keep) - num_targets)
    keep = np.sort(keep[np.argsort(-areas[keep], kind="stable")[:num_targets]])
  if masks is not None:
    return labels[keep].astype(np.int32), None, masks[keep]
  renumber = np.full(len(labels) + 1, -1, np.int32)  # old index + 1 -> new index
  renumber[keep + 1] = np.arange(len(keep), dtype=np.int32)
  return labels[keep].astype(np.int32), renumber[index + 1], None


def _padded_labels(labels: np.ndarray, num_targets: int) -> dict[str, np.ndarray]:
  out = np.zeros((num_targets,), np.int32)  # [M]
  out[:len(labels)] = labels
  return {"labels": out, "valid": np.arange(num_targets) < len(labels)}


def make_targets(record: Mapping[str, Any], *, task: str, num_targets: int,
                 ignore_label: int = 255) -> dict[str, np.ndarray]:
  """Dense targets of one record for `task`, padded to `num_targets` (M).

  Returns {"labels": int32 [M], "masks": uint8 [M, H, W], "valid": bool [M]}. As the official
  mappers: panoptic targets are all non-crowd segments of segments_info, empty ones (cropped
  away) included; instance targets with no pixel are dropped. A record with more than M
  targets keeps the M largest (and logs how many it drops): raise `num_targets` if that
  happens often.
  """
  labels, index, masks = _selected_targets(record, task=task, num_targets=num_targets,
                                           ignore_label=ignore_label)
  if masks is None:
    masks = index[None] == np.arange(len(labels), dtype=np.int32)[:, None, None]
  out_masks = np.zeros((num_targets, *masks.shape[1:]), np.uint8)  # [M, H, W]
  out_masks[:len(masks)] = masks
  return {**_padded_labels(labels, num_targets), "masks": out_masks}


def segment_dtype(num_targets: int) -> np.dtype:
  """The smallest unsigned type holding 1 + every target index (0 = no target)."""
  return np.dtype(np.uint8 if num_targets < 2**8 else np.uint16)


def make_compact_targets(record: Mapping[str, Any], *, task: str, num_targets: int,
                         ignore_label: int = 255, layers: int = 1) -> dict[str, np.ndarray]:
  """Compact targets (the module docstring): the same targets as `make_targets`.

  Returns {"labels": int32 [M], "valid": bool [M], "segments": uint8|uint16 [L, H, W]}
  with L = 1 for panoptic and semantic targets, `layers` for instances. A pixel covered by more than `layers` targets (possible for instances only) keeps the
  first `layers` of them (logged with the number of pixels that lose a target: raise
  data.target_layers to keep them).
  """
  if num_targets >= 2**16:
    raise ValueError(f"num_targets={num_targets}: compact targets hold at most 65535")
  labels, index, masks = _selected_targets(record, task=task, num_targets=num_targets,
                                           ignore_label=ignore_label)
  dtype = segment_dtype(num_targets)
  if masks is None:  # disjoint targets: one layer, whatever `layers` says
    return {**_padded_labels(labels, num_targets), "segments": (index + 1).astype(dtype)[None]}
  segments = np.zeros((layers, *masks.shape[1:]), dtype)  # [L, H, W]
  lost = 0
  for j, mask in enumerate(masks):
    remaining = mask
    for layer in segments:  # each pixel of the target goes to its first free layer
      free = remaining & (layer == 0)
      layer[free] = j + 1
      remaining = remaining & ~free
      if not remaining.any():
        break
    lost += int(remaining.sum())
  if lost:
    logging.warning("record %s: %d pixels are covered by more than %d %s targets and lose "
                    "one: raise data.target_layers to keep them", record.get("image_id"),
                    lost, layers, task)
  return {**_padded_labels(labels, num_targets), "segments": segments}
