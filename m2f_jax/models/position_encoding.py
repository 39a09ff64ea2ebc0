"""Sine positional embedding, exactly as the official Mask2Former `PositionEmbeddingSine`.

The official module works on padding masks; Mask2Former always calls it without one, so the
cumulative sums reduce to 1..H and 1..W. Both references compute in float32.
"""

import math

import jax.numpy as jnp


def sine_position_embedding(
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    dtype=jnp.float32,
) -> jnp.ndarray:
  """Returns the `[H, W, 2 * num_pos_feats]` embedding (y features first, then x).

  Channel `2i` of each half is `sin(pos / t^(2i/F))`, channel `2i+1` is `cos(pos / t^(2i/F))`,
  with `pos` in 1..H (1..W) scaled to (0, scale] when `normalize`; F = num_pos_feats.
  """
  y = jnp.arange(1, height + 1, dtype=jnp.float32)
  x = jnp.arange(1, width + 1, dtype=jnp.float32)
  if normalize:
    eps = 1e-6
    y = y / (y[-1] + eps) * scale
    x = x / (x[-1] + eps) * scale
  dim_t = jnp.arange(num_pos_feats, dtype=jnp.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)

  def encode(pos):  # [N] -> [N, F]: interleave sin (even channels) and cos (odd channels)
    angles = pos[:, None] / dim_t
    return jnp.stack([jnp.sin(angles[:, 0::2]), jnp.cos(angles[:, 1::2])], axis=-1).reshape(
        pos.shape[0], num_pos_feats)

  pos_y = jnp.broadcast_to(encode(y)[:, None, :], (height, width, num_pos_feats))
  pos_x = jnp.broadcast_to(encode(x)[None, :, :], (height, width, num_pos_feats))
  return jnp.concatenate([pos_y, pos_x], axis=-1).astype(dtype)  # [H, W, 2F]


def sine_position_embedding_3d(
    num_frames: int,
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    dtype=jnp.float32,
) -> jnp.ndarray:
  """The official video `PositionEmbeddingSine3D` (mask2former_video), `[T, H, W, 2F]`.

  The y/x halves are `sine_position_embedding(height, width, F)` (the same for every frame);
  the frame index t in 1..T (scaled to (0, scale] by T when `normalize`, as y and x by H and
  W) is encoded over all 2F channels with its own frequencies `t^(2i/(2F))` (sin on even
  channels, cos on odd) and ADDED to them. With T = 1 every frame gets the same z term
  (t = 1 maps to ~scale), so a one-frame clip differs from the image encoding by a constant.
  """
  spatial = sine_position_embedding(height, width, num_pos_feats, temperature=temperature,
                                    normalize=normalize, scale=scale)  # [H, W, 2F]
  z = jnp.arange(1, num_frames + 1, dtype=jnp.float32)
  if normalize:
    z = z / (z[-1] + 1e-6) * scale
  num_z = 2 * num_pos_feats
  dim_t = jnp.arange(num_z, dtype=jnp.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_z)
  angles = z[:, None] / dim_t  # [T, 2F]
  pos_z = jnp.stack([jnp.sin(angles[:, 0::2]), jnp.cos(angles[:, 1::2])], axis=-1).reshape(
      num_frames, num_z)
  return (spatial[None] + pos_z[:, None, None, :]).astype(dtype)  # [T, H, W, 2F]
