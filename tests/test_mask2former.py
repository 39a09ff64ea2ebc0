"""The assembled network: output contract, bfloat16 option, input checks (no reference needed)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.models.mask2former import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  spec = importlib.util.spec_from_file_location("tiny", os.path.join(ROOT, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_config().model
  model = build_model(cfg)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 96, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
  return cfg, model, variables, images


def test_output_contract(tiny):
  cfg, model, variables, images = tiny
  out = jax.jit(model.apply)(variables, images)
  q, k, layers = cfg.num_queries, cfg.num_classes, cfg.decoder_layers - 1
  assert out["pred_logits"].shape == (2, q, k + 1)
  assert out["pred_masks"].shape == (2, q, 16, 24)
  assert out["aux_logits"].shape == (layers, 2, q, k + 1)
  assert out["aux_masks"].shape == (layers, 2, q, 16, 24)
  assert all(v.dtype == jnp.float32 for v in out.values())
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


def test_bfloat16_compute_keeps_float32_params(tiny):
  cfg, _, variables, images = tiny
  cfg = cfg.copy_and_resolve_references()
  cfg.dtype = "bfloat16"
  model16 = build_model(cfg)
  init16 = jax.eval_shape(model16.init, jax.random.PRNGKey(1), images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init16["params"]))
  out32 = jax.jit(build_model(tiny[0]).apply)(variables, images)
  out16 = jax.jit(model16.apply)(variables, images)
  assert out16["pred_logits"].dtype == jnp.float32
  for key in ("pred_logits", "pred_masks"):
    a, b = np.asarray(out32[key]), np.asarray(out16[key])
    rel = np.abs(a - b).mean() / np.abs(a).mean()
    assert rel < 0.05, f"{key}: bfloat16 mean relative difference {rel:.3f}"


@pytest.mark.parametrize("shape", [(1, 60, 64, 3), (1, 64, 64, 1)])
def test_rejects_bad_input_shapes(tiny, shape):
  _, model, variables, _ = tiny
  with pytest.raises(ValueError, match="multiples of 32"):
    model.apply(variables, jnp.zeros(shape))


def test_semantic_head_is_a_training_output(tiny):
  cfg = tiny[0].copy_and_resolve_references()
  cfg.semantic_head = True
  model = build_model(cfg)
  images = tiny[3]
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(1), images)
  assert variables["params"]["semantic_head"]["kernel"].shape == (cfg.mask_feature_size,
                                                                  cfg.num_classes)
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
  train = jax.jit(lambda v, x, r: model.apply(v, x, train=True, rngs={"dropout": r}))(
      variables, images, jax.random.PRNGKey(2))
  assert train["semantic_logits"].shape == (2, 16, 24, cfg.num_classes)
  assert "semantic_logits" not in jax.jit(model.apply)(variables, images)  # inference: not returned
