"""Compact training batches -> the dense arrays the train step computes on, on the device.

The input pipeline ships each example compactly (`data.compact_targets`, the default): the
image as uint8 and the targets as a segment map (`m2f_jax.data.targets.make_compact_targets`)
instead of a float32 image and M dense masks; at COCO LSJ 1024 with 100 target slots that is
about 4 MiB per example instead of 112 MiB. `dense_batch` rebuilds, inside the jitted step,
exactly what the dense pipeline would have shipped:

  compact batch                                  dense batch
  "images"   uint8 [B, H, W, 3] (0..255)         "images" float32 [B, H, W, 3] normalized
  "padding_mask" bool [B, H, W]                  (0 outside the padding mask when
                                                  `zero_padding`, as the "synthetic" recipe)
  "segments" uint8|uint16 [B, L, H, W]           "masks" uint8 [B, M, H, W]
  "labels" int32 [B, M], "valid" bool [B, M]     the same

Needs only jax (no data stack): the train step imports it on any machine.
"""

from collections.abc import Sequence

import jax.numpy as jnp


def is_compact(batch) -> bool:
  return "segments" in batch


def dense_masks(segments: jnp.ndarray, num_targets: int) -> jnp.ndarray:
  """uint8 [B, M, H, W] masks from segment maps [B, L, H, W] (value j + 1: target j)."""
  ids = jnp.arange(1, num_targets + 1, dtype=segments.dtype)[None, :, None, None]  # [1,M,1,1]
  masks = segments[:, :1] == ids
  for layer in range(1, segments.shape[1]):
    masks = masks | (segments[:, layer:layer + 1] == ids)
  return masks.astype(jnp.uint8)  # [B, M, H, W]


def normalize_images(images: jnp.ndarray, *, pixel_mean: Sequence[float],
                     pixel_std: Sequence[float]) -> jnp.ndarray:
  """uint8 [..., 3] -> float32 (image - mean) / std, as `data.targets.normalize_image`."""
  mean = jnp.asarray(pixel_mean, jnp.float32)
  std = jnp.asarray(pixel_std, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std


def dense_batch(batch: dict, *, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                zero_padding: bool) -> dict:
  """The dense form of a compact batch (a dense batch is returned unchanged)."""
  if not is_compact(batch):
    return batch
  out = {k: v for k, v in batch.items() if k != "segments"}
  images = normalize_images(batch["images"], pixel_mean=pixel_mean, pixel_std=pixel_std)
  if zero_padding:
    images = jnp.where(batch["padding_mask"][..., None], images, 0.0)
  out["images"] = images
  out["masks"] = dense_masks(batch["segments"], batch["labels"].shape[1])
  return out
