"""The COCO panoptic PNG encoding of segment ids: id = R + 256 G + 256^2 B.

COCO panoptic (and VIPSeg, and Cityscapes' panoptic export, and this project's predictions
and exports) store a panoptic map as an RGB PNG in this encoding; segment id 0 is void. The
data builders, the pipeline, the exporters, `predict` and the PQ CLI all read and write it
through these functions.
"""

from __future__ import annotations

import os

import numpy as np
import PIL.Image

OFFSET = 256 * 256 * 256  # ids lie in [0, OFFSET)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
  """`[H, W, 3]` uint8 COCO panoptic PNG colours -> int64 `[H, W]` ids (R + 256 G + 256^2 B)."""
  rgb = np.asarray(rgb).astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
  """int `[H, W]` ids in [0, 256^3) -> `[H, W, 3]` uint8 colours (the inverse of `rgb2id`)."""
  ids = np.asarray(ids).astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
    raise ValueError(f"id2rgb: ids must lie in [0, 256^3), got [{ids.min()}, {ids.max()}].")
  return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
  """An RGB-encoded panoptic PNG on disk -> int64 `[H, W]` segment ids."""
  with PIL.Image.open(path) as image:
    return rgb2id(np.asarray(image.convert("RGB")))


def write_panoptic_png(path: str | os.PathLike, ids: np.ndarray) -> None:
  """Writes int `[H, W]` segment ids to `path` as an RGB-encoded panoptic PNG."""
  PIL.Image.fromarray(id2rgb(ids)).save(path, format="PNG")
