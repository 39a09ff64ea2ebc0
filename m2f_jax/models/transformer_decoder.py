"""The masked-attention transformer decoder of Mask2Former.

Follows the official `MultiScaleMaskedTransformerDecoder` (transformer_decoder/
mask2former_transformer_decoder.py: CrossAttentionLayer, SelfAttentionLayer, FFNLayer, MLP,
`forward_prediction_heads`) and computes exactly what transformers'
`Mask2FormerTransformerModule` computes. Module and parameter names mirror the tensor names
under `model.transformer_module.` in transformers' checkpoints (see `m2f_jax.convert.core`):

  queries_embedder, queries_features, level_embed        nn.Embed (official query_embed,
                                                         query_feat, level_embed)
  input_projections_{0,1,2}                              1x1 nn.Conv, only when needed
  decoder/layers_{i}/cross_attn/{in_proj_weight, in_proj_bias, out_proj}
                                                         torch nn.MultiheadAttention layout
  decoder/layers_{i}/self_attn/{q_proj, k_proj, v_proj, out_proj}
  decoder/layers_{i}/{cross_attn,self_attn,final}_layer_norm, fc1, fc2
  decoder/layernorm                                      official decoder_norm
  decoder/mask_predictor/mask_embedder_{0,1,2}_0         official mask_embed (3-layer MLP)

Each layer does masked cross-attention on one of the 3 feature levels (round robin), then
self-attention among the queries, then an FFN. The attention mask of a layer comes from the
mask prediction of the previous stage, resized to the level's size: positions where
sigmoid(logit) < 0.5 are blocked, unless that blocks a query's whole row.

Video (the official `VideoMultiScaleMaskedTransformerDecoder`, mask2former_video/modeling/
transformer_decoder/video_mask2former_transformer_decoder.py) is the same module given clips:
features `[B, T, h, w, C]` instead of `[B, h, w, C]`. The memory of a level is then all
T * h * w positions (frame-major, as the official (T x HW) sequence) with the 3D sine
encoding (`sine_position_embedding_3d`), the queries are shared by the frames, masks are
`einsum(bqc,btchw->bqthw)`, and the attention mask is resized per frame, thresholded and
flattened over T * h * w: a query attends everywhere only when its mask is empty in ALL
frames. No padding mask (neither reference uses one). Parameter names are the image ones, as
the official video decoder's are.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2f_jax.models.conv import Conv
from m2f_jax.models.position_encoding import sine_position_embedding
from m2f_jax.models.position_encoding import sine_position_embedding_3d
from m2f_jax.models.remat import remat_block
from m2f_jax.ops import resize_bilinear

NUM_FEATURE_LEVELS = 3  # The official decoder always uses 3 scales.

# Both references use torch.nn.LayerNorm (eps 1e-5); flax's default is 1e-6.
_LN_EPS = 1e-5
_xavier = nn.initializers.xavier_uniform()


def attention_mask(mask_logits: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """Which memory positions each query may NOT attend to in the next masked cross-attention.

  As the official `forward_prediction_heads` plus the unblocking line before each layer:
  bilinear resize of the mask logits to the level's (height, width), blocked where
  sigmoid < 0.5 (decided in float32); a query whose whole row would be blocked attends
  everywhere instead. The same mask serves every head.

  Args:
    mask_logits: [B, Q, H, W] mask logits of the previous stage, or [B, Q, T, H, W] for a
      clip (each frame resized; the row is every frame's positions).
    height: height of the feature level the next layer attends to.
    width: width of that level.

  Returns:
    [B, Q, height, width] (or [B, Q, T, height, width]) bool, True = blocked. No gradient
    flows through it.
  """
  logits = jax.lax.stop_gradient(mask_logits).astype(jnp.float32)
  logits = resize_bilinear(logits, height, width)  # [B, Q, (T,) h, w]
  blocked = jax.nn.sigmoid(logits) < 0.5
  fully_blocked = jnp.all(blocked, axis=tuple(range(2, blocked.ndim)), keepdims=True)
  return blocked & ~fully_blocked


def _multi_head_attention(
    query: jnp.ndarray,
    key: jnp.ndarray,
    value: jnp.ndarray,
    num_heads: int,
    *,
    blocked: jnp.ndarray | None,
    attention_dropout: Callable[[jnp.ndarray], jnp.ndarray],
) -> jnp.ndarray:
  """Scaled dot-product attention of projected inputs, heads merged again at the end.

  Args:
    query: [B, Q, C] projected queries (bias included; both references scale q after the
      bias, as here).
    key: [B, S, C] projected keys; S is the number of key positions (h*w memory positions in
      cross-attention, the Q queries in self-attention).
    value: [B, S, C] projected values.
    num_heads: N; C must be divisible by it.
    blocked: optional [B, Q, S] bool, True = may not attend (shared by all heads). Every row
      must keep at least one position open; blocked probabilities are exactly 0.
    attention_dropout: applied to the attention probabilities.

  Returns:
    [B, Q, C] in the dtype of `value`.
  """
  b, q, c = query.shape
  d = c // num_heads
  query = query * (d ** -0.5)
  query = query.reshape(b, q, num_heads, d)
  key = key.reshape(b, key.shape[1], num_heads, d)
  value = value.reshape(b, value.shape[1], num_heads, d)
  logits = jnp.einsum("BQNC,BSNC->BNQS", query, key,
                      preferred_element_type=jnp.float32)  # [B, N, Q, S]
  if blocked is not None:
    logits = jnp.where(blocked[:, None], -jnp.inf, logits)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = attention_dropout(probs).astype(value.dtype)
  out = jnp.einsum("BNQS,BSNC->BQNC", probs, value)  # [B, Q, N, C/N]
  return out.reshape(b, q, c)


class CrossAttention(nn.Module):
  """torch `nn.MultiheadAttention` as the masked cross-attention of both references uses it.

  Parameters keep torch's packed layout (`in_proj_weight` [3C, C] holding the q, k and v
  projections one after the other, `in_proj_bias` [3C]) so checkpoints load unchanged.
  """
  hidden_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query, key, value, *, blocked=None, train=False):
    """query [B, Q, C], key/value [B, S, C], blocked [B, Q, S] bool -> [B, Q, C]."""
    c = self.hidden_dim
    in_proj_weight = self.param("in_proj_weight", _xavier, (3 * c, c))
    in_proj_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * c,))
    w = in_proj_weight.astype(self.dtype).reshape(3, c, c)  # [3, C_out, C_in]
    bias = in_proj_bias.astype(self.dtype).reshape(3, c)
    cast = lambda x: x.astype(self.dtype)
    q = jnp.einsum("BQC,DC->BQD", cast(query), w[0]) + bias[0]
    k = jnp.einsum("BSC,DC->BSD", cast(key), w[1]) + bias[1]
    v = jnp.einsum("BSC,DC->BSD", cast(value), w[2]) + bias[2]
    dropout = nn.Dropout(self.dropout, deterministic=not train)
    out = _multi_head_attention(q, k, v, self.num_heads, blocked=blocked,
                                attention_dropout=dropout)
    return nn.Dense(c, dtype=self.dtype, kernel_init=_xavier, name="out_proj")(out)


class SelfAttention(nn.Module):
  """Self-attention among the queries; transformers' `Mask2FormerAttention` (no mask).

  The query position embedding is added to queries and keys, not to values, as in the
  official SelfAttentionLayer.
  """
  hidden_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, query_pos, *, train=False):
    """x [B, Q, C], query_pos [B, Q, C] -> [B, Q, C]."""
    dense = lambda name: nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_xavier, name=name)
    with_pos = x + query_pos
    q = dense("q_proj")(with_pos)
    k = dense("k_proj")(with_pos)
    v = dense("v_proj")(x)
    dropout = nn.Dropout(self.dropout, deterministic=not train)
    out = _multi_head_attention(q, k, v, self.num_heads, blocked=None, attention_dropout=dropout)
    return dense("out_proj")(out)


class DecoderLayer(nn.Module):
  """One decoder layer: masked cross-attention, self-attention, FFN.

  transformers' `Mask2FormerMaskedAttentionDecoderLayer`; the official code keeps the three
  blocks in separate lists (CrossAttentionLayer, SelfAttentionLayer, FFNLayer). Post-norm
  (residual, then LayerNorm) by default; `pre_norm` normalizes each block's input instead
  and leaves the residual stream unnormalized, as the official `forward_pre`.
  """
  hidden_dim: int
  num_heads: int
  dim_feedforward: int
  pre_norm: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, query_pos, memory, memory_pos, blocked, train=False):
    """Updates the queries (`train` may be positional: static under `remat_block`).

    Args:
      x: [B, Q, C] query features.
      query_pos: [B, Q, C] query position embedding.
      memory: [B, S, C] features of this layer's level (projected, level embedding added).
      memory_pos: [S, C] sine position embedding of that level.
      blocked: [B, Q, S] bool attention mask of the cross-attention (True = blocked).
      train: enables dropout.

    Returns:
      [B, Q, C] updated query features.
    """
    norm = lambda name: nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name=name)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    cross_norm = norm("cross_attn_layer_norm")
    self_norm = norm("self_attn_layer_norm")
    ffn_norm = norm("final_layer_norm")
    cross_attn = CrossAttention(self.hidden_dim, self.num_heads, self.dropout, self.dtype,
                                name="cross_attn")
    self_attn = SelfAttention(self.hidden_dim, self.num_heads, self.dropout, self.dtype,
                              name="self_attn")
    fc1 = nn.Dense(self.dim_feedforward, dtype=self.dtype, kernel_init=_xavier, name="fc1")
    fc2 = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_xavier, name="fc2")

    def ffn(y):
      return fc2(drop(nn.relu(fc1(y))))

    key = memory + memory_pos.astype(memory.dtype)
    if self.pre_norm:
      y = cross_norm(x)
      x = x + drop(cross_attn(y + query_pos, key, memory, blocked=blocked, train=train))
      x = x + drop(self_attn(self_norm(x), query_pos, train=train))
      x = x + drop(ffn(ffn_norm(x)))
    else:
      x = cross_norm(x + drop(cross_attn(x + query_pos, key, memory, blocked=blocked,
                                         train=train)))
      x = self_norm(x + drop(self_attn(x, query_pos, train=train)))
      x = ffn_norm(x + drop(ffn(x)))
    return x


class MaskPredictor(nn.Module):
  """Mask logits from normalized query states; official `mask_embed` MLP + einsum.

  transformers' `Mask2FormerMaskPredictor`: a 3-layer MLP (ReLU between layers, named
  `mask_embedder_{i}_0` after its `mask_embedder.{i}.0` tensors) maps each query to a mask
  embedding, whose dot product with the per-pixel mask features gives the mask logits,
  accumulated in float32.
  """
  hidden_dim: int
  mask_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_features):
    """x [B, Q, C], mask_features [B, H, W, mask_dim] -> float32 logits [B, Q, H, W].

    Clips: mask_features [B, T, H, W, mask_dim] -> [B, Q, T, H, W] (one embedding per query
    for all frames, the official `einsum("bqc,btchw->bqthw")`).
    """
    dims = (self.hidden_dim, self.hidden_dim, self.mask_dim)
    for i, dim in enumerate(dims):
      x = nn.Dense(dim, dtype=self.dtype, name=f"mask_embedder_{i}_0")(x)
      if i < len(dims) - 1:
        x = nn.relu(x)
    spec = "BQC,BHWC->BQHW" if mask_features.ndim == 4 else "BQC,BTHWC->BQTHW"
    return jnp.einsum(spec, x, mask_features.astype(self.dtype),
                      preferred_element_type=jnp.float32)  # [B, Q, (T,) H, W]


class MaskedAttentionDecoder(nn.Module):
  """The stack of decoder layers with a prediction after every stage.

  transformers' `Mask2FormerMaskedAttentionDecoder`; the loop of the official
  `MultiScaleMaskedTransformerDecoder.forward`. Stage 0 predicts from the learnable query
  features before any layer; stage i+1 follows layer i, which attends to level i % 3.
  """
  hidden_dim: int
  num_heads: int
  dim_feedforward: int
  num_layers: int
  mask_dim: int
  pre_norm: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False  # recompute each layer's activations in the backward pass

  @nn.compact
  def __call__(self, x, query_pos, memories, memory_pos, level_sizes, mask_features, *,
               train=False):
    """Runs all layers.

    Args:
      x: [B, Q, C] initial query features.
      query_pos: [B, Q, C] query position embedding.
      memories: 3 arrays [B, S_l, C], one per level (S_l = h_l * w_l, or T * h_l * w_l).
      memory_pos: 3 arrays [S_l, C].
      level_sizes: 3 (h_l, w_l) pairs.
      mask_features: [B, H, W, mask_dim] (or [B, T, H, W, mask_dim] for clips).
      train: enables dropout.

    Returns:
      hidden_states [L+1, B, Q, C] (after `layernorm`) and mask logits [L+1, B, Q, H, W]
      (or [L+1, B, Q, T, H, W]; float32). The attention masks are sown as
      `intermediates/attention_masks` ([B, Q, (T,) h, w] bool per layer) for inspection.
    """
    layernorm = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="layernorm")
    mask_predictor = MaskPredictor(self.hidden_dim, self.mask_dim, self.dtype,
                                   name="mask_predictor")

    def predict(state, level):
      normed = layernorm(state)
      masks = mask_predictor(normed, mask_features)
      return normed, masks, attention_mask(masks, *level_sizes[level])

    layer = remat_block(DecoderLayer, self.remat, static_argnums=(6,))  # train
    normed, masks, blocked = predict(x, 0)
    all_states, all_masks = [normed], [masks]
    for i in range(self.num_layers):
      level = i % NUM_FEATURE_LEVELS
      self.sow("intermediates", "attention_masks", blocked)
      b, q = blocked.shape[:2]
      x = layer(self.hidden_dim, self.num_heads, self.dim_feedforward, self.pre_norm,
                       self.dropout, self.dtype, name=f"layers_{i}")(
                           x, query_pos, memories[level], memory_pos[level],
                           blocked.reshape(b, q, -1), train)
      normed, masks, blocked = predict(x, (i + 1) % NUM_FEATURE_LEVELS)
      all_states.append(normed)
      all_masks.append(masks)
    return jnp.stack(all_states), jnp.stack(all_masks)


class TransformerModule(nn.Module):
  """Mask2Former's transformer decoder with its inputs; transformers' `Mask2FormerTransformerModule`.

  Attributes:
    num_queries: Q, number of learnable queries.
    hidden_dim: C.
    num_heads: attention heads.
    dim_feedforward: hidden width of the FFNs.
    num_layers: decoder layers L actually built: official DEC_LAYERS - 1, i.e.
      transformers' `config.decoder_layers - 1`.
    mask_dim: channels of the mask features.
    pre_norm: official PRE_NORM.
    enforce_input_projection: 1x1 input projections even when the input channels equal C.
    dropout: dropout rate of the attention probabilities and block outputs when `train`
      (0.0 in the official model).
    dtype: computation dtype; softmax, normalization statistics, mask logits and the
      attention-mask decision stay float32.
    remat: recompute each decoder layer's activations in the backward pass (`train.remat`;
      `m2f_jax.models.remat`): less memory, same values and variables.
  """
  num_queries: int
  hidden_dim: int
  num_heads: int
  dim_feedforward: int
  num_layers: int
  mask_dim: int
  pre_norm: bool = False
  enforce_input_projection: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, multi_scale_features: Sequence[jnp.ndarray], mask_features: jnp.ndarray,
               *, train: bool = False):
    """Predicts query states and masks after every stage.

    Args:
      multi_scale_features: 3 arrays [B, h_l, w_l, C_in], coarsest first (the order the pixel
        decoder returns them); layer i attends to level i % 3. Clips: [B, T, h_l, w_l, C_in]
        (the video decoder: memory over all T frames, 3D position encoding).
      mask_features: [B, H, W, mask_dim] per-pixel mask features (stride 4); clips:
        [B, T, H, W, mask_dim].
      train: enables dropout (needs a 'dropout' rng when `dropout` > 0).

    Returns:
      hidden_states: [L+1, B, Q, C] query states after the decoder's final layernorm (input
        of the class head); entry 0 comes from the learnable queries before any layer.
      pred_masks: [L+1, B, Q, H, W] float32 mask logits ([L+1, B, Q, T, H, W] for clips).
    """
    if len(multi_scale_features) != NUM_FEATURE_LEVELS:
      raise ValueError(f"TransformerModule: expected {NUM_FEATURE_LEVELS} feature levels, got "
                       f"{len(multi_scale_features)}.")
    shapes = [tuple(f.shape) for f in multi_scale_features]
    rank = len(shapes[0])
    batch, in_channels = shapes[0][0], shapes[0][-1]
    frames = shapes[0][1:-3]  # () for images, (T,) for clips
    if rank not in (4, 5) or any(len(s) != rank or s[0] != batch or s[1:-3] != frames
                                 or s[-1] != in_channels for s in shapes):
      raise ValueError("TransformerModule: multi_scale_features must be [B, h, w, C] (images) "
                       "or [B, T, h, w, C] (clips) arrays with one batch size, frame count and "
                       f"channel count, got shapes {shapes}.")
    if mask_features.ndim != rank or mask_features.shape[:rank - 3] != (batch, *frames) or (
        mask_features.shape[-1] != self.mask_dim):
      raise ValueError(f"TransformerModule: mask_features must be [B={batch}, "
                       f"{''.join(f'T={t}, ' for t in frames)}H, W, mask_dim={self.mask_dim}] "
                       f"like the features, got {mask_features.shape}.")

    c = self.hidden_dim
    embed_init = nn.initializers.normal(1.0)  # torch nn.Embedding's default
    level_embed = nn.Embed(NUM_FEATURE_LEVELS, c, embedding_init=embed_init,
                           name="level_embed").embedding  # [3, C]
    project = in_channels != c or self.enforce_input_projection
    memories, memory_pos, level_sizes = [], [], []
    for i, features in enumerate(multi_scale_features):
      h, w = features.shape[-3:-1]
      level_sizes.append((h, w))
      if frames:  # [T*h*w, C], frame-major
        pos = sine_position_embedding_3d(frames[0], h, w, c // 2)
      else:
        pos = sine_position_embedding(h, w, c // 2)
      memory_pos.append(pos.reshape(-1, c))  # [S, C]
      x = features.astype(self.dtype).reshape(-1, h, w, in_channels)  # frames into the batch
      if project:
        x = Conv(c, 1, dtype=self.dtype, kernel_init=_xavier, name=f"input_projections_{i}")(x)
      x = x + level_embed[i].astype(self.dtype)
      memories.append(x.reshape(batch, -1, c))  # [B, S, C]

    def queries(name):  # [B, Q, C]
      table = nn.Embed(self.num_queries, c, embedding_init=embed_init, name=name).embedding
      return jnp.broadcast_to(table.astype(self.dtype), (batch, self.num_queries, c))

    query_pos = queries("queries_embedder")
    query_features = queries("queries_features")
    decoder = MaskedAttentionDecoder(
        hidden_dim=c, num_heads=self.num_heads, dim_feedforward=self.dim_feedforward,
        num_layers=self.num_layers, mask_dim=self.mask_dim, pre_norm=self.pre_norm,
        dropout=self.dropout, dtype=self.dtype, remat=self.remat, name="decoder")
    return decoder(query_features, query_pos, memories, memory_pos, level_sizes,
                   mask_features, train=train)

