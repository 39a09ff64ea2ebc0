"""Tests of m2f_jax/training/optimizer.py: the official Mask2Former optimizer and schedules.

The official `build_optimizer` (Mask2Former train_net.py) makes one AdamW parameter group per
parameter: learning rate x BACKBONE_MULTIPLIER (0.1) inside the backbone, weight decay 0 for
normalization layers (WEIGHT_DECAY_NORM), nn.Embedding (WEIGHT_DECAY_EMBED) and Swin's
relative position tables, 0.05 elsewhere; the ResNet's FrozenBatchNorm2d holds buffers, not
parameters; the gradients of the whole model are clipped at global norm 0.01 first
(`clip_grad_norm_`). Schedules: Detectron2's WarmupMultiStepLR (COCO) and WarmupPolyLR
(ADE20K, Cityscapes), with SOLVER.WARMUP_FACTOR 1.0.
"""

import bisect

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from m2f_jax import config_lib
from m2f_jax.training import optimizer

LR, WD, EPS = 1e-3, 0.05, 1e-8
# optax takes Adam's bias corrections 1 - 0.999**t in float32 (torch in float64): its first
# updates are lr * (1 + ~6e-6). Absolute tolerance: 2e-5 of an update.
ATOL = 2e-5 * LR

# A small tree with the model's names: (shape, lr multiplier, weight decay) by hand.
SMALL = {
    "pixel_level_module/encoder/embedder/embedder/convolution/kernel": ((3, 3, 3, 4), 0.1, WD),
    "pixel_level_module/encoder/embedder/embedder/normalization/scale": ((4,), 0.0, 0.0),
    "pixel_level_module/encoder/embedder/embedder/normalization/bias": ((4,), 0.0, 0.0),
    "pixel_level_module/encoder/encoder/layers_0/blocks_0/attention/self/"
    "relative_position_bias_table": ((9, 2), 0.1, 0.0),
    "pixel_level_module/encoder/encoder/layers_0/blocks_0/attention/self/query/kernel":
        ((4, 4), 0.1, WD),
    "pixel_level_module/encoder/encoder/layers_0/blocks_0/attention/self/query/bias":
        ((4,), 0.1, WD),
    "pixel_level_module/encoder/encoder/layers_0/blocks_0/layernorm_before/scale":
        ((4,), 0.1, 0.0),
    "pixel_level_module/encoder/encoder/layers_0/blocks_0/layernorm_before/bias":
        ((4,), 0.1, 0.0),
    "pixel_level_module/decoder/level_embed": ((3, 4), 1.0, WD),  # an nn.Parameter: decays
    "pixel_level_module/decoder/adapter_1_0/kernel": ((1, 1, 4, 4), 1.0, WD),
    "pixel_level_module/decoder/adapter_1_1/scale": ((4,), 1.0, 0.0),  # GroupNorm
    "pixel_level_module/decoder/adapter_1_1/bias": ((4,), 1.0, 0.0),
    "transformer_module/queries_features/embedding": ((5, 4), 1.0, 0.0),
    "transformer_module/level_embed/embedding": ((3, 4), 1.0, 0.0),
    "transformer_module/decoder/layers_0/cross_attn/in_proj_weight": ((12, 4), 1.0, WD),
    "transformer_module/decoder/layers_0/cross_attn/in_proj_bias": ((12,), 1.0, WD),
    "transformer_module/decoder/layers_0/final_layer_norm/scale": ((4,), 1.0, 0.0),
    "transformer_module/decoder/layers_0/final_layer_norm/bias": ((4,), 1.0, 0.0),
    "class_predictor/kernel": ((4, 7), 1.0, WD),
    "class_predictor/bias": ((7,), 1.0, WD),
}


def _optim_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = config_lib.optim_config(max_steps=100, lr_schedule="step")
  cfg.update(learning_rate=LR, warmup_steps=0, clip_grad_norm=0.0)
  cfg.update(overrides)
  return cfg


def _unflatten(flat: dict) -> dict:
  return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _flatten(tree) -> dict:
  return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _random(shapes: dict, seed: int, scale: float = 1.0) -> dict:
  rng = np.random.default_rng(seed)
  return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def _run(cfg, params: dict, grads_seq: list[dict]) -> dict:
  """The optimizer's parameters after applying each gradient (flat dicts) in turn."""
  tx = optimizer.make_optimizer(cfg, _unflatten(params))

  @jax.jit
  def step(p, state, grads):
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state

  p = _unflatten({k: jnp.asarray(v) for k, v in params.items()})
  state = tx.init(p)
  for grads in grads_seq:
    p, state = step(p, state, _unflatten({k: jnp.asarray(v) for k, v in grads.items()}))
  return _flatten(p)


def _torch_adamw(params: dict, grads_seq: list[dict], *, rules: dict, lr_at, clip: float):
  """AdamW as torch.optim.AdamW computes it, after `clip_grad_norm_` over all gradients."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    g = {k: x.astype(np.float64) for k, x in grads.items()}
    if clip:
      norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
      g = {k: x * min(1.0, clip / (norm + 1e-6)) for k, x in g.items()}
    for k in p:
      mult, wd = rules[k]
      lr = lr_at(t - 1) * mult
      m[k] = 0.9 * m[k] + 0.1 * g[k]
      v2[k] = 0.999 * v2[k] + 0.001 * g[k]**2
      p[k] = p[k] * (1 - lr * wd)
      denom = np.sqrt(v2[k]) / np.sqrt(1 - 0.999**t) + EPS
      p[k] = p[k] - lr / (1 - 0.9**t) * m[k] / denom
  return p


def _assert_close(actual: dict, expected: dict, rtol=2e-6, atol=ATOL):
  assert actual.keys() == expected.keys()
  for k in expected:
    np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=k)


def test_first_step_by_hand():
  """One AdamW step: p - lr * mult * (g / (|g| + eps) + wd * p), frozen entries unchanged."""
  shapes = {k: s for k, (s, _, _) in SMALL.items()}
  params, grads = _random(shapes, 0), _random(shapes, 1)
  got = _run(_optim_cfg(), params, [grads])
  for k, (_, mult, wd) in SMALL.items():
    want = params[k] - LR * mult * (grads[k] / (np.abs(grads[k]) + EPS) + wd * params[k])
    np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=ATOL, err_msg=k)
    if mult == 0.0:  # the frozen BatchNorm never moves, whatever its gradient
      np.testing.assert_array_equal(got[k], params[k], err_msg=k)


def test_steps_with_global_norm_clipping_match_torch_adamw():
  """Three steps with gradients above and below the clipping norm, against AdamW by hand.

  The frozen entries get zero gradients, as the model's stop_gradient gives them (they are
  buffers, outside the clipped norm, in the official model).
  """
  shapes = {k: s for k, (s, _, _) in SMALL.items()}
  rules = {k: (mult, wd) for k, (_, mult, wd) in SMALL.items()}
  params = _random(shapes, 0)
  grads_seq = []
  for seed, scale in ((1, 3.0), (2, 1e-4), (3, 0.5)):  # norms ~30, ~1e-3 (unclipped), ~5
    g = _random(shapes, seed, scale)
    grads_seq.append({k: x * (rules[k][0] > 0) for k, x in g.items()})
  norms = [np.sqrt(sum(np.sum(x**2) for x in g.values())) for g in grads_seq]
  assert norms[0] > 0.01 > norms[1] and norms[2] > 0.01
  got = _run(_optim_cfg(clip_grad_norm=0.01), params, grads_seq)
  want = _torch_adamw(params, grads_seq, rules=rules, lr_at=lambda s: LR, clip=0.01)
  _assert_close(got, want)
  # Without clipping the result differs: the clipping is really applied.
  unclipped = _torch_adamw(params, grads_seq, rules=rules, lr_at=lambda s: LR, clip=0.0)
  assert max(np.abs(got[k] - unclipped[k]).max() for k in got) > 1e-4


def test_steps_match_torch_adamw_with_param_groups():
  """The same three steps with torch.optim.AdamW, one parameter group per tensor."""
  from tests import reference  # pylint: disable=g-import-not-at-top
  torch = reference.require_reference()
  shapes = {k: s for k, (s, _, _) in SMALL.items()}
  params = _random(shapes, 0)
  grads_seq = [_random(shapes, seed, scale) for seed, scale in ((1, 3.0), (2, 1e-4), (3, 0.5))]
  for g in grads_seq:  # frozen: buffers in the official model, no gradient
    for k, (_, mult, _) in SMALL.items():
      g[k] = g[k] * (mult > 0)
  with torch.enable_grad():
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    groups = [{"params": [tensors[k]], "lr": LR * mult, "weight_decay": wd}
              for k, (_, mult, wd) in SMALL.items() if mult > 0]
    opt = torch.optim.AdamW(groups, lr=LR)
    trainable = [tensors[k] for k, (_, mult, _) in SMALL.items() if mult > 0]
    for grads in grads_seq:
      for k in tensors:
        tensors[k].grad = torch.from_numpy(grads[k].copy())
      torch.nn.utils.clip_grad_norm_(trainable, 0.01)
      opt.step()
  want = {k: t.detach().numpy() for k, t in tensors.items()}
  got = _run(_optim_cfg(clip_grad_norm=0.01), params, grads_seq)
  _assert_close(got, want)


# ------------------------------------------------------------------------------------------
# The rules on the real parameter trees, against the official rule on transformers' modules
# ------------------------------------------------------------------------------------------


def _official_rules(hf_model, torch) -> dict[str, tuple[float, float]]:
  """{torch parameter name: (lr multiplier, weight decay)} by the official build_optimizer.

  The official backbone is transformers' `model.pixel_level_module.encoder`; its BatchNorm
  layers are Detectron2 FrozenBatchNorm2d there (buffers: never updated).
  """
  norm_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d,
                torch.nn.SyncBatchNorm, torch.nn.GroupNorm, torch.nn.InstanceNorm1d,
                torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d, torch.nn.LayerNorm,
                torch.nn.LocalResponseNorm)
  rules = {}
  for module_name, module in hf_model.named_modules():
    backbone = module_name.startswith("model.pixel_level_module.encoder")
    for param_name, _ in module.named_parameters(recurse=False):
      name = f"{module_name}.{param_name}"
      if backbone and isinstance(module, torch.nn.BatchNorm2d):
        rules[name] = (0.0, 0.0)
        continue
      mult, wd = (0.1 if backbone else 1.0), WD
      if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
        wd = 0.0
      if isinstance(module, norm_types) or isinstance(module, torch.nn.Embedding):
        wd = 0.0
      rules[name] = (mult, wd)
  return rules


@pytest.mark.parametrize("backbone", ["resnet", "swin"])
def test_rules_on_the_model_tree_follow_the_official_build_optimizer(backbone):
  """Every parameter of a (small) model: its lr multiplier and decay are the official ones.

  Each transformers tensor is filled with its own index and converted with the project's
  name mapping, which tells which torch parameter each Flax leaf is.
  """
  from tests import reference  # pylint: disable=g-import-not-at-top
  torch = reference.require_reference()
  import transformers  # pylint: disable=g-import-not-at-top
  from m2f_jax.convert import hf  # pylint: disable=g-import-not-at-top
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  stages = ["stage1", "stage2", "stage3", "stage4"]
  if backbone == "swin":
    bb = transformers.SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                                 window_size=4, out_features=stages)
  else:
    bb = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64],
                                   depths=[1, 1, 1, 1], layer_type="bottleneck",
                                   out_features=stages)
  hf_cfg = transformers.Mask2FormerConfig(
      backbone_config=bb, feature_size=32, mask_feature_size=32, hidden_dim=32,
      encoder_feedforward_dim=48, encoder_layers=1, decoder_layers=3, num_attention_heads=4,
      dim_feedforward=40, num_queries=5, num_labels=3)
  hf_model = transformers.Mask2FormerForUniversalSegmentation(hf_cfg)
  rules = _official_rules(hf_model, torch)
  names = sorted(rules)
  state = {}
  for name, tensor in hf_model.state_dict().items():
    code = names.index(name) + 1 if name in rules else 0
    state[name] = np.full(tuple(tensor.shape), code, np.float32)
  model = build_model(hf.hf_config_to_model_config(hf_cfg.to_dict()))
  coded = _flatten(hf.hf_variables(model, state)["params"])
  expected = {}
  for path, leaf in coded.items():
    codes = np.unique(leaf)
    assert codes.size == 1 and codes[0] > 0, (path, codes)
    expected[path] = rules[names[int(codes[0]) - 1]]
  if backbone == "swin":
    assert any(p.endswith("relative_position_bias_table") for p in expected)
  else:
    assert sum(r == (0.0, 0.0) for r in expected.values()) > 10
  # One step with zero clipping: the multiplier and the decay show in the update.
  params = _random({k: v.shape for k, v in coded.items()}, 0)
  grads = _random({k: v.shape for k, v in coded.items()}, 1)
  got = _run(_optim_cfg(), params, [grads])
  for k, (mult, wd) in expected.items():
    want = params[k] - LR * mult * (grads[k] / (np.abs(grads[k]) + EPS) + wd * params[k])
    np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=ATOL,
                               err_msg=f"{k}: expected lr x{mult}, weight decay {wd}")


# ------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------


def _d2_warmup(step, warmup_iters, warmup_factor):
  """Detectron2's `_get_warmup_factor_at_iter` ("linear")."""
  if step >= warmup_iters:
    return 1.0
  alpha = step / warmup_iters
  return warmup_factor * (1 - alpha) + alpha


def _schedule(cfg, steps):
  fn = jax.jit(optimizer.learning_rate_schedule(cfg))
  return np.array([float(fn(s)) for s in steps])


def test_multistep_schedule_official_coco_values():
  from configs import coco_panoptic  # pylint: disable=g-import-not-at-top
  cfg = coco_panoptic.get_config("r50").optim
  assert (cfg.learning_rate, cfg.max_steps, list(cfg.decay_steps), cfg.warmup_steps) == (
      1e-4, 368750, [327778, 355092], 10)
  steps = [0, 1, 5, 9, 10, 327777, 327778, 355091, 355092, 368749]
  # WarmupMultiStepLR, GAMMA 0.1, WARMUP_FACTOR 1.0: the warm-up leaves the rate at 1e-4.
  want = [1e-4 * 0.1 ** bisect.bisect_right(cfg.decay_steps, s) * _d2_warmup(s, 10, 1.0)
          for s in steps]
  np.testing.assert_allclose(_schedule(cfg, steps), want, rtol=1e-6)
  np.testing.assert_allclose(_schedule(cfg, [0, 327778, 355092]), [1e-4, 1e-5, 1e-6],
                             rtol=1e-6)


def test_poly_schedule_official_ade20k_values():
  from configs import ade20k_semantic  # pylint: disable=g-import-not-at-top
  cfg = ade20k_semantic.get_config().optim
  assert (cfg.learning_rate, cfg.max_steps, cfg.poly_power, cfg.warmup_steps) == (
      1e-4, 160000, 0.9, 0)
  steps = [0, 1, 1000, 80000, 159999, 160000]
  # WarmupPolyLR: base_lr * (1 - iter / max_iter) ** 0.9.
  want = [1e-4 * (1 - s / 160000) ** 0.9 for s in steps]
  np.testing.assert_allclose(_schedule(cfg, steps), want, rtol=2e-6)


def test_linear_warmup_from_a_factor_as_detectron2():
  cfg = _optim_cfg(lr_schedule="poly", warmup_steps=1000, max_steps=20000, learning_rate=1e-4)
  cfg.warmup_factor = 0.001  # WarmupPolyLR's default
  steps = [0, 1, 500, 999, 1000, 5000]
  want = [1e-4 * _d2_warmup(s, 1000, 0.001) * (1 - s / 20000) ** 0.9 for s in steps]
  np.testing.assert_allclose(_schedule(cfg, steps), want, rtol=2e-6)
