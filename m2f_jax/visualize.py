"""Overlays of segmentation results on images, with class names on the segments."""

from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw


def segment_colors(num: int, seed: int = 0) -> np.ndarray:
  """`num` distinct bright colours, uint8 [num, 3]."""
  rng = np.random.default_rng(seed)
  hues = (np.arange(num) * 0.618033988749895 + rng.random()) % 1.0
  hsv = np.stack([hues, np.full(num, 0.75), np.full(num, 0.95)], -1)
  rgb = np.array(PIL.Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB"))
  return rgb[0]


def overlay(image: np.ndarray, segment_ids: np.ndarray, labels: dict[int, str], *,
            alpha: float = 0.55) -> PIL.Image.Image:
  """Blends a colour per segment over `image` and writes each label at its segment's centre.

  Args:
    image: uint8 [H, W, 3].
    segment_ids: int [H, W]; 0 (or negative) = nothing.
    labels: segment id -> text.
    alpha: opacity of the colours.
  """
  ids = [int(i) for i in np.unique(segment_ids) if i > 0]
  colors = segment_colors(max(ids, default=0) + 1)
  out = image.astype(np.float32).copy()
  for i in ids:
    m = segment_ids == i
    out[m] = (1 - alpha) * out[m] + alpha * colors[i]
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    out[edge] = 255
  img = PIL.Image.fromarray(out.clip(0, 255).astype(np.uint8))
  draw = PIL.ImageDraw.Draw(img)
  for i in ids:
    ys, xs = np.nonzero(segment_ids == i)
    text = labels.get(i, "")
    if text:
      x, y = int(xs.mean()), int(ys.mean())
      draw.text((x + 1, y + 1), text, fill=(0, 0, 0), anchor="mm")
      draw.text((x, y), text, fill=(255, 255, 255), anchor="mm")
  return img


def panoptic_overlay(image: np.ndarray, panoptic_seg, class_names: Sequence[str]):
  ids, segments = panoptic_seg
  return overlay(image, ids, {s["id"]: class_names[s["category_id"]] for s in segments})


def semantic_overlay(image: np.ndarray, sem_seg: np.ndarray, class_names: Sequence[str],
                     ignore_label: int = 255):
  ids = np.where(sem_seg == ignore_label, 0, sem_seg.astype(np.int64) + 1)
  return overlay(image, ids, {k + 1: n for k, n in enumerate(class_names)})


def instance_overlay(image: np.ndarray, instances: dict, class_names: Sequence[str],
                     score_threshold: float = 0.5):
  ids = np.zeros(image.shape[:2], np.int64)
  labels = {}
  keep = [i for i, s in enumerate(instances["scores"]) if s >= score_threshold]
  for n, i in enumerate(sorted(keep, key=lambda i: instances["scores"][i])):  # best on top
    ids[instances["masks"][i]] = n + 1
    labels[n + 1] = f"{class_names[instances['classes'][i]]} {instances['scores'][i]:.2f}"
  return overlay(image, ids, labels)


def result_overlay(image: np.ndarray, result: dict, class_names: Sequence[str]):
  """The overlay of one post-processed result: panoptic, else semantic, else instances."""
  if "panoptic_seg" in result:
    return panoptic_overlay(image, result["panoptic_seg"], class_names)
  if "sem_seg" in result:
    return semantic_overlay(image, result["sem_seg"], class_names)
  return instance_overlay(image, result["instances"], class_names)
