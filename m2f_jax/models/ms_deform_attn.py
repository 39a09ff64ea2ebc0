"""Multi-scale deformable attention (Zhu et al., Deformable DETR), as used by Mask2Former.

`multi_scale_deformable_attention` computes what the official `ms_deform_attn_core_pytorch`
(`pixel_decoder/ops/functions/ms_deform_attn_func.py`) and transformers'
`multi_scale_deformable_attention` compute (and what the official CUDA kernel computes): for
every query, head, level and point, a bilinear sample of that level's value map at the
sampling location (zeros outside the map), weighted by the attention weight and summed over
levels and points. Two formulations compute it, chosen by `impl` (`model.deform_attn_impl`):

- "gather" (`multi_scale_deformable_attention`): written on `m2f_jax.ops.bilinear_sample`, four
  flat gathers per level, no custom kernel. The default on every platform: measured faster on
  CPU (benchmarks/deform_attn.py); not yet measured on GPU or TPU.
- "matmul" (`multi_scale_deformable_attention_matmul`): the accelerator formulation of scenic's
  deformable DETR idea (TPUs gather slowly; use the matrix units instead). Per level, the
  attention weights and the bilinear weights of every point are scattered into a dense
  `[Q, H*W]` matrix (one-hot comparisons of the four corner indices, no gather), which
  multiplies the level's `[H*W, C]` values. Exact (same bilinear weights, same zero padding):
  it differs from "gather" by float rounding only, gradients included. It costs
  O(Q * H * W * C) multiply-adds instead of O(Q * P * C), so queries go in chunks (each
  rematerialized in the backward pass) to bound memory.

`MSDeformAttn` follows the official `ops/modules/ms_deform_attn.py` `MSDeformAttn` (same
initialization) with the parameter names of transformers'
`Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention`: `sampling_offsets`,
`attention_weights`, `value_proj`, `output_proj`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2f_jax.ops import bilinear_sample

SpatialShapes = tuple[tuple[int, int], ...]

# The formulations of `MSDeformAttn.impl` / `model.deform_attn_impl`.
IMPLS = ("gather", "matmul")
# "matmul": at most this many entries in the dense [B, N, Q_chunk, H*W] weight matrix of one
# query chunk (2^25 float32 = 128 MiB).
MATMUL_CHUNK_ENTRIES = 2**25


def multi_scale_deformable_attention(
    value: jnp.ndarray,
    spatial_shapes: SpatialShapes,
    sampling_locations: jnp.ndarray,
    attention_weights: jnp.ndarray,
) -> jnp.ndarray:
  """Deformable attention over a flattened multi-scale value sequence.

  Args:
    value: `[B, S, N, C]` per-head values of all levels, each level flattened row-major and
      concatenated in the order of `spatial_shapes` (S = sum of H_l * W_l).
    spatial_shapes: static `((H_0, W_0), ..., (H_{L-1}, W_{L-1}))`.
    sampling_locations: `[B, Q, N, L, P, 2]`, (x, y) normalized to [0, 1] per level.
    attention_weights: `[B, Q, N, L, P]` (normalized over L * P by the caller).

  Returns:
    `[B, Q, N * C]`, heads concatenated, in the dtype of `value`.
  """
  spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
  _check_inputs("multi_scale_deformable_attention", value, spatial_shapes, sampling_locations,
                attention_weights)
  batch, _, num_heads, head_dim = value.shape
  _, num_queries, _, _, num_points, _ = sampling_locations.shape
  # Accumulated per head ([B, N, Q, C], the layout the samples come in), transposed to
  # [B, Q, N, C] once at the end: 4% faster R50 train step on CPU than contracting each
  # level's [B, N, Q, P, C] samples straight into [B, Q, N, C].
  out = jnp.zeros((batch, num_heads, num_queries, head_dim), jnp.float32)
  start = 0
  for level, (height, width) in enumerate(spatial_shapes):
    level_value = value[:, start:start + height * width]  # [B, H*W, N, C]
    start += height * width
    level_value = level_value.reshape(batch, height, width, num_heads, head_dim)
    level_value = level_value.transpose(0, 3, 1, 2, 4)  # [B, N, H, W, C]
    points = sampling_locations[:, :, :, level].transpose(0, 2, 1, 3, 4)  # [B, N, Q, P, 2]
    points = points.reshape(batch, num_heads, num_queries * num_points, 2)
    sampled = bilinear_sample(level_value, points)  # [B, N, Q*P, C]
    sampled = sampled.reshape(batch, num_heads, num_queries, num_points, head_dim)
    weights = attention_weights[:, :, :, level].transpose(0, 2, 1, 3)  # [B, N, Q, P]
    out = out + jnp.einsum("BNQPC,BNQP->BNQC", sampled, weights,
                           preferred_element_type=jnp.float32)
  out = out.transpose(0, 2, 1, 3)  # [B, Q, N, C]
  return out.reshape(batch, num_queries, num_heads * head_dim).astype(value.dtype)


def _check_inputs(name, value, spatial_shapes, sampling_locations, attention_weights):
  _, seq_len, _, _ = value.shape
  num_levels = sampling_locations.shape[3]
  if sum(h * w for h, w in spatial_shapes) != seq_len or len(spatial_shapes) != num_levels:
    raise ValueError(
        f"{name}: spatial_shapes {spatial_shapes} do not fit value "
        f"{value.shape} ([B, S, N, C], S = sum H*W) and sampling_locations "
        f"{sampling_locations.shape} ([B, Q, N, L, P, 2]).")
  if attention_weights.shape != sampling_locations.shape[:-1]:
    raise ValueError(f"{name}: attention_weights "
                     f"{attention_weights.shape} must be [B, Q, N, L, P] = "
                     f"{sampling_locations.shape[:-1]}.")


def _dense_level_weights(points, weights, height, width, dtype):
  """The bilinear and attention weights of one level as a dense matrix over its pixels.

  points `[B, N, Q, P, 2]` (x, y) in [0, 1], weights `[B, N, Q, P]` -> `[B, N, Q, H*W]`:
  entry (q, y * W + x) = sum over points p and their four neighbouring pixels (x, y) inside
  the map of weight[p] * bilinear weight, i.e. the row that `bilinear_sample` + the weighted
  sum over P compute for query q, written with one-hot comparisons instead of gathers.
  """
  x = points[..., 0] * width - 0.5  # [B, N, Q, P], pixel coordinates as in bilinear_sample
  y = points[..., 1] * height - 0.5
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  fx = x - x0
  fy = y - y0
  corners, indices = [], []
  for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the four neighbouring pixels
    xs, ys = x0 + dx, y0 + dy
    corner = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy) * weights  # [B, N, Q, P]
    inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    corners.append(jnp.where(inside, corner, 0.0))
    indices.append(jnp.where(inside, ys * width + xs, -1.0).astype(jnp.int32))  # -1: no pixel
  corners = jnp.concatenate(corners, axis=-1)  # [B, N, Q, 4P]
  indices = jnp.concatenate(indices, axis=-1)  # [B, N, Q, 4P]
  pixels = jnp.arange(height * width, dtype=jnp.int32)
  # One-hot rows weighted and summed over the 4P corners (a compare-select-reduce that XLA
  # fuses, so the [B, N, Q, 4P, H*W] one-hot tensor is never written out).
  dense = jnp.sum(jnp.where(indices[..., None] == pixels, corners[..., None], 0.0), axis=-2)
  return dense.astype(dtype)  # [B, N, Q, H*W]


def multi_scale_deformable_attention_matmul(
    value: jnp.ndarray,
    spatial_shapes: SpatialShapes,
    sampling_locations: jnp.ndarray,
    attention_weights: jnp.ndarray,
    *,
    chunk_entries: int = MATMUL_CHUNK_ENTRIES,
) -> jnp.ndarray:
  """`multi_scale_deformable_attention` as dense matmuls (the "matmul" formulation).

  Same arguments and result as `multi_scale_deformable_attention`. For each level, the
  `[B, N, Q, H*W]` matrix of `_dense_level_weights` (in the dtype of `value`) multiplies the
  level's `[B, N, H*W, C]` values, accumulated in float32. The queries go in chunks of at
  most `chunk_entries / (B * N * max H*W)` (at least 1; one chunk when everything fits), each
  chunk rematerialized in the backward pass so no dense matrix is kept between passes.
  """
  spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
  _check_inputs("multi_scale_deformable_attention_matmul", value, spatial_shapes,
                sampling_locations, attention_weights)
  batch, _, num_heads, head_dim = value.shape
  _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
  starts = [0]
  for height, width in spatial_shapes:
    starts.append(starts[-1] + height * width)
  values = value.transpose(0, 2, 1, 3)  # [B, N, S, C]
  compute_dtype = value.dtype if jnp.issubdtype(value.dtype, jnp.floating) else jnp.float32

  def attend(points, weights):  # [B, N, Qc, L, P, 2], [B, N, Qc, L, P] -> [B, N, Qc, C]
    out = None
    for level, (height, width) in enumerate(spatial_shapes):
      dense = _dense_level_weights(points[:, :, :, level], weights[:, :, :, level], height,
                                   width, compute_dtype)  # [B, N, Qc, H*W]
      level_value = values[:, :, starts[level]:starts[level + 1]].astype(compute_dtype)
      term = jnp.einsum("BNQS,BNSC->BNQC", dense, level_value,
                        preferred_element_type=jnp.float32)
      out = term if out is None else out + term
    return out

  points = sampling_locations.astype(jnp.float32).transpose(0, 2, 1, 3, 4, 5)  # [B,N,Q,L,P,2]
  weights = attention_weights.astype(jnp.float32).transpose(0, 2, 1, 3, 4)  # [B, N, Q, L, P]
  largest = max(h * w for h, w in spatial_shapes) * num_points
  chunk = max(1, min(num_queries, chunk_entries // max(1, batch * num_heads * largest)))
  if chunk >= num_queries:
    out = attend(points, weights)  # [B, N, Q, C]
  else:
    num_chunks = -(-num_queries // chunk)
    pad = num_chunks * chunk - num_queries  # padded queries have zero weights

    def split(x):  # [B, N, Q, ...] -> [num_chunks, B, N, chunk, ...]
      x = jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3))
      x = x.reshape(batch, num_heads, num_chunks, chunk, *x.shape[3:])
      return jnp.moveaxis(x, 2, 0)

    out = jax.lax.map(lambda args: jax.checkpoint(attend)(*args), (split(points), split(weights)))
    out = jnp.moveaxis(out, 0, 2).reshape(batch, num_heads, num_chunks * chunk, head_dim)
    out = out[:, :, :num_queries]
  out = out.transpose(0, 2, 1, 3)  # [B, Q, N, C]
  return out.reshape(batch, num_queries, num_heads * head_dim).astype(value.dtype)


def _sampling_offsets_bias_init(num_heads: int, num_levels: int, num_points: int):
  """The official initial offsets: head h points along angle 2*pi*h/N, point p at p + 1."""

  def init(key, shape, dtype=jnp.float32):
    del key
    thetas = jnp.arange(num_heads, dtype=jnp.float32) * (2.0 * math.pi / num_heads)
    grid = jnp.stack([jnp.cos(thetas), jnp.sin(thetas)], axis=-1)  # [N, 2]
    grid = grid / jnp.max(jnp.abs(grid), axis=-1, keepdims=True)
    scale = jnp.arange(1, num_points + 1, dtype=jnp.float32)[:, None]  # [P, 1]
    grid = jnp.broadcast_to(grid[:, None, None, :] * scale,
                            (num_heads, num_levels, num_points, 2))  # [N, L, P, 2]
    return grid.reshape(shape).astype(dtype)

  return init


class MSDeformAttn(nn.Module):
  """Multi-scale deformable attention with 2-d reference points.

  Follows the official `MSDeformAttn` (offsets divided by each level's (W, H), softmax over
  the L * P weights of a head) and transformers'
  `Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention` (names). As in the official
  module, the caller adds any position embedding to `query` beforehand.

  Attributes:
    embed_dim: model width C (`d_model`).
    num_heads: N; C must be divisible by it.
    num_levels: L, the number of feature levels.
    num_points: P, sampling points per head and level.
    dtype: computation dtype of the projections; sampling locations and attention weights
      stay float32.
    impl: "gather" or "matmul", the formulation of the sampling (module docstring); the same
      parameters and, to float rounding, the same outputs.
  """
  embed_dim: int = 256
  num_heads: int = 8
  num_levels: int = 3
  num_points: int = 4
  dtype: Any = jnp.float32
  impl: str = "gather"

  @nn.compact
  def __call__(
      self,
      query: jnp.ndarray,
      reference_points: jnp.ndarray,
      input_flatten: jnp.ndarray,
      spatial_shapes: SpatialShapes,
  ) -> jnp.ndarray:
    """Attends from each query around its reference point on every level.

    Args:
      query: `[B, Q, C]` (position embedding already added).
      reference_points: `[B, Q, L, 2]` (x, y) in [0, 1] (or broadcastable to it, e.g.
        `[1, Q, L, 2]`).
      input_flatten: `[B, S, C]`, the flattened levels the values come from.
      spatial_shapes: static `((H_0, W_0), ...)` of the L levels in `input_flatten`.

    Returns:
      `[B, Q, C]`.
    """
    n, l, p = self.num_heads, self.num_levels, self.num_points
    if self.impl not in IMPLS:
      raise ValueError(f"MSDeformAttn: impl (model.deform_attn_impl) must be one of {IMPLS}, "
                       f"got {self.impl!r}.")
    if self.embed_dim % n:
      raise ValueError(f"MSDeformAttn: embed_dim {self.embed_dim} is not divisible by "
                       f"num_heads {n}.")
    batch, num_queries, _ = query.shape
    _, seq_len, _ = input_flatten.shape
    if query.shape[-1] != self.embed_dim or input_flatten.shape[-1] != self.embed_dim:
      raise ValueError(f"MSDeformAttn: query {query.shape} and input_flatten "
                       f"{input_flatten.shape} must have {self.embed_dim} channels.")
    if len(spatial_shapes) != l or reference_points.shape[-2:] != (l, 2):
      raise ValueError(f"MSDeformAttn: expected {l} levels, got spatial_shapes "
                       f"{spatial_shapes} and reference_points {reference_points.shape} "
                       "([B, Q, L, 2]).")

    value = nn.Dense(self.embed_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                     name="value_proj")(input_flatten)
    value = value.reshape(batch, seq_len, n, self.embed_dim // n)  # [B, S, N, C/N]
    offsets = nn.Dense(
        n * l * p * 2, dtype=self.dtype, kernel_init=nn.initializers.zeros,
        bias_init=_sampling_offsets_bias_init(n, l, p), name="sampling_offsets")(query)
    offsets = offsets.astype(jnp.float32).reshape(batch, num_queries, n, l, p, 2)
    logits = nn.Dense(n * l * p, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                      name="attention_weights")(query)
    weights = jax.nn.softmax(logits.astype(jnp.float32).reshape(batch, num_queries, n, l * p))
    weights = weights.reshape(batch, num_queries, n, l, p)  # [B, Q, N, L, P]

    normalizer = jnp.array([[w, h] for h, w in spatial_shapes], jnp.float32)  # [L, 2] (W, H)
    locations = (reference_points.astype(jnp.float32)[:, :, None, :, None, :] +
                 offsets / normalizer[:, None, :])  # [B, Q, N, L, P, 2]
    attend = (multi_scale_deformable_attention_matmul if self.impl == "matmul" else
              multi_scale_deformable_attention)
    out = attend(value, spatial_shapes, locations, weights)
    return nn.Dense(self.embed_dim, dtype=self.dtype,
                    kernel_init=nn.initializers.xavier_uniform(), name="output_proj")(out)
