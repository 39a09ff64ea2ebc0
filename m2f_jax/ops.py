"""Array operations shared by the model, the losses and post-processing.

One implementation of each: bilinear resizing with PyTorch's
`F.interpolate(mode="bilinear", align_corners=False)` semantics, used wherever the
references interpolate.
"""

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
