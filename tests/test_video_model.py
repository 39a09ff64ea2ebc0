"""The video model: 3D position encoding, video masked-attention decoder, VideoMask2Former.

The decoder is compared with a direct computation of the official
`VideoMultiScaleMaskedTransformerDecoder` semantics written here in sequence-first form
(memory = (T x HW) positions frame-major, masks `bqc,btchw->bqthw`, attention mask flattened
over T x h x w and reset only when a query's mask is empty in every frame), and with T = 1
against the image decoder.
"""

import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax import config_lib
from m2f_jax.models import transformer_decoder
from m2f_jax.models.mask2former import build_model
from m2f_jax.models.position_encoding import sine_position_embedding
from m2f_jax.models.position_encoding import sine_position_embedding_3d

C, HEADS, Q, LAYERS = 16, 2, 5, 4
TOL = 1e-4


def test_3d_encoding_matches_formula():
  t, h, w, f = 3, 4, 5, 8
  got = np.asarray(sine_position_embedding_3d(t, h, w, f))
  assert got.shape == (t, h, w, 2 * f)
  scale, eps = 2 * math.pi, 1e-6
  for ti in range(t):
    for yi in range(h):
      for xi in range(w):
        z = (ti + 1) / (t + eps) * scale
        y = (yi + 1) / (h + eps) * scale
        x = (xi + 1) / (w + eps) * scale
        want = np.zeros(2 * f)
        for i in range(f):
          trig = math.sin if i % 2 == 0 else math.cos
          want[i] += trig(y / 10000 ** (2 * (i // 2) / f))
          want[f + i] += trig(x / 10000 ** (2 * (i // 2) / f))
        for i in range(2 * f):
          trig = math.sin if i % 2 == 0 else math.cos
          want[i] += trig(z / 10000 ** (2 * (i // 2) / (2 * f)))
        np.testing.assert_allclose(got[ti, yi, xi], want, atol=1e-5)


def test_video_attention_mask_resets_only_rows_empty_in_all_frames():
  logits = np.full((1, 3, 2, 4, 4), -5.0, np.float32)  # [B, Q, T, H, W]
  logits[0, 0, 1, :2, :2] = 5.0  # query 0: empty in frame 0, not in frame 1
  # query 1: empty in both frames -> attends everywhere
  logits[0, 2] = 5.0  # query 2: full everywhere
  blocked = np.asarray(transformer_decoder.attention_mask(jnp.asarray(logits), 2, 2))
  assert blocked.shape == (1, 3, 2, 2, 2)
  assert blocked[0, 0, 0].all() and not blocked[0, 0, 1, 0, 0] and blocked[0, 0, 1, 1, 1]
  assert not blocked[0, 1].any()
  assert not blocked[0, 2].any()


def _module():
  return transformer_decoder.TransformerModule(
      num_queries=Q, hidden_dim=C, num_heads=HEADS, dim_feedforward=24, num_layers=LAYERS,
      mask_dim=C)


def _clip_inputs(t, seed=0):
  rng = np.random.RandomState(seed)
  sizes = [(2, 3), (4, 6), (8, 12)]
  feats = [jnp.asarray(rng.randn(2, t, h, w, C), jnp.float32) for h, w in sizes]
  mask_features = jnp.asarray(rng.randn(2, t, 16, 24, C), jnp.float32)
  return feats, mask_features


@pytest.fixture(scope="module")
def decoder_params():
  feats, mask_features = _clip_inputs(2)
  return _module().init(jax.random.PRNGKey(1), feats, mask_features)


def _layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _mha(q, k, v, wq, bq, wk, bk, wv, bv, out, mask=None):
  """torch nn.MultiheadAttention, sequence-first [L, B, C] -> [L, B, C] (weights [out, in])."""
  q, k, v = q @ wq.T + bq, k @ wk.T + bk, v @ wv.T + bv
  d = C // HEADS
  split = lambda x: x.reshape(x.shape[0], x.shape[1], HEADS, d).transpose(1, 2, 0, 3)  # B N L d
  logits = np.einsum("bnqd,bnkd->bnqk", split(q) / np.sqrt(d), split(k))
  if mask is not None:  # [B, Q, S] True = blocked
    logits = np.where(mask[:, None], -np.inf, logits)
  logits = logits - logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  probs = probs / probs.sum(-1, keepdims=True)
  o = np.einsum("bnqk,bnkd->bnqd", probs, split(v)).transpose(2, 0, 1, 3).reshape(q.shape)
  return o @ out["kernel"] + out["bias"]


def _official_video_decoder(params, feats, mask_features):
  """The official video decoder's forward, sequence-first, from the Flax parameters."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
  dec = p["decoder"]
  feats = [np.asarray(f, np.float64) for f in feats]
  mf = np.asarray(mask_features, np.float64)  # [B, T, H, W, C]
  b, t = mf.shape[:2]
  src, pos, sizes = [], [], []
  for i, x in enumerate(feats):
    _, _, h, w, _ = x.shape
    sizes.append((h, w))
    # NTxCxHW -> (T x HW) x N x C, frame-major
    s = x + p["level_embed"]["embedding"][i]
    src.append(s.reshape(b, t * h * w, C).transpose(1, 0, 2))
    pe = np.asarray(sine_position_embedding_3d(t, h, w, C // 2), np.float64)
    pos.append(np.broadcast_to(pe.reshape(t * h * w, 1, C), (t * h * w, b, C)))
  query_embed = np.repeat(p["queries_embedder"]["embedding"][:, None], b, 1)  # [Q, B, C]
  output = np.repeat(p["queries_features"]["embedding"][:, None], b, 1)

  def heads(output, size):
    normed = _layer_norm(output, dec["layernorm"]).transpose(1, 0, 2)  # [B, Q, C]
    x = normed
    for j in range(3):
      layer = dec["mask_predictor"][f"mask_embedder_{j}_0"]
      x = x @ layer["kernel"] + layer["bias"]
      if j < 2:
        x = np.maximum(x, 0)
    masks = np.einsum("bqc,bthwc->bqthw", x, mf)
    resized = np.asarray(jax.image.resize(jnp.asarray(masks, jnp.float32),
                                          (*masks.shape[:3], *size), "linear", antialias=False))
    attn = (1 / (1 + np.exp(-resized))).reshape(b, Q, -1) < 0.5  # flatten(2): T*h*w
    return normed, masks, attn

  states, all_masks = [], []
  normed, masks, attn = heads(output, sizes[0])
  states.append(normed)
  all_masks.append(masks)
  for i in range(LAYERS):
    level = i % 3
    attn[np.where(attn.sum(-1) == attn.shape[-1])] = False
    lp = dec[f"layers_{i}"]
    ca = lp["cross_attn"]
    wq, wk, wv = np.split(ca["in_proj_weight"], 3)
    bq, bk, bv = np.split(ca["in_proj_bias"], 3)
    tgt2 = _mha(output + query_embed, src[level] + pos[level], src[level], wq, bq, wk, bk, wv,
                bv, ca["out_proj"], mask=attn)
    output = _layer_norm(output + tgt2, lp["cross_attn_layer_norm"])
    sa = lp["self_attn"]
    qk = output + query_embed
    tgt2 = _mha(qk, qk, output, sa["q_proj"]["kernel"].T, sa["q_proj"]["bias"],
                sa["k_proj"]["kernel"].T, sa["k_proj"]["bias"], sa["v_proj"]["kernel"].T,
                sa["v_proj"]["bias"], sa["out_proj"])
    output = _layer_norm(output + tgt2, lp["self_attn_layer_norm"])
    hidden = np.maximum(output @ lp["fc1"]["kernel"] + lp["fc1"]["bias"], 0)
    output = _layer_norm(output + hidden @ lp["fc2"]["kernel"] + lp["fc2"]["bias"],
                         lp["final_layer_norm"])
    normed, masks, attn = heads(output, sizes[(i + 1) % 3])
    states.append(normed)
    all_masks.append(masks)
  return np.stack(states), np.stack(all_masks)


def test_video_decoder_matches_official_semantics(decoder_params):
  feats, mask_features = _clip_inputs(2, seed=3)
  states, masks = jax.jit(_module().apply)(decoder_params, feats, mask_features)
  assert masks.shape == (LAYERS + 1, 2, Q, 2, 16, 24)
  want_states, want_masks = _official_video_decoder(decoder_params, feats, mask_features)
  np.testing.assert_allclose(np.asarray(states), want_states, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(np.asarray(masks), want_masks, atol=TOL, rtol=TOL)


def test_one_frame_clip_equals_image_decoder(decoder_params):
  """T = 1 agrees with the image decoder except for the 3D encoding's constant frame term,
  which is swapped for the image encoding here; everything else must be identical."""
  feats, mask_features = _clip_inputs(1, seed=4)
  module = _module()
  image_states, image_masks = module.apply(decoder_params, [f[:, 0] for f in feats],
                                           mask_features[:, 0])
  with mock.patch.object(transformer_decoder, "sine_position_embedding_3d",
                         lambda t, h, w, f: sine_position_embedding(h, w, f)[None]):
    states, masks = module.apply(decoder_params, feats, mask_features)
  np.testing.assert_allclose(np.asarray(states), np.asarray(image_states), atol=1e-5)
  np.testing.assert_allclose(np.asarray(masks[:, :, :, 0]), np.asarray(image_masks), atol=1e-5)
  # The first stage (queries only) needs no patch: identical with the real 3D encoding.
  _, real_masks = module.apply(decoder_params, feats, mask_features)
  np.testing.assert_array_equal(np.asarray(real_masks[0, :, :, 0]), np.asarray(image_masks[0]))


def test_video_model_shapes_and_frame_chunks():
  config = config_lib.load_config_file("configs/tiny.py")
  config.model.update(video=True)
  model = build_model(config.model)
  clips = jnp.asarray(np.random.RandomState(0).randn(1, 3, 64, 64, 3), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), clips)
  out = jax.jit(model.apply)(variables, clips)
  k1, q, layers = config.model.num_classes + 1, config.model.num_queries, 3
  assert out["pred_logits"].shape == (1, q, k1)
  assert out["pred_masks"].shape == (1, q, 3, 16, 16)
  assert out["aux_logits"].shape == (layers, 1, q, k1)
  assert out["aux_masks"].shape == (layers, 1, q, 3, 16, 16)
  config.model.frame_chunk = 2  # chunks of 2 + 1 frames: the same function
  chunked = jax.jit(build_model(config.model).apply)(variables, clips)
  for key in out:
    np.testing.assert_allclose(np.asarray(chunked[key]), np.asarray(out[key]), atol=1e-4)
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    model.apply(variables, clips[0])
