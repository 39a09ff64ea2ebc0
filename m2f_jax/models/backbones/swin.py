"""Swin Transformer backbone (Liu et al., 2021) as Mask2Former uses it.

Follows the official `D2SwinTransformer` (mask2former/modeling/backbone/swin.py) and, name for
name, transformers' `SwinBackbone` (the `model.pixel_level_module.encoder` of
`Mask2FormerForUniversalSegmentation`), so that the tensors `save_pretrained` writes under
`model.pixel_level_module.encoder.` map onto this module with `state_dict_to_variables`:

  embeddings/patch_embeddings/projection, embeddings/norm,
  encoder/layers_i/blocks_j/{layernorm_before, attention/self/{query,key,value,
      relative_position_bias_table}, attention/output/dense, layernorm_after,
      intermediate/dense, output/dense},
  encoder/layers_i/downsample/{norm, reduction}, hidden_states_norms/stage1..stage4.

(`swin.layernorm` in those checkpoints belongs to the classification model, not the backbone.)

Both references pad the image to a multiple of the patch size and every feature map to a
multiple of the window, always at the right and bottom, and keep the configured window and
shift at every resolution. transformers' `SwinModel`, when not told `always_partition=True`,
instead disables the shift and shrinks the window to the input when a stage's resolution
(the smaller side, before padding) is <= window_size; `adapt_window_to_input=True` reproduces
that. transformers (5.x) runs Mask2Former's backbone with `always_partition=True`, i.e. like
the official code and this module's default.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax.models.conv import Conv
from m2f_jax.models.remat import remat_block


# Both references initialize linear layers and the bias tables with trunc_normal(std=0.02).
_INIT = nn.initializers.truncated_normal(stddev=0.02)
# Additive attention mask between tokens of different regions of a shifted window, as both
# references use (not -inf, so that the result matches them bit for bit in float32).
_MASK_VALUE = -100.0
# Normalization layers that the references build with nn.LayerNorm's default epsilon.
_DEFAULT_EPS = 1e-5


def swin_channels(embed_dim: int) -> dict[str, int]:
  """Channels of the returned feature maps: {"res2": C, "res3": 2C, "res4": 4C, "res5": 8C}."""
  return {f"res{i + 2}": embed_dim * 2**i for i in range(4)}


def window_partition(x, window_size: int):
  """`[B, H, W, C]` -> `[B, nW, w*w, C]`, windows in row-major order, H and W multiples of w.

  Works on numpy and jax arrays. Window `i * (W // w) + j` holds
  `x[:, i*w:(i+1)*w, j*w:(j+1)*w]` flattened row-major, as the references' `window_partition`
  (whose `[nW*B, w, w, C]` is this array reshaped).
  """
  b, h, w, c = x.shape
  ws = window_size
  x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows, window_size: int, height: int, width: int):
  """Inverse of `window_partition`: `[B, nW, w*w, C]` -> `[B, H, W, C]`."""
  b, _, _, c = windows.shape
  ws = window_size
  x = windows.reshape(b, height // ws, width // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def relative_position_index(window_size: int) -> np.ndarray:
  """`[w*w, w*w]` row of `relative_position_bias_table` for each (query, key) pair of a window.

  The table is indexed by the displacement (dy, dx) = query - key, each in [-(w-1), w-1]:
  index = (dy + w - 1) * (2w - 1) + (dx + w - 1).
  """
  ws = window_size
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # [2, T, T]
  return rel[0] * (2 * ws - 1) + rel[1]  # [T, T]


def shifted_window_attention_mask(height: int, width: int, window_size: int,
                                  shift_size: int) -> np.ndarray:
  """Additive mask `[nW, w*w, w*w]` (0 or -100) for attention in cyclically shifted windows.

  `height` and `width` are those of the padded map. After rolling by -shift, each axis splits
  into 3 regions, [0, n-w), [n-w, n-shift) and [n-shift, n); two tokens may attend to each
  other only when they lie in the same region along both axes (the references' `img_mask`).
  """
  def regions(n):
    idx = np.arange(n)
    return (idx >= n - window_size).astype(np.int32) + (idx >= n - shift_size)

  labels = regions(height)[:, None] * 3 + regions(width)[None, :]  # [H, W]
  labels = window_partition(labels[None, :, :, None], window_size)[0, :, :, 0]  # [nW, T]
  different = labels[:, :, None] != labels[:, None, :]
  return np.where(different, _MASK_VALUE, 0.0).astype(np.float32)  # [nW, T, T]


def stage_window(height: int, width: int, window_size: int,
                 adapt_window_to_input: bool) -> tuple[int, int]:
  """(window, shift of the odd blocks) of a stage whose input is `height` x `width` tokens.

  The official code always uses (window_size, window_size // 2). transformers' `SwinLayer.
  set_shift_and_window_size` (used unless `always_partition=True`) sets the shift to 0 and
  the window to min(height, width) when min(height, width) <= window_size.
  """
  if adapt_window_to_input and min(height, width) <= window_size:
    if min(height, width) < window_size:
      # transformers shrinks the window but keeps the bias of the full window, which fails
      # with a shape mismatch: there is no reference result to reproduce.
      raise ValueError(
          f"Swin(adapt_window_to_input=True): a stage of {height}x{width} tokens is smaller than "
          f"the window ({window_size}); transformers' SwinModel fails on such inputs too. Use "
          "larger images or adapt_window_to_input=False (the official padding, which "
          "transformers' Mask2Former backbone also uses).")
    return window_size, 0
  return window_size, window_size // 2


def _drop_path(module: nn.Module, x, rate: float, train: bool):
  """Stochastic depth: zeroes a whole residual branch per image with probability `rate`."""
  if not train or rate == 0.0:
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _layer_norm(name: str, dtype, epsilon: float = _DEFAULT_EPS) -> nn.LayerNorm:
  # Two-pass variance like torch: the residual stream of Swin can have large means.
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False, name=name)


class _DenseWrapper(nn.Module):
  """A linear layer named `dense`, for transformers' one-layer wrappers (`output.dense`, ...)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, dtype=self.dtype, kernel_init=_INIT, name="dense")(x)


class WindowSelfAttention(nn.Module):
  """Multi-head self-attention inside windows with a relative position bias.

  transformers' `SwinSelfAttention` (legacy names query/key/value) = the official
  `WindowAttention` without its output projection. Logits and softmax in float32.
  """
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, windows, mask=None):
    """windows `[B, nW, T, C]` (T = w*w), mask `[nW, T, T]` or None -> `[B, nW, T, C]`."""
    b, nw, t, c = windows.shape
    n = self.num_heads
    assert t == self.window_size**2, (windows.shape, self.window_size)
    assert c % n == 0, f"channels {c} not divisible by num_heads {n}"
    dense = functools.partial(nn.Dense, c, use_bias=self.qkv_bias, dtype=self.dtype,
                              kernel_init=_INIT)
    split = lambda y: y.reshape(b, nw, t, n, c // n)
    q = split(dense(name="query")(windows)) * (c // n)**-0.5  # [B, nW, T, N, C/N]
    k = split(dense(name="key")(windows))
    v = split(dense(name="value")(windows))

    table = self.param("relative_position_bias_table", _INIT,
                       ((2 * self.window_size - 1)**2, n))
    bias = table[relative_position_index(self.window_size).reshape(-1)]
    bias = bias.reshape(t, t, n).transpose(2, 0, 1)  # [N, T, T]

    # b: images, w: windows, q/k: query/key tokens of a window, n: heads, c: head channels.
    logits = jnp.einsum("bwqnc,bwknc->bwnqk", q, k,
                        preferred_element_type=jnp.float32)  # [B, nW, N, T, T]
    logits = logits + bias.astype(jnp.float32)
    if mask is not None:
      logits = logits + jnp.asarray(mask)[:, None]
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bwnqk,bwknc->bwqnc", probs, v)  # [B, nW, T, N, C/N]
    return out.reshape(b, nw, t, c)


class SwinAttention(nn.Module):
  """transformers' `SwinAttention`: `self` (window attention) then `output.dense`."""
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, windows, mask=None):
    out = WindowSelfAttention(self.num_heads, self.window_size, self.qkv_bias, self.dtype,
                              name="self")(windows, mask)
    return _DenseWrapper(windows.shape[-1], self.dtype, name="output")(out)


class SwinBlock(nn.Module):
  """One (shifted-)window block: transformers' `SwinLayer`, official `SwinTransformerBlock`.

  Norm, right/bottom zero padding to the window, cyclic shift by -shift_size, window
  attention (masked across shift regions), undo shift and padding, residual; then the MLP.
  Stochastic depth applies to both residual branches as in the official code (transformers
  applies it to the attention branch only; both are identities at inference).
  """
  num_heads: int
  window_size: int
  shift_size: int = 0
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-5
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x `[B, H, W, C]` -> `[B, H, W, C]` (`train` may be positional: `remat_block`)."""
    b, h, w, c = x.shape
    ws, shift = self.window_size, self.shift_size
    y = _layer_norm("layernorm_before", self.dtype, self.layer_norm_eps)(x)
    pad_h, pad_w = -h % ws, -w % ws
    y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))  # [B, Hp, Wp, C]
    hp, wp = h + pad_h, w + pad_w
    mask = None
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
      mask = shifted_window_attention_mask(hp, wp, ws, shift)
    windows = window_partition(y, ws)  # [B, nW, w*w, C]
    windows = SwinAttention(self.num_heads, ws, self.qkv_bias, self.dtype,
                            name="attention")(windows, mask)
    y = window_reverse(windows, ws, hp, wp)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + _drop_path(self, y[:, :h, :w], self.drop_path, train)

    y = _layer_norm("layernorm_after", self.dtype, self.layer_norm_eps)(x)
    y = _DenseWrapper(int(c * self.mlp_ratio), self.dtype, name="intermediate")(y)
    y = nn.gelu(y, approximate=False)
    y = _DenseWrapper(c, self.dtype, name="output")(y)
    return x + _drop_path(self, y, self.drop_path, train)


class PatchMerging(nn.Module):
  """2x2 neighbourhood concat, norm, linear 4C -> 2C (no bias); odd sizes padded first.

  Concatenation order as both references: x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
  x[1::2, 1::2].
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x `[B, H, W, C]` -> `[B, ceil(H/2), ceil(W/2), 2C]`."""
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate(
        [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
        axis=-1)  # [B, H/2, W/2, 4C]
    x = _layer_norm("norm", self.dtype)(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, kernel_init=_INIT,
                    name="reduction")(x)


class SwinStage(nn.Module):
  """`depth` blocks (even ones unshifted, odd ones shifted), then patch merging if any.

  transformers' `SwinStage` / official `BasicLayer`. Returns (the stage's output before
  merging, the input of the next stage or None).
  """
  depth: int
  num_heads: int
  window_size: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-5
  drop_path: Sequence[float] = ()
  downsample: bool = True
  adapt_window_to_input: bool = False
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each block's activations in the backward pass

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    _, h, w, _ = x.shape
    block = remat_block(SwinBlock, self.remat, static_argnums=(2,))  # train
    window, shift = stage_window(h, w, self.window_size, self.adapt_window_to_input)
    drop_path = tuple(self.drop_path) or (0.0,) * self.depth
    for i in range(self.depth):
      x = block(
          num_heads=self.num_heads,
          window_size=window,
          shift_size=0 if i % 2 == 0 else shift,
          mlp_ratio=self.mlp_ratio,
          qkv_bias=self.qkv_bias,
          layer_norm_eps=self.layer_norm_eps,
          drop_path=drop_path[i],
          dtype=self.dtype,
          name=f"blocks_{i}")(x, train)
    if not self.downsample:
      return x, None
    return x, PatchMerging(self.dtype, name="downsample")(x)


class SwinEncoder(nn.Module):
  """The stages (`layers_i`); returns each stage's output before merging."""
  depths: Sequence[int]
  num_heads: Sequence[int]
  window_size: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-5
  drop_path_rate: float = 0.0
  adapt_window_to_input: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    # Stochastic depth rate rising linearly from 0 to drop_path_rate over all blocks.
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    outs = []
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      start = sum(self.depths[:i])
      out, x = SwinStage(
          depth=depth,
          num_heads=heads,
          window_size=self.window_size,
          mlp_ratio=self.mlp_ratio,
          qkv_bias=self.qkv_bias,
          layer_norm_eps=self.layer_norm_eps,
          drop_path=tuple(rates[start:start + depth]),
          downsample=i < len(self.depths) - 1,
          adapt_window_to_input=self.adapt_window_to_input,
          dtype=self.dtype,
          remat=self.remat,
          name=f"layers_{i}")(x, train=train)
      outs.append(out)
    return outs


class SwinPatchEmbeddings(nn.Module):
  """Right/bottom zero padding to a multiple of the patch, then the strided conv."""
  embed_dim: int
  patch_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    _, h, w, _ = images.shape
    p = self.patch_size
    images = jnp.pad(images, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
    return Conv(self.embed_dim, p, stride=p, dtype=self.dtype, name="projection")(
        images)  # [B, H/p, W/p, C]


class SwinEmbeddings(nn.Module):
  """Patch embedding and its LayerNorm (official `PatchEmbed` with patch_norm=True)."""
  embed_dim: int
  patch_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = SwinPatchEmbeddings(self.embed_dim, self.patch_size, self.dtype,
                            name="patch_embeddings")(images)
    return _layer_norm("norm", self.dtype)(x)


class HiddenStatesNorms(nn.Module):
  """One LayerNorm per output stage (`stage1`..; official `norm0`..`norm3`)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    return [_layer_norm(f"stage{i + 1}", self.dtype)(f) for i, f in enumerate(features)]


class Swin(nn.Module):
  """Swin Transformer backbone returning res2..res5 (strides 4, 8, 16, 32), NHWC.

  Attributes:
    embed_dim: channels of the first stage (C); stage i has C * 2^i.
    depths: blocks per stage (4 stages).
    num_heads: attention heads per stage.
    window_size: side of the attention windows.
    mlp_ratio: MLP hidden width / channels.
    qkv_bias: whether query/key/value have biases.
    patch_size: side of the patches of the stem.
    layer_norm_eps: epsilon of the blocks' LayerNorms (transformers' `layer_norm_eps`; the
      stem, merging and output norms use 1e-5 in both references).
    drop_path_rate: stochastic depth rate of the last block (linear from 0), train only,
      drawn from the 'dropout' rng.
    adapt_window_to_input: transformers' `SwinModel` behaviour without `always_partition`
      (no shift when a stage's smaller side equals the window); False = official padding.
    dtype: computation dtype (parameters stay float32).
    remat: recompute each block's activations in the backward pass (`train.remat`;
      `m2f_jax.models.remat`): less memory, same values and variables.
  """
  embed_dim: int
  depths: Sequence[int]
  num_heads: Sequence[int]
  window_size: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  patch_size: int = 4
  layer_norm_eps: float = 1e-5
  drop_path_rate: float = 0.0
  adapt_window_to_input: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def out_channels(self) -> dict[str, int]:
    """Channels of each returned feature map, e.g. {"res2": 96, ..., "res5": 768}."""
    return swin_channels(self.embed_dim)

  @property
  def out_strides(self) -> dict[str, int]:
    """Stride of each returned feature map relative to the input: {"res2": 4, ..., "res5": 32}."""
    return {f"res{i + 2}": self.patch_size * 2**i for i in range(4)}

  @nn.compact
  def __call__(self, images, *, train: bool = False) -> dict[str, jax.Array]:
    """images `[B, H, W, 3]` -> {"res2": [B, H/4, W/4, C], ..., "res5": [B, H/32, W/32, 8C]}.

    Sizes round up (a map of odd size is padded before merging).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Swin expects NHWC RGB images [B, H, W, 3], got {images.shape}")
    if not len(self.depths) == len(self.num_heads) == 4:
      raise ValueError(f"Swin needs 4 stages: depths={self.depths}, num_heads={self.num_heads}")
    x = SwinEmbeddings(self.embed_dim, self.patch_size, self.dtype,
                       name="embeddings")(images.astype(self.dtype))
    features = SwinEncoder(
        depths=tuple(self.depths),
        num_heads=tuple(self.num_heads),
        window_size=self.window_size,
        mlp_ratio=self.mlp_ratio,
        qkv_bias=self.qkv_bias,
        layer_norm_eps=self.layer_norm_eps,
        drop_path_rate=self.drop_path_rate,
        adapt_window_to_input=self.adapt_window_to_input,
        dtype=self.dtype,
        remat=self.remat,
        name="encoder")(x, train=train)
    features = HiddenStatesNorms(self.dtype, name="hidden_states_norms")(features)
    return {f"res{i + 2}": f for i, f in enumerate(features)}
