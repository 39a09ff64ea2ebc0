"""The MSDeformAttn pixel decoder of Mask2Former.

Follows the official `pixel_decoder/msdeformattn.py` (`MSDeformAttnPixelDecoder` and its
`MSDeformAttnTransformerEncoderOnly`) and computes exactly what transformers'
`Mask2FormerPixelDecoder` computes, with transformers' module names (`input_projections`,
`encoder.layers.N.{self_attn, self_attn_layer_norm, fc1, fc2, final_layer_norm}`, `level_embed`,
`adapter_1`, `layer_1`, `mask_projection`):

  1. res5, res4, res3 (coarsest first) are projected to C channels (1x1 conv + GroupNorm),
     flattened and concatenated, with sine position embedding + a learned level embedding;
  2. a stack of post-norm deformable-attention encoder layers refines the sequence, each
     pixel attending around its own centre on all three levels;
  3. the sequence is split back into three maps and an FPN adds the finer levels (res2 for
     the common stride 4): lateral 1x1 conv + GroupNorm, plus the bilinearly upsampled
     coarser output, then 3x3 conv + GroupNorm + ReLU;
  4. a 1x1 conv of the finest map gives the per-pixel mask features.

There is no padding mask (images are batched at one size), so all valid ratios are 1.
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from m2f_jax.models.conv import Conv
from m2f_jax.models.ms_deform_attn import MSDeformAttn
from m2f_jax.models.ms_deform_attn import SpatialShapes
from m2f_jax.models.position_encoding import sine_position_embedding
from m2f_jax.models.remat import remat_block
from m2f_jax.ops import resize_bilinear

FEATURE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
# The encoder always reads the three coarsest levels, coarsest first (as both references).
ENCODER_FEATURES = ("res5", "res4", "res3")

# Detectron2's `c2_xavier_fill` (kaiming_uniform with a=1) for the FPN and mask convolutions.
_c2_xavier_fill = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def encoder_reference_points(spatial_shapes: SpatialShapes) -> jnp.ndarray:
  """The centre of every pixel of every level, normalized to [0, 1], as (x, y).

  The references' `get_reference_points` with all valid ratios 1: the point of a query is
  its own pixel centre, the same on every level.

  Returns:
    `[S, L, 2]`, S = sum of H_l * W_l in the order of `spatial_shapes`.
  """
  points = []
  for height, width in spatial_shapes:
    y = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
    x = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
    xy = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)  # [H, W, 2]
    points.append(xy.reshape(height * width, 2))
  points = jnp.concatenate(points, axis=0)  # [S, 2]
  return jnp.broadcast_to(points[:, None, :], (points.shape[0], len(spatial_shapes), 2))


class MSDeformAttnEncoderLayer(nn.Module):
  """Post-norm deformable self-attention + ReLU FFN.

  Official `MSDeformAttnTransformerEncoderLayer`; transformers'
  `Mask2FormerPixelDecoderEncoderLayer`.
  """
  embed_dim: int = 256
  feedforward_dim: int = 1024
  num_heads: int = 8
  num_levels: int = 3
  num_points: int = 4
  dropout: float = 0.0
  dtype: Any = jnp.float32
  deform_attn_impl: str = "gather"  # MSDeformAttn.impl

  @nn.compact
  def __call__(self, hidden, pos, reference_points, spatial_shapes, train=False):
    """hidden `[B, S, C]`, pos `[B or 1, S, C]`, reference_points `[B or 1, S, L, 2]`.

    `spatial_shapes` and `train` may be positional (static under `remat_block`).
    """
    attn = MSDeformAttn(self.embed_dim, self.num_heads, self.num_levels, self.num_points,
                        dtype=self.dtype, impl=self.deform_attn_impl, name="self_attn")
    out = attn(hidden + pos, reference_points, hidden, spatial_shapes)
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    hidden = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, use_fast_variance=False,
                          name="self_attn_layer_norm")(hidden + out)

    out = nn.Dense(self.feedforward_dim, dtype=self.dtype,
                   kernel_init=nn.initializers.xavier_uniform(), name="fc1")(hidden)
    out = nn.relu(out)
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    out = nn.Dense(self.embed_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                   name="fc2")(out)
    out = nn.Dropout(self.dropout, deterministic=not train)(out)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, use_fast_variance=False,
                        name="final_layer_norm")(hidden + out)  # [B, S, C]


class MSDeformAttnEncoder(nn.Module):
  """Stack of encoder layers over the flattened levels.

  Official `MSDeformAttnTransformerEncoder`; transformers' `Mask2FormerPixelDecoderEncoderOnly`.
  """
  embed_dim: int = 256
  feedforward_dim: int = 1024
  num_layers: int = 6
  num_heads: int = 8
  num_points: int = 4
  dropout: float = 0.0
  dtype: Any = jnp.float32
  deform_attn_impl: str = "gather"  # MSDeformAttn.impl
  remat: bool = False  # recompute each layer's activations in the backward pass

  @nn.compact
  def __call__(self, hidden, pos, spatial_shapes: SpatialShapes, *, train=False):
    """hidden `[B, S, C]`, pos `[B or 1, S, C]` -> `[B, S, C]`."""
    reference_points = encoder_reference_points(spatial_shapes)[None]  # [1, S, L, 2]
    layer = remat_block(MSDeformAttnEncoderLayer, self.remat,
                        static_argnums=(4, 5))  # spatial_shapes, train
    for i in range(self.num_layers):
      hidden = layer(
          self.embed_dim, self.feedforward_dim, self.num_heads, len(spatial_shapes),
          self.num_points, self.dropout, dtype=self.dtype,
          deform_attn_impl=self.deform_attn_impl, name=f"layers_{i}")(
              hidden, pos, reference_points, spatial_shapes, train)
    return hidden


class MSDeformAttnPixelDecoder(nn.Module):
  """Deformable-attention encoder on res3..res5 + FPN to `common_stride`.

  Official `MSDeformAttnPixelDecoder.forward_features`; transformers' `Mask2FormerPixelDecoder`.

  Attributes:
    feature_size: C, the width of the encoder and of the multi-scale features (conv_dim).
    mask_feature_size: channels of the mask features (mask_dim).
    num_encoder_layers: deformable encoder layers (6 in every official config).
    encoder_feedforward_dim: FFN width of the encoder (1024).
    num_heads: attention heads of the encoder.
    num_points: sampling points per head and level.
    common_stride: stride of the mask features; the FPN adds every level from res3's stride
      (8) down to it.
    dropout: dropout rate of the encoder (0.0 in the official configs); active when `train`.
    dtype: computation dtype; GroupNorm/LayerNorm statistics, softmax and sampling
      coordinates stay float32.
    deform_attn_impl: "gather" or "matmul", the encoder's deformable-attention formulation
      (`m2f_jax.models.ms_deform_attn`; `model.deform_attn_impl`).
    remat: recompute each encoder layer's activations in the backward pass (`train.remat`;
      `m2f_jax.models.remat`): less memory, same values and variables.
  """
  feature_size: int = 256
  mask_feature_size: int = 256
  num_encoder_layers: int = 6
  encoder_feedforward_dim: int = 1024
  num_heads: int = 8
  num_points: int = 4
  common_stride: int = 4
  dropout: float = 0.0
  dtype: Any = jnp.float32
  deform_attn_impl: str = "gather"
  remat: bool = False

  def _group_norm(self, name):
    return nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=self.dtype, use_fast_variance=False,
                        name=name)

  @nn.compact
  def __call__(self, features: dict[str, jnp.ndarray], *, train: bool = False):
    """Runs the pixel decoder.

    Args:
      features: "res2".."res5" (at least res3..res5 and the FPN levels), NHWC
        `[B, H/s, W/s, C_s]` for the strides s = 4, 8, 16, 32.
      train: enables dropout (needs a "dropout" rng when `dropout > 0`).

    Returns:
      `(mask_features [B, H/4, W/4, mask_feature_size], multi_scale_features)`, the latter a
      list of the three encoder outputs `[B, h, w, feature_size]` for res5, res4, res3
      (coarsest first), as the references return them.
    """
    c = self.feature_size
    num_fpn_levels = int(math.log2(FEATURE_STRIDES["res3"]) - math.log2(self.common_stride))
    fpn_features = sorted(FEATURE_STRIDES, key=FEATURE_STRIDES.get)[:num_fpn_levels]
    missing = [k for k in ENCODER_FEATURES + tuple(fpn_features) if k not in features]
    if missing:
      raise ValueError(f"MSDeformAttnPixelDecoder: features {sorted(features)} lack {missing}.")
    batch = features["res5"].shape[0]

    # Input projections and embeddings of the encoder levels, coarsest first.
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (len(ENCODER_FEATURES), c))
    sources, positions, spatial_shapes = [], [], []
    for level, key in enumerate(ENCODER_FEATURES):
      x = features[key]
      if x.ndim != 4 or x.shape[0] != batch:
        raise ValueError(f"MSDeformAttnPixelDecoder: features[{key!r}] has shape {x.shape}; "
                         f"expected [B={batch}, h, w, channels] (NHWC).")
      _, height, width, _ = x.shape
      x = Conv(c, 1, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
               name=f"input_projections_{level}_0")(x)
      x = self._group_norm(f"input_projections_{level}_1")(x)  # [B, h, w, C]
      sources.append(x.reshape(batch, height * width, c))
      pos = sine_position_embedding(height, width, c // 2)  # [h, w, C]
      positions.append(pos.reshape(height * width, c) + level_embed[level])
      spatial_shapes.append((height, width))
    spatial_shapes = tuple(spatial_shapes)
    hidden = jnp.concatenate(sources, axis=1)  # [B, S, C]
    pos = jnp.concatenate(positions, axis=0)[None].astype(hidden.dtype)  # [1, S, C]

    hidden = MSDeformAttnEncoder(
        c, self.encoder_feedforward_dim, self.num_encoder_layers, self.num_heads,
        self.num_points, self.dropout, dtype=self.dtype,
        deform_attn_impl=self.deform_attn_impl, remat=self.remat, name="encoder")(
            hidden, pos, spatial_shapes, train=train)

    outputs = []
    start = 0
    for height, width in spatial_shapes:
      outputs.append(hidden[:, start:start + height * width].reshape(batch, height, width, c))
      start += height * width

    # FPN: finer levels top-down (res2 for stride 4), each named after its position in
    # the fine-to-coarse order as in the references (adapter_1 / layer_1 = res2).
    for idx in reversed(range(num_fpn_levels)):
      x = features[fpn_features[idx]]
      _, height, width, _ = x.shape
      lateral = Conv(c, 1, use_bias=False, dtype=self.dtype, kernel_init=_c2_xavier_fill,
                     name=f"adapter_{idx + 1}_0")(x)
      lateral = self._group_norm(f"adapter_{idx + 1}_1")(lateral)  # [B, h, w, C]
      y = lateral + resize_bilinear(outputs[-1], height, width, spatial_axes=(1, 2))
      y = Conv(c, 3, padding=1, use_bias=False, dtype=self.dtype, kernel_init=_c2_xavier_fill,
               name=f"layer_{idx + 1}_0")(y)
      y = nn.relu(self._group_norm(f"layer_{idx + 1}_1")(y))  # [B, h, w, C]
      outputs.append(y)

    mask_features = Conv(self.mask_feature_size, 1, dtype=self.dtype,
                         kernel_init=_c2_xavier_fill, name="mask_projection")(outputs[-1])
    return mask_features, outputs[:len(ENCODER_FEATURES)]


class PixelLevelModule(nn.Module):
  """Backbone (`encoder`) and pixel decoder (`decoder`): the per-image part of the image
  and the video model (`m2f_jax.models.{mask2former,video}`)."""
  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, images, *, train: bool = False):
    features = self.encoder(images, train=train)  # res2..res5, NHWC
    return self.decoder(features, train=train)


def semantic_logits(mask_features: jnp.ndarray, num_classes: int, dtype) -> jnp.ndarray:
  """The optional per-pixel class head: [..., h, w, C] mask features -> [..., h, w, K].

  Not part of the official model: a linear classifier of every mask-feature pixel, trained by
  a dense auxiliary loss (`m2f_jax.criterion.semantic_loss`, weight `loss.semantic_weight`)
  so that a model trained from scratch gets a class signal at every pixel, not only through
  the few matched queries. Inference does not use it. Call inside a compact module
  (the image and the video model do).
  """
  return nn.Dense(num_classes, dtype=dtype, name="semantic_head")(mask_features).astype(
      jnp.float32)
