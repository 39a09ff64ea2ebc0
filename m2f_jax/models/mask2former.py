"""Mask2Former: backbone -> MSDeformAttn pixel decoder -> masked-attention transformer decoder.

The module tree mirrors transformers' `Mask2FormerForUniversalSegmentation` (`model.` prefix
dropped): `pixel_level_module/encoder` (backbone), `pixel_level_module/decoder` (pixel
decoder), `transformer_module` (queries, masked-attention decoder, mask head) and
`class_predictor`, so its checkpoints convert by name (`m2f_jax.convert`).
"""

from typing import Any, TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2f_jax.models.backbones.resnet import ResNet
from m2f_jax.models.backbones.swin import Swin
from m2f_jax.models.pixel_decoder import MSDeformAttnPixelDecoder
from m2f_jax.models.pixel_decoder import PixelLevelModule
from m2f_jax.models.pixel_decoder import semantic_logits
from m2f_jax.models.transformer_decoder import TransformerModule

if TYPE_CHECKING:  # configs are ml_collections.ConfigDicts; any object with attributes
  import ml_collections  # and .get() works (GPU benchmarks run without ml_collections)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Mask2Former(nn.Module):
  """The universal segmentation network.

  `__call__(images [B, H, W, 3], train=False)` with H, W multiples of 32 and images already
  normalized returns a dict of float32 arrays:
    pred_logits [B, Q, K+1]     class logits of the last layer (index K = no object),
    pred_masks  [B, Q, H/4, W/4] mask logits of the last layer,
    aux_logits  [L, B, Q, K+1]   the earlier predictions in order: index 0 comes from the
    aux_masks   [L, B, Q, H/4, W/4] learnable queries before the first layer, L = layers.
  With `semantic_head` and `train`, also
    semantic_logits [B, H/4, W/4, K]  per-pixel class logits of the mask features (see
      `m2f_jax.models.pixel_decoder.semantic_logits`).
  """
  pixel_level_module: PixelLevelModule
  transformer_module: nn.Module
  num_classes: int
  semantic_head: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool = False) -> dict[str, jnp.ndarray]:
    b, h, w, c = images.shape
    if c != 3 or h % 32 or w % 32:
      raise ValueError(f"images must be [B, H, W, 3] with H and W multiples of 32 (pad them; "
                       f"the evaluation transform does), got shape {images.shape}")
    mask_features, multi_scale_features = self.pixel_level_module(
        images.astype(self.dtype), train=train)
    hidden_states, masks = self.transformer_module(
        multi_scale_features, mask_features, train=train)  # [L+1, B, Q, C], [L+1, B, Q, h, w]
    logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_predictor")(
        hidden_states)  # [L+1, B, Q, K+1]
    logits = logits.astype(jnp.float32)
    masks = masks.astype(jnp.float32)
    assert masks.shape[1:] == (b, masks.shape[2], h // 4, w // 4), masks.shape
    outputs = {
        "pred_logits": logits[-1],
        "pred_masks": masks[-1],
        "aux_logits": logits[:-1],
        "aux_masks": masks[:-1],
    }
    if self.semantic_head:  # created always (init runs with train=False), returned in training
      sem = semantic_logits(mask_features, self.num_classes, self.dtype)
      if train:
        outputs["semantic_logits"] = sem
    return outputs


def build_backbone(cfg: "ml_collections.ConfigDict", dtype, remat: bool = False) -> nn.Module:
  """The backbone module (returns res2..res5); `remat`: see `build_model`."""
  if cfg.name == "resnet":
    return ResNet(depths=tuple(cfg.depths), hidden_sizes=tuple(cfg.hidden_sizes),
                  embedding_size=cfg.embedding_size, layer_type=cfg.layer_type,
                  downsample_in_bottleneck=cfg.downsample_in_bottleneck,
                  # Configs written before `norm` existed are frozen-BN models.
                  norm=cfg.get("norm", "frozen_bn"), dtype=dtype, remat=remat)
  if cfg.name == "swin":
    return Swin(embed_dim=cfg.embed_dim, depths=tuple(cfg.depths),
                num_heads=tuple(cfg.num_heads), window_size=cfg.window_size,
                patch_size=cfg.patch_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                drop_path_rate=cfg.drop_path_rate,
                adapt_window_to_input=cfg.adapt_window_to_input, dtype=dtype, remat=remat)
  raise ValueError(f"model.backbone.name must be 'resnet' or 'swin', got {cfg.name!r}")


def build_model(cfg: "ml_collections.ConfigDict", *, remat: bool = False) -> nn.Module:
  """Mask2Former from the `model` section of a config (see `m2f_jax.config_lib`).

  `model.video` selects the video model (`m2f_jax.models.video.VideoMask2Former`, clips
  [B, T, H, W, 3] in) with the same parts. `remat` (the trainer passes `train.remat`)
  rematerializes every repeated block (backbone layers or blocks, pixel-decoder encoder
  layers, transformer-decoder layers; `m2f_jax.models.remat`): the same values and
  variables, less memory in the backward pass, about one more forward pass of compute.
  """
  if cfg.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
  dtype = DTYPES[cfg.dtype]
  backbone = build_backbone(cfg.backbone, dtype, remat)
  pixel_decoder = MSDeformAttnPixelDecoder(
      feature_size=cfg.feature_size, mask_feature_size=cfg.mask_feature_size,
      num_encoder_layers=cfg.encoder_layers,
      encoder_feedforward_dim=cfg.encoder_feedforward_dim, num_heads=cfg.encoder_num_heads,
      num_points=cfg.encoder_num_points, common_stride=cfg.common_stride, dtype=dtype,
      deform_attn_impl=cfg.get("deform_attn_impl", "gather"), remat=remat)
  transformer = TransformerModule(
      num_queries=cfg.num_queries, hidden_dim=cfg.hidden_dim, num_heads=cfg.num_heads,
      dim_feedforward=cfg.dim_feedforward, num_layers=cfg.decoder_layers - 1,
      pre_norm=cfg.pre_norm, enforce_input_projection=cfg.enforce_input_projection,
      mask_dim=cfg.mask_feature_size, dtype=dtype, remat=remat)
  pixel_level_module = PixelLevelModule(encoder=backbone, decoder=pixel_decoder)
  if cfg.get("video", False):
    from m2f_jax.models.video import VideoMask2Former  # pylint: disable=g-import-not-at-top
    return VideoMask2Former(
        pixel_level_module=pixel_level_module, transformer_module=transformer,
        num_classes=cfg.num_classes, frame_chunk=cfg.get("frame_chunk", 0),
        semantic_head=cfg.get("semantic_head", False), dtype=dtype)
  return Mask2Former(pixel_level_module=pixel_level_module, transformer_module=transformer,
                     num_classes=cfg.num_classes, semantic_head=cfg.get("semantic_head", False),
                     dtype=dtype)


def example_input_shape(model: nn.Module, height: int = 64, width: int = 64,
                        num_frames: int = 1) -> tuple[int, ...]:
  """The shape of a one-element input batch of `model`: [1, H, W, 3] or [1, T, H, W, 3]."""
  if getattr(model, "clip_input", False):
    return (1, num_frames, height, width, 3)
  return (1, height, width, 3)


def abstract_variables(model: nn.Module):
  """The variable tree of `model` as ShapeDtypeStructs (nothing is computed or allocated)."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros(example_input_shape(model), jnp.float32)))
