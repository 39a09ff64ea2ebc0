"""Training augmentations of the official Mask2Former configs, applied to records.

Every transform moves all the [H, W] fields of a record together with the image (record
format: `m2f_jax/data/__init__.py`, plus an optional bool "padding_mask" [H, W], True on
image pixels): the image is resampled bilinearly (PIL, as Detectron2's `ResizeTransform` on
uint8 images), label maps with PIL's nearest neighbour (as Detectron2 resizes panoptic PNGs);
padding is void: panoptic 0, semantic `ignore_label`, instance masks 0, padding_mask False.

Recipes (`augment(..., augmentation=...)`), following the official dataset mappers
(`mask2former/data/dataset_mappers/`) and the Detectron2 augmentations they use:

  "synthetic": random flip, optional scale jitter of the fitted image, random crop / pad to
      `image_size` (image padded with 0; the pipeline's original behaviour).
  "coco_lsj": COCO large-scale jitter of `coco_panoptic_new_baseline_dataset_mapper.py` and
      `coco_instance_new_baseline_dataset_mapper.py`: `RandomFlip`, `ResizeScale(0.1, 2.0,
      1024, 1024)`, `FixedSizeCrop(1024)`, which pads the bottom / right with 128 (image) and
      void (labels).
  "ade20k_semantic", "cityscapes": `MaskFormerSemanticDatasetMapper` /
      `MaskFormerPanopticDatasetMapper` with the ADE20K / Cityscapes configs:
      `ResizeShortestEdge(min_size_train, max_size_train, "choice")`,
      `RandomCrop_CategoryAreaConstraint("absolute", image_size, single_category_max_area,
      ignore_label)`, `ColorAugSSDTransform`, `RandomFlip`, then padding to the crop size
      (image 128, labels void) as the mappers' `SIZE_DIVISIBILITY` padding. By default
      `min_size_train = [int(x * 0.1 * S) for x in range(5, 21)]` and `max_size_train = 4 S`
      with S = max(image_size): ADE20K 512x512 -> 256..1024, 2048; ADE20K 640x640 -> 320..1280,
      2560; Cityscapes 512x1024 -> 512..2048, 4096, the values of the official configs. The
      official configs set single_category_max_area to 1.0 (a plain random crop).

Where the official code resizes then crops, `resize_crop_pad` resamples only the cropped
window (PIL's `box`; up to 4x less work for LSJ's upscaled images): labels are exactly those
of resizing the whole map then cropping, the image too up to rounding ties of PIL's uint8
passes (a level or two on a few percent of the pixels of a noisy image).

Randomness comes from the `np.random.Generator` passed in (grain's `random_map`), so that a
pipeline is deterministic given its seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
from typing import Any, Callable

import cv2
import numpy as np
import PIL.Image

from m2f_jax.data import targets as targets_lib
# The size rules of the test-time resize live with the evaluation padding (no OpenCV there).
from m2f_jax.data.eval_sizes import eval_resize_size
from m2f_jax.data.eval_sizes import resize_shortest_edge_size

# Image padding (uint8 RGB) of Detectron2's FixedSizeCrop and the semantic / panoptic mappers.
OFFICIAL_IMAGE_PAD_VALUE = 128
LSJ_SCALE_RANGE = (0.1, 2.0)

# ------------------------------------------------------------------------------------------
# Geometry on records
# ------------------------------------------------------------------------------------------


def map_fields(record: Mapping[str, Any], op: Callable[[np.ndarray, Any, bool], np.ndarray],
               *, ignore_label: int = 255, image_pad_value: int = 0) -> dict[str, Any]:
  """Applies `op(array [H, W, ...], pad_value, is_image)` to the image and every map."""
  out = dict(record)
  out["image"] = op(record["image"], image_pad_value, True)
  for key, pad in (("panoptic", 0), ("semantic", ignore_label), ("padding_mask", False)):
    if key in record:
      out[key] = op(record[key], pad, False)
  if "instances" in record:
    masks = np.moveaxis(record["instances"]["masks"], 0, -1)  # [H, W, N]
    out["instances"] = dict(record["instances"],
                            masks=np.ascontiguousarray(np.moveaxis(op(masks, 0, False), -1, 0)))
  return out


def hflip(record: Mapping[str, Any], *, ignore_label: int = 255) -> dict[str, Any]:
  """Mirror image of every field (views, no copy)."""
  return map_fields(record, lambda a, pad, is_image: a[:, ::-1], ignore_label=ignore_label)


def hflip_region(record: Mapping[str, Any], height: int, width: int, *,
                 ignore_label: int = 255) -> dict[str, Any]:
  """Mirrors the top-left [height, width] region of every field, the rest (padding) stays."""
  def op(a, pad, is_image):
    del pad, is_image
    a = a.copy()
    a[:height, :width] = a[:height, :width][:, ::-1]
    return a
  return map_fields(record, op, ignore_label=ignore_label)


@functools.lru_cache(maxsize=4096)
def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index of each output pixel of PIL's NEAREST resize along one axis, int [out]."""
  ramp = np.arange(in_size, dtype=np.int32)[None]  # [1, in]
  indices = np.asarray(PIL.Image.fromarray(ramp, mode="I").resize(
      (out_size, 1), PIL.Image.Resampling.NEAREST))[0].astype(np.intp)
  indices.flags.writeable = False
  return indices


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, 3] -> [height, width, 3], PIL bilinear (Detectron2's ResizeTransform)."""
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(PIL.Image.fromarray(np.ascontiguousarray(image)).resize(
      (width, height), PIL.Image.Resampling.BILINEAR))


def _resize_crop_pad_op(array, pad, is_image, *, resized_size, window):
  in_h, in_w = array.shape[:2]
  new_h, new_w = resized_size
  top, left, height, width = window
  y0, y1 = max(top, 0), min(top + height, new_h)
  x0, x1 = max(left, 0), min(left + width, new_w)
  out = np.full((height, width) + array.shape[2:], pad, array.dtype)
  if y1 <= y0 or x1 <= x0:
    return out
  if (new_h, new_w) == (in_h, in_w):
    part = array[y0:y1, x0:x1]
  elif is_image:  # only the window of the resized image, in source coordinates
    box = (x0 * in_w / new_w, y0 * in_h / new_h, x1 * in_w / new_w, y1 * in_h / new_h)
    part = np.asarray(PIL.Image.fromarray(np.ascontiguousarray(array)).resize(
        (x1 - x0, y1 - y0), PIL.Image.Resampling.BILINEAR, box=box))
  else:
    ys = nearest_indices(in_h, new_h)[y0:y1]
    xs = nearest_indices(in_w, new_w)[x0:x1]
    part = array[ys[:, None], xs]
  out[y0 - top:y1 - top, x0 - left:x1 - left] = part
  return out


def resize_crop_pad(record: Mapping[str, Any], *, resized_size: tuple[int, int], top: int,
                    left: int, height: int, width: int, ignore_label: int = 255,
                    image_pad_value: int = 0) -> dict[str, Any]:
  """Resizes every field to `resized_size` (h, w) and takes the window [top, top + height) x
  [left, left + width) of it; what falls outside the resized image is padding."""
  op = functools.partial(_resize_crop_pad_op, resized_size=tuple(resized_size),
                         window=(top, left, height, width))
  return map_fields(record, op, ignore_label=ignore_label, image_pad_value=image_pad_value)


def resize(record: Mapping[str, Any], height: int, width: int, *,
           ignore_label: int = 255) -> dict[str, Any]:
  return resize_crop_pad(record, resized_size=(height, width), top=0, left=0, height=height,
                         width=width, ignore_label=ignore_label)


def crop_pad(record: Mapping[str, Any], top: int, left: int, height: int, width: int, *,
             ignore_label: int = 255, image_pad_value: int = 0) -> dict[str, Any]:
  """The window [top, top + height) x [left, left + width); outside the image is padding."""
  size = record["image"].shape[:2]
  return resize_crop_pad(record, resized_size=size, top=top, left=left, height=height,
                         width=width, ignore_label=ignore_label, image_pad_value=image_pad_value)


def _with_padding_mask(record: Mapping[str, Any]) -> dict[str, Any]:
  record = dict(record)
  record.setdefault("padding_mask", np.ones(record["image"].shape[:2], bool))
  return record


# ------------------------------------------------------------------------------------------
# Detectron2's size rules and colour augmentation
# ------------------------------------------------------------------------------------------


def resize_scale_size(height: int, width: int, *, scale: float,
                      target_size: tuple[int, int]) -> tuple[int, int]:
  """Detectron2's `ResizeScale`: fit into `scale * target_size`, keeping the aspect ratio."""
  factor = min(target_size[0] * scale / height, target_size[1] * scale / width)
  return max(1, int(np.round(height * factor))), max(1, int(np.round(width * factor)))


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator, *, brightness_delta: int = 32,
                  contrast_range: tuple[float, float] = (0.5, 1.5),
                  saturation_range: tuple[float, float] = (0.5, 1.5),
                  hue_delta: int = 18) -> np.ndarray:
  """Detectron2's `ColorAugSSDTransform` (PointRend project) on a uint8 RGB image [H, W, 3].

  Random brightness shift; then contrast, saturation, hue or saturation, hue, contrast, each
  applied with probability 1/2; saturation and hue act on OpenCV's uint8 HSV (hue in
  [0, 180)). The draws are the official ones, in its order, from `rng`.
  """
  def coin():
    return bool(rng.integers(2))

  def brightness(img):
    return _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta)) if coin() else img

  def contrast(img):
    return _convert(img, alpha=rng.uniform(*contrast_range)) if coin() else img

  def saturation(img):
    if not coin():
      return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

  def hue(img):
    if not coin():
      return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    shift = int(rng.integers(-hue_delta, hue_delta + 1))
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + shift) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

  image = brightness(np.ascontiguousarray(image, np.uint8))
  if coin():
    return hue(saturation(contrast(image)))
  return contrast(hue(saturation(image)))


# ------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------


def synthetic_augment(record: Mapping[str, Any], rng: np.random.Generator, *,
                      image_size: tuple[int, int], flip: bool = True,
                      scale_range: tuple[float, float] | None = None,
                      ignore_label: int = 255) -> dict[str, Any]:
  """Random flip, scale jitter and crop / pad to `image_size` (image padded with 0).

  The image is scaled to fit `image_size` times a factor drawn from `scale_range` (1 when
  None), then a random `image_size` window is cropped; the bottom / right rest is padding.
  """
  record = _with_padding_mask(record)
  height, width = record["image"].shape[:2]
  if flip and rng.random() < 0.5:
    record = hflip(record, ignore_label=ignore_label)
  out_h, out_w = image_size
  scale = rng.uniform(*scale_range) if scale_range is not None else 1.0
  factor = scale * min(out_h / height, out_w / width)
  new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
  top = int(rng.integers(0, max(new_h - out_h, 0) + 1))
  left = int(rng.integers(0, max(new_w - out_w, 0) + 1))
  return resize_crop_pad(record, resized_size=(new_h, new_w), top=top, left=left,
                         height=out_h, width=out_w, ignore_label=ignore_label)


def lsj_augment(record: Mapping[str, Any], rng: np.random.Generator, *,
                image_size: tuple[int, int] = (1024, 1024),
                scale_range: tuple[float, float] = LSJ_SCALE_RANGE, flip: bool = True,
                ignore_label: int = 255,
                image_pad_value: int = OFFICIAL_IMAGE_PAD_VALUE) -> dict[str, Any]:
  """COCO large-scale jitter: RandomFlip, ResizeScale, FixedSizeCrop (with padding).

  FixedSizeCrop draws ONE uniform factor for both offsets (offset = round(u * max_offset)).
  """
  record = _with_padding_mask(record)
  if flip and rng.random() < 0.5:
    record = hflip(record, ignore_label=ignore_label)
  height, width = record["image"].shape[:2]
  out_h, out_w = image_size
  new_h, new_w = resize_scale_size(height, width, scale=rng.uniform(*scale_range),
                                   target_size=(out_h, out_w))
  u = rng.uniform(0.0, 1.0)
  top = int(np.round(max(new_h - out_h, 0) * u))
  left = int(np.round(max(new_w - out_w, 0) * u))
  return resize_crop_pad(record, resized_size=(new_h, new_w), top=top, left=left,
                         height=out_h, width=out_w, ignore_label=ignore_label,
                         image_pad_value=image_pad_value)


def default_min_sizes(image_size: Sequence[int]) -> tuple[int, ...]:
  """The official MIN_SIZE_TRAIN of a crop size: [int(x * 0.1 * S) for x in 5..20]."""
  return tuple(int(x * 0.1 * max(image_size)) for x in range(5, 21))


def crop_window(semantic: np.ndarray | None, size: tuple[int, int],
                crop_size: tuple[int, int], rng: np.random.Generator, *,
                single_category_max_area: float = 1.0,
                ignore_label: int = 255) -> tuple[int, int, int, int]:
  """Detectron2's `RandomCrop_CategoryAreaConstraint("absolute", ...)` -> (top, left, h, w).

  The crop is `crop_size` clipped to `size`. With `single_category_max_area` < 1, up to 10
  windows are drawn until one holds more than one category (ignore excluded) and no category
  covers `single_category_max_area` of the labelled pixels or more; else the last is kept.
  `semantic` [H, W] (at `size`) is only read in that case.
  """
  height, width = size
  crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
  if single_category_max_area >= 1.0:
    return (int(rng.integers(height - crop_h + 1)), int(rng.integers(width - crop_w + 1)),
            crop_h, crop_w)
  for _ in range(10):
    top, left = int(rng.integers(height - crop_h + 1)), int(rng.integers(width - crop_w + 1))
    labels, counts = np.unique(semantic[top:top + crop_h, left:left + crop_w],
                               return_counts=True)
    counts = counts[labels != ignore_label]
    if len(counts) > 1 and counts.max() < counts.sum() * single_category_max_area:
      break
  return top, left, crop_h, crop_w


def shortest_edge_crop_augment(
    record: Mapping[str, Any], rng: np.random.Generator, *, image_size: tuple[int, int],
    min_sizes: Sequence[int], max_size: int | None, single_category_max_area: float = 1.0,
    color_aug: bool = True, flip: bool = True, ignore_label: int = 255,
    image_pad_value: int = OFFICIAL_IMAGE_PAD_VALUE) -> dict[str, Any]:
  """ADE20K / Cityscapes: ResizeShortestEdge ("choice"), category-constrained random crop of
  `image_size`, ColorAugSSD, RandomFlip, padding (bottom / right) to `image_size`."""
  record = _with_padding_mask(record)
  height, width = record["image"].shape[:2]
  new_h, new_w = resize_shortest_edge_size(height, width, int(rng.choice(min_sizes)), max_size)
  semantic = None
  if single_category_max_area < 1.0:
    sem = targets_lib.semantic_map(record, ignore_label=ignore_label)  # [H, W]
    semantic = sem[nearest_indices(height, new_h)[:, None], nearest_indices(width, new_w)]
  top, left, crop_h, crop_w = crop_window(
      semantic, (new_h, new_w), tuple(image_size), rng,
      single_category_max_area=single_category_max_area, ignore_label=ignore_label)
  out = resize_crop_pad(record, resized_size=(new_h, new_w), top=top, left=left,
                        height=image_size[0], width=image_size[1], ignore_label=ignore_label,
                        image_pad_value=image_pad_value)
  if color_aug:  # on the crop, before padding, as the mapper
    image = out["image"].copy()
    image[:crop_h, :crop_w] = color_aug_ssd(image[:crop_h, :crop_w], rng)
    out["image"] = image
  if flip and rng.random() < 0.5:
    out = hflip_region(out, crop_h, crop_w, ignore_label=ignore_label)
  return out


def _synthetic_recipe(record, rng, *, image_size, flip, scale_range, min_size_train,
                      max_size_train, single_category_max_area, ignore_label):
  del min_size_train, max_size_train, single_category_max_area
  return synthetic_augment(record, rng, image_size=image_size, flip=flip,
                           scale_range=scale_range, ignore_label=ignore_label)


def _lsj_recipe(record, rng, *, image_size, flip, scale_range, min_size_train,
                max_size_train, single_category_max_area, ignore_label):
  del min_size_train, max_size_train, single_category_max_area
  return lsj_augment(record, rng, image_size=image_size,
                     scale_range=tuple(scale_range or LSJ_SCALE_RANGE), flip=flip,
                     ignore_label=ignore_label)


def _shortest_edge_recipe(record, rng, *, image_size, flip, scale_range, min_size_train,
                          max_size_train, single_category_max_area, ignore_label):
  del scale_range
  return shortest_edge_crop_augment(
      record, rng, image_size=image_size,
      min_sizes=tuple(min_size_train or default_min_sizes(image_size)),
      max_size=max_size_train or 4 * max(image_size),
      single_category_max_area=single_category_max_area, flip=flip,
      ignore_label=ignore_label)


# Recipe name (`data.augmentation`) -> its function (see the module docstring).
RECIPES = {
    "synthetic": _synthetic_recipe,
    "coco_lsj": _lsj_recipe,
    "ade20k_semantic": _shortest_edge_recipe,
    "cityscapes": _shortest_edge_recipe,
}
AUGMENTATIONS = tuple(RECIPES)


def augment(record: Mapping[str, Any], rng: np.random.Generator, *,
            image_size: tuple[int, int], augmentation: str = "synthetic", flip: bool = True,
            scale_range: tuple[float, float] | None = None,
            min_size_train: Sequence[int] | None = None, max_size_train: int | None = None,
            single_category_max_area: float = 1.0, ignore_label: int = 255) -> dict[str, Any]:
  """One recipe of `AUGMENTATIONS` -> a record of size `image_size` with "padding_mask".

  Args:
    record: a normalized record (uint8 image [H, W, 3] and its maps).
    rng: the randomness.
    image_size: (H, W) of the output (the crop size of "ade20k_semantic" / "cityscapes").
    augmentation: the recipe (see the module docstring).
    flip: random horizontal flip.
    scale_range: scale jitter of "synthetic" (None: none) and "coco_lsj" (None: (0.1, 2.0)).
    min_size_train, max_size_train: short-edge choices and long-edge cap of
      "ade20k_semantic" / "cityscapes"; None: the official values for `image_size`.
    single_category_max_area: crop constraint of "ade20k_semantic" / "cityscapes".
    ignore_label: semantic label of unlabeled pixels (and of padding).
  """
  if augmentation not in RECIPES:
    raise ValueError(f"unknown augmentation {augmentation!r}: use one of {AUGMENTATIONS}")
  return RECIPES[augmentation](
      record, rng, image_size=tuple(int(s) for s in image_size), flip=flip,
      scale_range=scale_range, min_size_train=min_size_train, max_size_train=max_size_train,
      single_category_max_area=single_category_max_area, ignore_label=ignore_label)


# ------------------------------------------------------------------------------------------
# Test time: the official resize, normalization and padding (evaluation and predict)
# ------------------------------------------------------------------------------------------


def prepare_eval_image(image: np.ndarray, *, pixel_mean: Sequence[float],
                       pixel_std: Sequence[float], min_size: int | None = None,
                       max_size: int | None = None) -> np.ndarray:
  """uint8 [H, W, 3] -> resized (the official test-time rule) and normalized float32 [h, w, 3]."""
  height, width = image.shape[:2]
  input_h, input_w = eval_resize_size(height, width, min_size, max_size)
  if (input_h, input_w) != (height, width):
    image = resize_image(image, input_h, input_w)
  return targets_lib.normalize_image(image, pixel_mean=pixel_mean, pixel_std=pixel_std)


def pad_images(images: Sequence[np.ndarray], *, size_divisibility: int = 32,
               pad_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Normalized [h_i, w_i, 3] images -> (float32 [B, H, W, 3], bool padding mask [B, H, W]).

  Pads with 0 (the mean after normalization, as Detectron2's `ImageList.from_tensors`) to
  the largest size rounded up to `size_divisibility`, or to `pad_size`.
  """
  sizes = np.array([im.shape[:2] for im in images]).reshape(-1, 2)  # [B, 2]
  if pad_size is None:
    pad_h, pad_w = -(-sizes.max(axis=0) // size_divisibility) * size_divisibility
  else:
    pad_h, pad_w = pad_size
    if (sizes > (pad_h, pad_w)).any() or pad_h % size_divisibility or pad_w % size_divisibility:
      raise ValueError(f"pad_size {pad_size} must be multiples of {size_divisibility} holding "
                       f"every input size; largest in this batch: {sizes.max(axis=0)}")
  out = np.zeros((len(images), pad_h, pad_w, 3), np.float32)  # [B, H, W, 3]
  padding_mask = np.zeros((len(images), pad_h, pad_w), bool)  # [B, H, W]
  for i, (image, (h, w)) in enumerate(zip(images, sizes)):
    out[i, :h, :w] = image
    padding_mask[i, :h, :w] = True
  return out, padding_mask
