"""Array operations shared by the model, the losses and post-processing.

One implementation of each: bilinear resizing with PyTorch's
`F.interpolate(mode="bilinear", align_corners=False)` semantics, used wherever the
references interpolate; bilinear point sampling with `F.grid_sample(mode="bilinear",
padding_mode="zeros", align_corners=False)` semantics, used by the deformable attention and
the point-sampled losses.
"""

import math

import jax
import jax.numpy as jnp


def resize_bilinear(x: jnp.ndarray, height: int, width: int, *, spatial_axes=(-2, -1)) -> jnp.ndarray:
  """Resizes the two `spatial_axes` of `x` to (height, width).

  Same as `torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False)`
  (half-pixel centres, no antialiasing, also when downsampling).
  """
  axes = tuple(a % x.ndim for a in spatial_axes)
  shape = list(x.shape)
  shape[axes[0]], shape[axes[1]] = height, width
  if tuple(shape) == x.shape:
    return x
  return jax.image.resize(x, tuple(shape), method="linear", antialias=False)


def bilinear_sample(values: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """Samples `values` bilinearly at `points`, with zeros outside the image.

  Same as `torch.nn.functional.grid_sample(values, 2 * points - 1, mode="bilinear",
  padding_mode="zeros", align_corners=False)` (up to layout): a point (x, y) in [0, 1]^2
  (x along the width) lies at pixel coordinate (x * W - 0.5, y * H - 0.5), i.e. (0, 0) is the
  top-left corner of the top-left pixel; each of the four neighbouring pixels contributes
  with its bilinear weight, and those outside the image contribute zero. Differentiable with
  respect to both `values` and `points` (the gradient of the corner positions is zero, as in
  PyTorch). Used by the deformable attention and by the point sampling of the losses.

  Args:
    values: `[..., H, W, C]`.
    points: `[..., P, 2]` as (x, y), normalized to [0, 1]; the leading dimensions are those
      of `values`. The coordinate math runs in float32.

  Returns:
    `[..., P, C]` in the dtype of `values` (float32 for integer or boolean `values`, e.g.
    uint8 target masks, which are gathered as they are and converted after the gather, so
    no float copy of the whole array is made).
  """
  *batch, height, width, channels = values.shape
  if tuple(points.shape[:-2]) != tuple(batch) or points.shape[-1] != 2:
    raise ValueError(f"bilinear_sample: points {points.shape} must be [..., P, 2] with the "
                     f"leading dimensions of values {values.shape} ([..., H, W, C]).")
  num_points = points.shape[-2]
  num_images = math.prod(batch)
  # One flat gather over all images (faster than a batched gather on CPU, and its transpose
  # in the backward pass is one flat scatter-add).
  flat_values = values.reshape(num_images * height * width, channels)  # [B*H*W, C]
  points = points.astype(jnp.float32).reshape(num_images, num_points, 2)  # [B, P, 2]
  x = points[..., 0] * width - 0.5
  y = points[..., 1] * height - 0.5
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  fx = x - x0
  fy = y - y0
  # The four neighbours, in the order (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
  xs = x0[..., None] + jnp.array([0.0, 1.0, 0.0, 1.0])  # [B, P, 4]
  ys = y0[..., None] + jnp.array([0.0, 0.0, 1.0, 1.0])
  wx = jnp.stack([1.0 - fx, fx, 1.0 - fx, fx], axis=-1)
  wy = jnp.stack([1.0 - fy, 1.0 - fy, fy, fy], axis=-1)
  inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
  weights = jnp.where(inside, wx * wy, 0.0)  # [B, P, 4]
  image_offset = (jnp.arange(num_images, dtype=jnp.int32) * (height * width))[:, None, None]
  index = jnp.where(inside, ys * width + xs, 0.0).astype(jnp.int32) + image_offset
  corners = flat_values[index.reshape(-1)].reshape(num_images, num_points, 4, channels)
  out_dtype = values.dtype if jnp.issubdtype(values.dtype, jnp.floating) else jnp.float32
  out = jnp.einsum("bpkc,bpk->bpc", corners.astype(weights.dtype), weights)  # [B, P, C]
  return out.astype(out_dtype).reshape(*batch, num_points, channels)
