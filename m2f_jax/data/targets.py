"""Records -> training targets (one format for semantic, instance and panoptic training).

Follows the official Mask2Former dataset mappers (`mask2former/data/dataset_mappers/`):
semantic targets are one binary mask per class present in the semantic map (ignore pixels
belong to none, as in `MaskFormerSemanticDatasetMapper`); panoptic targets are one mask per
non-crowd segment, things and stuff (`MaskFormerPanopticDatasetMapper`); instance targets one
per non-crowd thing instance (`COCOInstanceNewBaselineDatasetMapper`). Unlike the official
panoptic mapper, segments left with no pixel (e.g. cropped away) are dropped, as the instance
mapper does.

Targets are padded to a fixed number M (`num_targets`):
  "labels": int32 [M] class index in [0, K) (0 on padding)
  "masks":  uint8 [M, H, W] binary masks (zeros on padding)
  "valid":  bool [M]
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
  semantic = semantic_map(record, ignore_label=ignore_label)  # [H, W]
  classes = np.unique(semantic)
  classes = classes[classes != ignore_label]
  return classes.astype(np.int32), semantic[None] == classes[:, None, None]


def _panoptic_targets(record, things_only):
  panoptic, info = record["panoptic"], record["segments_info"]
  keep = ~np.asarray(info["iscrowd"], bool)
  if things_only:
    keep &= np.asarray(info["isthing"], bool)
  ids = np.asarray(info["id"])[keep]
  return (np.asarray(info["category_id"], np.int32)[keep],
          panoptic[None] == ids[:, None, None])


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


def make_targets(record: Mapping[str, Any], *, task: str, num_targets: int,
                 ignore_label: int = 255) -> dict[str, np.ndarray]:
  """Targets of one record for `task`, padded to `num_targets` (M).

  Returns {"labels": int32 [M], "masks": uint8 [M, H, W], "valid": bool [M]}. As the official
  mappers: panoptic targets are all non-crowd segments of segments_info, empty ones (cropped
  away) included; instance targets with no pixel are dropped. A record with more than M
  targets keeps the M largest (and logs how many it drops): raise `num_targets` if that
  happens often.
  """
  if task == "semantic":
    labels, masks = _semantic_targets(record, ignore_label)
  elif task == "panoptic":
    labels, masks = _panoptic_targets(record, things_only=False)
  elif task == "instance":
    labels, masks = _instance_targets(record)
  else:
    raise ValueError(f"unknown task {task!r}: use one of {TASKS}")
  height, width = record["image"].shape[:2]
  if masks.shape[1:] != (height, width):
    raise ValueError(f"record {record.get('image_id')}: {task} masks of shape "
                     f"{masks.shape[1:]} do not match the image {(height, width)}")
  areas = masks.reshape(len(masks), -1).sum(axis=1)
  # Panoptic: every non-crowd segment is a target, also one that augmentation cropped away
  # (the official panoptic mappers build targets from segments_info: an empty mask still
  # counts in num_masks and is matched). Instances: empty ones are dropped, as the official
  # instance mapper's `filter_empty_instances`. Semantic targets are never empty.
  keep = np.arange(len(masks)) if task == "panoptic" else np.flatnonzero(areas > 0)
  if len(keep) > num_targets:
    logging.warning("record %s has %d %s targets; keeping the %d largest (num_targets), "
                    "dropping %d: raise data.num_targets to keep them",
                    record.get("image_id"), len(keep), task, num_targets,
                    len(keep) - num_targets)
    keep = np.sort(keep[np.argsort(-areas[keep], kind="stable")[:num_targets]])
  n = len(keep)
  out_labels = np.zeros((num_targets,), np.int32)  # [M]
  out_masks = np.zeros((num_targets, height, width), np.uint8)  # [M, H, W]
  out_labels[:n] = labels[keep]
  out_masks[:n] = masks[keep]
  return {"labels": out_labels, "masks": out_masks, "valid": np.arange(num_targets) < n}
