"""Multi-scale deformable attention.

Checked against a direct per-point loop (no torch needed), transformers'
`multi_scale_deformable_attention` and its deformable attention module, values and gradients.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.convert.core import abstract_variables
from m2f_jax.convert.core import state_dict_to_variables
from m2f_jax.models.ms_deform_attn import MSDeformAttn
from m2f_jax.models.ms_deform_attn import IMPLS
from m2f_jax.models.ms_deform_attn import MATMUL_CHUNK_ENTRIES
from m2f_jax.models.ms_deform_attn import multi_scale_deformable_attention
from m2f_jax.models.ms_deform_attn import multi_scale_deformable_attention_matmul
from tests import reference

SHAPES = ((3, 5), (2, 3), (1, 2))  # (H_l, W_l), non-square, one level a single row


def _direct_msda(value, shapes, locations, weights):
  """Deformable attention as a sum over queries, heads, levels, points and the 4 corners."""
  batch, _, num_heads, head_dim = value.shape
  _, num_queries, _, num_levels, num_points, _ = locations.shape
  starts = np.cumsum([0] + [h * w for h, w in shapes])
  out = np.zeros((batch, num_queries, num_heads, head_dim), np.float64)
  for b in range(batch):
    for q in range(num_queries):
      for n in range(num_heads):
        for lvl, (height, width) in enumerate(shapes):
          level = value[b, starts[lvl]:starts[lvl + 1], n].reshape(height, width, head_dim)
          for p in range(num_points):
            x = locations[b, q, n, lvl, p, 0] * width - 0.5
            y = locations[b, q, n, lvl, p, 1] * height - 0.5
            x0, y0 = math.floor(x), math.floor(y)
            for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
              for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                if 0 <= xx < width and 0 <= yy < height:
                  out[b, q, n] += weights[b, q, n, lvl, p] * wy * wx * level[yy, xx]
  return out.reshape(batch, num_queries, num_heads * head_dim)


def _msda_inputs(seed, batch=2, num_queries=5, num_heads=2, head_dim=3, num_points=2):
  rng = np.random.default_rng(seed)
  seq_len = sum(h * w for h, w in SHAPES)
  value = rng.normal(size=(batch, seq_len, num_heads, head_dim)).astype(np.float32)
  locations = rng.uniform(-0.2, 1.2, size=(batch, num_queries, num_heads, len(SHAPES),
                                           num_points, 2)).astype(np.float32)
  locations[0, 0, 0, :, 0] = (0.0, 0.0)  # exact borders
  locations[0, 0, 1, :, 1] = (1.0, 1.0)
  logits = rng.normal(size=(batch, num_queries, num_heads, len(SHAPES) * num_points))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  weights = weights.reshape(locations.shape[:-1]).astype(np.float32)
  return value, locations, weights


_msda = jax.jit(multi_scale_deformable_attention, static_argnums=1)


# ------------------------------------------------------------------------- deformable attention


def test_msda_matches_direct_computation():
  value, locations, weights = _msda_inputs(3)
  got = np.asarray(_msda(value, SHAPES, locations, weights))
  assert got.shape == (2, 5, 6)
  np.testing.assert_allclose(got, _direct_msda(value, SHAPES, locations, weights), atol=1e-5)


def test_msda_rejects_wrong_shapes():
  value, locations, weights = _msda_inputs(3)
  with pytest.raises(ValueError, match="spatial_shapes"):
    multi_scale_deformable_attention(value, ((3, 5), (2, 3), (2, 2)), locations, weights)


def test_msda_matches_transformers_values_and_gradients():
  torch = reference.require_reference()
  from transformers.models.mask2former.modeling_mask2former import (
      multi_scale_deformable_attention as ref_msda)
  value, locations, weights = _msda_inputs(4)
  cotangent = np.random.default_rng(5).normal(size=(2, 5, 6)).astype(np.float32)

  def loss(v, loc, w):
    return jnp.sum(multi_scale_deformable_attention(v, SHAPES, loc, w) * cotangent)

  got = np.asarray(_msda(value, SHAPES, locations, weights))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(value, locations, weights)

  with torch.enable_grad():
    tensors = [torch.tensor(a, requires_grad=True) for a in (value, locations, weights)]
    want = ref_msda(tensors[0], list(SHAPES), tensors[1], tensors[2])
    (want * torch.tensor(cotangent)).sum().backward()
  np.testing.assert_allclose(got, reference.to_numpy(want), atol=1e-5)
  for name, g, t in zip(("value", "sampling_locations", "attention_weights"), grads, tensors):
    assert np.all(np.isfinite(np.asarray(g))), name
    np.testing.assert_allclose(np.asarray(g), reference.to_numpy(t.grad), atol=1e-4, err_msg=name)


def test_sampling_offsets_initialization_is_the_official_one():
  """Head h starts along angle 2*pi*h/N (scaled so the larger coordinate is 1), point p at p+1."""
  model = MSDeformAttn(embed_dim=8, num_heads=4, num_levels=2, num_points=3)
  shapes = ((2, 2), (1, 1))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 8)), jnp.zeros((1, 5, 2, 2)),
                         jnp.zeros((1, 5, 8)), shapes)
  params = variables["params"]
  bias = np.asarray(params["sampling_offsets"]["bias"]).reshape(4, 2, 3, 2)
  directions = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
  want = directions[:, None, None, :] * np.arange(1, 4)[None, None, :, None]
  np.testing.assert_allclose(bias, np.broadcast_to(want, bias.shape), atol=1e-6)
  assert not np.any(np.asarray(params["sampling_offsets"]["kernel"]))
  assert not np.any(np.asarray(params["attention_weights"]["kernel"]))


def test_module_matches_transformers():
  torch = reference.require_reference()
  from transformers.models.mask2former.modeling_mask2former import (
      Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention as RefAttention)
  embed_dim, num_heads, num_points = 16, 4, 2
  ref = RefAttention(embed_dim=embed_dim, num_heads=num_heads, n_levels=len(SHAPES),
                     n_points=num_points).eval()
  reference.perturb_(ref, seed=0, scale=0.3)
  rng = np.random.default_rng(6)
  seq_len = sum(h * w for h, w in SHAPES)
  hidden = rng.normal(size=(2, seq_len, embed_dim)).astype(np.float32)
  pos = rng.normal(size=(2, seq_len, embed_dim)).astype(np.float32)
  ref_points = rng.uniform(0, 1, size=(2, seq_len, len(SHAPES), 2)).astype(np.float32)
  want, _ = ref(hidden_states=torch.tensor(hidden), encoder_hidden_states=torch.tensor(hidden),
                position_embeddings=torch.tensor(pos), reference_points=torch.tensor(ref_points),
                spatial_shapes_list=list(SHAPES))

  model = MSDeformAttn(embed_dim=embed_dim, num_heads=num_heads, num_levels=len(SHAPES),
                       num_points=num_points)
  args = (jnp.asarray(hidden + pos), jnp.asarray(ref_points), jnp.asarray(hidden), SHAPES)
  variables = state_dict_to_variables(ref.state_dict(), abstract_variables(model, *args),
                                      source="transformers deformable attention")
  got = np.asarray(model.apply(variables, *args))
  np.testing.assert_allclose(got, reference.to_numpy(want), atol=1e-5)


# ------------------------------------------------------------- "matmul" formulation (parity)


def _values_and_grads(fn, value, locations, weights, cotangent):
  def loss(v, loc, w):
    return jnp.sum(fn(v, SHAPES, loc, w) * cotangent)

  out = jax.jit(fn, static_argnums=1)(value, SHAPES, locations, weights)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(value, locations, weights)
  return np.asarray(out), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("chunk_entries", [MATMUL_CHUNK_ENTRIES, 240])
def test_matmul_formulation_matches_gather_values_and_gradients(chunk_entries):
  """Same outputs and gradients (value, sampling locations, attention weights) as "gather",
  in one query chunk and in chunks of 2 queries (240 entries / (B*N*max(H*W)*P = 120); 5
  queries: the last chunk padded), points outside the maps and on their borders included."""
  value, locations, weights = _msda_inputs(7)
  cotangent = np.random.default_rng(8).normal(size=(2, 5, 6)).astype(np.float32)
  matmul = functools.partial(multi_scale_deformable_attention_matmul,
                             chunk_entries=chunk_entries)
  want, want_grads = _values_and_grads(multi_scale_deformable_attention, value, locations,
                                       weights, cotangent)
  got, got_grads = _values_and_grads(matmul, value, locations, weights, cotangent)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(got, _direct_msda(value, SHAPES, locations, weights), atol=1e-5)
  for name, g, w in zip(("value", "sampling_locations", "attention_weights"), got_grads,
                        want_grads):
    np.testing.assert_allclose(g, w, atol=1e-4, err_msg=name)


def test_module_impls_agree_and_bad_impl_is_named():
  """MSDeformAttn(impl="matmul") has the parameters of "gather" and its outputs (float32 and
  bfloat16 to bfloat16 rounding)."""
  rng = np.random.default_rng(9)
  seq_len = sum(h * w for h, w in SHAPES)
  hidden = jnp.asarray(rng.normal(size=(2, seq_len, 16)).astype(np.float32))
  ref_points = jnp.asarray(rng.uniform(0, 1, size=(2, seq_len, len(SHAPES), 2)), jnp.float32)
  args = (hidden, ref_points, hidden, SHAPES)
  kwargs = dict(embed_dim=16, num_heads=4, num_levels=len(SHAPES), num_points=2)
  variables = MSDeformAttn(**kwargs).init(jax.random.PRNGKey(0), *args)
  # Non-zero offset and weight kernels, so points spread and weights differ.
  variables = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                           variables)
  for dtype, atol in ((jnp.float32, 1e-5), (jnp.bfloat16, 0.05)):
    outs = {impl: np.asarray(MSDeformAttn(**kwargs, dtype=dtype, impl=impl).apply(
        variables, *args).astype(jnp.float32)) for impl in IMPLS}
    np.testing.assert_allclose(outs["matmul"], outs["gather"], atol=atol, err_msg=str(dtype))
  with pytest.raises(ValueError, match="deform_attn_impl"):
    MSDeformAttn(**kwargs, impl="scatter").apply(variables, *args)
