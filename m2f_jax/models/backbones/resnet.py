"""ResNet backbone (res2..res5), as transformers' `ResNetBackbone` and Detectron2's ResNet.

The computation follows transformers' `models/resnet/modeling_resnet.py` (what
`Mask2FormerForUniversalSegmentation` builds as `model.pixel_level_module.encoder` from a
`ResNetConfig`), which for the official Mask2Former R50/R101 settings equals Detectron2's
`build_resnet_backbone`:

  * stem ("basic"): 7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pool with padding 1;
  * bottleneck blocks 1x1 -> 3x3 -> 1x1 with the stride in the 3x3 convolution
    (`downsample_in_bottleneck=False` = Detectron2 `STRIDE_IN_1X1: False` = torchvision);
    `downsample_in_bottleneck=True` puts it in the first 1x1 (Detectron2's MSRA default);
  * a projection shortcut (1x1 convolution + BatchNorm) wherever a block changes the channel
    count or the resolution;
  * convolutions without bias, padded by `kernel_size // 2` on every side (as torch does).

Normalization is frozen, as in the official training (Detectron2 `NORM: "FrozenBN"`): every
BatchNorm always normalizes with its running statistics (eps 1e-5), in `train` mode too, and
no gradient flows into its scale, bias, mean or variance (Detectron2 keeps all four as
buffers). transformers' `nn.BatchNorm2d` would instead use batch statistics in train mode;
in eval mode the two are the same function. The scale and bias still live in the `params`
collection (mean and var in `batch_stats`) so that checkpoints convert by the naming rule of
`m2f_jax.convert.core`; optimizers should give them no weight decay (the official recipe
never sees them).

Flax names mirror transformers' state dict of `ResNetBackbone` (prefix
`model.pixel_level_module.encoder.` inside Mask2Former): `embedder/embedder/{convolution,
normalization}`, `encoder/stages_i/layers_j/layer_k/{convolution,normalization}` and
`encoder/stages_i/layers_j/shortcut/{convolution,normalization}`. The torchvision and
Detectron2 names map to those in `m2f_jax/convert/names.py`.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2f_jax.models.conv import Conv
from m2f_jax.models.remat import remat_block

FEATURE_NAMES = ("res2", "res3", "res4", "res5")

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),  # transformers' "gelu" is exact
    "silu": nn.silu,
    "swish": nn.silu,
}

# torch's default for ResNet convolutions: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _activation(name: str | None):
  if name is None:
    return lambda x: x
  if name not in _ACTIVATIONS:
    raise ValueError(f"ResNet hidden_act={name!r} is not supported; use one of "
                     f"{sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


class FrozenBatchNorm(nn.Module):
  """BatchNorm with frozen statistics and affine: Detectron2's `FrozenBatchNorm2d`.

  Computes `x * s + (bias - mean * s)` with `s = scale / sqrt(var + epsilon)`, in float32,
  which is `nn.BatchNorm2d` in eval mode. Variables: params `scale`, `bias`; batch_stats
  `mean`, `var`; all behind `stop_gradient`.
  """
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32).value
    var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32).value
    scale, bias, mean, var = jax.lax.stop_gradient((scale, bias, mean, var))
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x.astype(jnp.float32) * mul + (bias - mean * mul)).astype(self.dtype)


NORMS = ("frozen_bn", "group_norm")


def _norm_layer(norm: str, features: int, dtype):
  """The normalization after each convolution (see `ResNet.norm`)."""
  if norm == "frozen_bn":
    return FrozenBatchNorm(dtype=dtype, name="normalization")
  if norm == "group_norm":  # 32 groups, or fewer for narrow layers (e.g. the tiny model's)
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if features % g == 0)
    return nn.GroupNorm(num_groups=groups, dtype=dtype, name="group_norm")
  raise ValueError(f"ResNet norm={norm!r} is not supported; use one of {NORMS}.")


class ConvNorm(nn.Module):
  """Convolution (no bias), normalization (frozen BatchNorm by default), optional activation.

  transformers' `ResNetConvLayer` (and `ResNetShortCut` with kernel 1 and no activation);
  Detectron2's `Conv2d(..., norm=FrozenBatchNorm2d)` (or `norm="GN"`).
  """
  features: int
  kernel_size: int
  stride: int = 1
  activation: str | None = "relu"
  norm: str = "frozen_bn"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, p = self.kernel_size, self.kernel_size // 2
    x = Conv(self.features, k, stride=self.stride, padding=p, use_bias=False,
             dtype=self.dtype, kernel_init=_conv_init, name="convolution")(x)
    x = _norm_layer(self.norm, self.features, self.dtype)(x)
    return _activation(self.activation)(x)


class ResNetEmbeddings(nn.Module):
  """The "basic" stem: 7x7/2 conv + BN + activation, then 3x3/2 max pool (padding 1).

  transformers' `ResNetEmbeddings`; Detectron2's `BasicStem`. `nn.max_pool` pads with -inf,
  as torch's `MaxPool2d` does.
  """
  embedding_size: int = 64
  hidden_act: str = "relu"
  norm: str = "frozen_bn"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvNorm(self.embedding_size, 7, stride=2, activation=self.hidden_act,
                 norm=self.norm, dtype=self.dtype, name="embedder")(x)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class BottleneckLayer(nn.Module):
  """1x1 reduce -> 3x3 -> 1x1 expand, plus the (projected) input, then the activation.

  transformers' `ResNetBottleNeckLayer`; Detectron2's `BottleneckBlock` (groups 1,
  dilation 1). The stride sits in the 3x3 conv unless `downsample_in_bottleneck`.
  """
  features: int
  stride: int = 1
  reduction: int = 4
  downsample_in_bottleneck: bool = False
  hidden_act: str = "relu"
  norm: str = "frozen_bn"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    if x.shape[-1] != self.features or self.stride != 1:
      residual = ConvNorm(self.features, 1, stride=self.stride, activation=None,
                          norm=self.norm, dtype=self.dtype, name="shortcut")(x)
    reduced = self.features // self.reduction
    stride_1x1, stride_3x3 = ((self.stride, 1) if self.downsample_in_bottleneck
                              else (1, self.stride))
    h = ConvNorm(reduced, 1, stride=stride_1x1, activation=self.hidden_act, norm=self.norm,
                 dtype=self.dtype, name="layer_0")(x)
    h = ConvNorm(reduced, 3, stride=stride_3x3, activation=self.hidden_act, norm=self.norm,
                 dtype=self.dtype, name="layer_1")(h)
    h = ConvNorm(self.features, 1, activation=None, norm=self.norm, dtype=self.dtype,
                 name="layer_2")(h)
    return _activation(self.hidden_act)(h + residual)


class BasicLayer(nn.Module):
  """3x3 (strided) -> 3x3, plus the (projected) input, then the activation.

  transformers' `ResNetBasicLayer`; Detectron2's `BasicBlock` (ResNet-18/34).
  """
  features: int
  stride: int = 1
  hidden_act: str = "relu"
  norm: str = "frozen_bn"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    if x.shape[-1] != self.features or self.stride != 1:
      residual = ConvNorm(self.features, 1, stride=self.stride, activation=None,
                          norm=self.norm, dtype=self.dtype, name="shortcut")(x)
    h = ConvNorm(self.features, 3, stride=self.stride, activation=self.hidden_act,
                 norm=self.norm, dtype=self.dtype, name="layer_0")(x)
    h = ConvNorm(self.features, 3, activation=None, norm=self.norm, dtype=self.dtype,
                 name="layer_1")(h)
    return _activation(self.hidden_act)(h + residual)


class ResNetStage(nn.Module):
  """`depth` residual layers; only the first one strides (transformers' `ResNetStage`)."""
  features: int
  depth: int
  stride: int
  layer_type: str = "bottleneck"
  reduction: int = 4
  downsample_in_bottleneck: bool = False
  hidden_act: str = "relu"
  norm: str = "frozen_bn"
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each layer's activations in the backward pass

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bottleneck_layer = remat_block(BottleneckLayer, self.remat)
    basic_layer = remat_block(BasicLayer, self.remat)
    for j in range(self.depth):
      stride = self.stride if j == 0 else 1
      if self.layer_type == "bottleneck":
        layer = bottleneck_layer(
            self.features, stride=stride, reduction=self.reduction,
            # transformers applies downsample_in_bottleneck to the first layer only; the
            # other layers have stride 1, where it makes no difference.
            downsample_in_bottleneck=self.downsample_in_bottleneck and j == 0,
            hidden_act=self.hidden_act, norm=self.norm, dtype=self.dtype, name=f"layers_{j}")
      else:
        layer = basic_layer(self.features, stride=stride, hidden_act=self.hidden_act,
                           norm=self.norm, dtype=self.dtype, name=f"layers_{j}")
      x = layer(x)
    return x


class ResNetEncoder(nn.Module):
  """The four stages (transformers' `ResNetEncoder`); returns every stage's output."""
  depths: Sequence[int]
  hidden_sizes: Sequence[int]
  layer_type: str = "bottleneck"
  reduction: int = 4
  downsample_in_bottleneck: bool = False
  downsample_in_first_stage: bool = False
  hidden_act: str = "relu"
  norm: str = "frozen_bn"
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    outputs = []
    for i, (features, depth) in enumerate(zip(self.hidden_sizes, self.depths)):
      stride = 2 if i > 0 or self.downsample_in_first_stage else 1
      x = ResNetStage(features, depth, stride, layer_type=self.layer_type,
                      reduction=self.reduction,
                      downsample_in_bottleneck=self.downsample_in_bottleneck,
                      hidden_act=self.hidden_act, norm=self.norm, dtype=self.dtype,
                      remat=self.remat, name=f"stages_{i}")(x)
      outputs.append(x)
    return tuple(outputs)


class ResNet(nn.Module):
  """ResNet backbone returning `{"res2", "res3", "res4", "res5"}` (strides 4, 8, 16, 32).

  Fields mirror transformers' `ResNetConfig` (those that change the computation):
    depths: layers per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    hidden_sizes: output channels of each stage = channels of res2..res5.
    embedding_size: channels of the stem.
    layer_type: "bottleneck" (ResNet-50 and deeper) or "basic" (ResNet-18/34).
    downsample_in_bottleneck: stride in the first 1x1 instead of the 3x3 (Detectron2
      `STRIDE_IN_1X1`); False for Mask2Former's torchvision-initialized R50/R101.
    downsample_in_first_stage: let res2 stride too (doubles every output stride).
    reduction: bottleneck width = hidden_size // reduction (transformers fixes it at 4).
    hidden_act: the activation ("relu" everywhere in Mask2Former).
    norm: "frozen_bn" (the official, for ImageNet-initialized backbones: checkpoints carry
      the statistics) or "group_norm" (trainable GroupNorm, for a backbone trained from
      scratch, e.g. the tiny CPU model: frozen BN at its initial values normalizes nothing).
    dtype: computation dtype; parameters are float32 and BatchNorm computes in float32.
    remat: recompute each residual layer's activations in the backward pass (`train.remat`;
      `m2f_jax.models.remat`): less memory, same values and variables.
  """
  depths: Sequence[int]
  hidden_sizes: Sequence[int]
  embedding_size: int = 64
  layer_type: str = "bottleneck"
  downsample_in_bottleneck: bool = False
  downsample_in_first_stage: bool = False
  reduction: int = 4
  hidden_act: str = "relu"
  norm: str = "frozen_bn"
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def out_channels(self) -> dict[str, int]:
    """Channels of each output feature, e.g. {"res2": 256, ..., "res5": 2048}."""
    return dict(zip(FEATURE_NAMES, self.hidden_sizes))

  @property
  def out_strides(self) -> dict[str, int]:
    """Stride of each output feature relative to the input image."""
    first = 8 if self.downsample_in_first_stage else 4
    return {name: first * 2**i for i, name in enumerate(FEATURE_NAMES)}

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    """Maps `images [B, H, W, 3]` to NHWC features `res2..res5` (`[B, H/4, W/4, C2]` ...).

    `train` changes nothing (no dropout; BatchNorm is frozen) and is accepted so that all
    backbones share one call signature. Sizes follow torch's rounding for odd sizes:
    each stride-2 step maps n to (n - 1) // 2 + 1.
    """
    del train
    if len(self.depths) != 4 or len(self.hidden_sizes) != 4:
      raise ValueError(f"ResNet needs 4 stages for res2..res5, got depths={self.depths}, "
                       f"hidden_sizes={self.hidden_sizes}.")
    if self.layer_type not in ("bottleneck", "basic"):
      raise ValueError(f"ResNet layer_type={self.layer_type!r}; use 'bottleneck' or 'basic'.")
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"ResNet expects images [B, H, W, 3] (NHWC), got {images.shape}.")
    x = ResNetEmbeddings(self.embedding_size, hidden_act=self.hidden_act, norm=self.norm,
                         dtype=self.dtype, name="embedder")(images)  # [B, H/4, W/4, E]
    stages = ResNetEncoder(
        self.depths, self.hidden_sizes, layer_type=self.layer_type, reduction=self.reduction,
        downsample_in_bottleneck=self.downsample_in_bottleneck,
        downsample_in_first_stage=self.downsample_in_first_stage,
        hidden_act=self.hidden_act, norm=self.norm, dtype=self.dtype, remat=self.remat,
        name="encoder")(x)
    return dict(zip(FEATURE_NAMES, stages))  # res_k: [B, H/2^k, W/2^k, C_k]


def resnet50(**kwargs) -> ResNet:
  """Mask2Former's R50: torchvision-style bottlenecks, stem 64, res2..res5 256..2048."""
  return ResNet(depths=(3, 4, 6, 3), hidden_sizes=(256, 512, 1024, 2048), embedding_size=64,
                **kwargs)


def resnet101(**kwargs) -> ResNet:
  """Mask2Former's R101: as `resnet50` with 23 layers in res4."""
  return ResNet(depths=(3, 4, 23, 3), hidden_sizes=(256, 512, 1024, 2048), embedding_size=64,
                **kwargs)
