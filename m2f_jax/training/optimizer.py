"""AdamW as the official Mask2Former `build_optimizer`, with regex rules on parameter paths.

  * learning rate x `backbone_multiplier` (0.1) for the backbone (`pixel_level_module/encoder`);
  * no weight decay on normalization layers (their scale and bias), on nn.Embed tables
    (queries, the decoder's level embedding) and on Swin's relative position tables,
    exactly where the official code sets weight_decay_norm / weight_decay_embed = 0;
    the pixel decoder's `level_embed` is a plain nn.Parameter there and keeps its decay;
  * the ResNet's frozen BatchNorm scale/bias are buffers in the official model: never updated
    (zero learning rate, no decay);
  * full-model gradient-norm clipping (`clip_grad_norm`, CLIP_TYPE full_model) before AdamW;
  * schedule: step decay (x `decay_factor` at each of `decay_steps`) or poly decay
    (1 - step / max_steps) ** `poly_power`, times Detectron2's linear warm-up over
    `warmup_steps` from `warmup_factor` (optional field, default 1.0 as in every official
    config: SOLVER.WARMUP_FACTOR 1.0, so the official warm-up leaves the rate unchanged).
"""

import re

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

BACKBONE = r"^pixel_level_module/encoder/"
FROZEN = r"^pixel_level_module/encoder/.*/(normalization)/(scale|bias)$"  # ResNet frozen BN
NO_DECAY = (r"/embedding$", r"/relative_position_bias_table$")


def _path_labels(params, fn):
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return flax.traverse_util.unflatten_dict({k: fn("/".join(k)) for k in flat})


def _is_norm_param(params):
  """Normalization layers are the modules with a `scale`: no decay on their scale and bias."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  norms = {k[:-1] for k in flat if k[-1] == "scale"}
  return lambda path: tuple(path.split("/")[:-1]) in norms


def learning_rate_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
  base = cfg.learning_rate

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if cfg.lr_schedule == "poly":
      # (max_steps - step) is exact in float32; 1 - step / max_steps loses digits at the end.
      decay = ((cfg.max_steps - jnp.minimum(step, cfg.max_steps)) / cfg.max_steps) ** cfg.poly_power
    elif cfg.lr_schedule == "step":
      decay = cfg.decay_factor ** sum((step >= s).astype(jnp.float32) for s in cfg.decay_steps)
    else:
      raise ValueError(f"optim.lr_schedule must be 'poly' or 'step', got {cfg.lr_schedule!r}")
    if cfg.warmup_steps:  # Detectron2's linear warm-up: warmup_factor -> 1 over warmup_steps
      alpha = step / cfg.warmup_steps
      factor = cfg.warmup_factor
      warmup = jnp.where(step < cfg.warmup_steps, factor * (1.0 - alpha) + alpha, 1.0)
    else:
      warmup = 1.0
    return base * decay * warmup

  return schedule


def parameter_rules(cfg: ml_collections.ConfigDict, params):
  """`(decay_mask, lr_scale)`: trees like `params` of bools (weight decay applies) and of
  learning-rate multipliers (the backbone's, 0 for frozen normalization)."""
  is_norm = _is_norm_param(params)
  decay_mask = _path_labels(params, lambda p: not (
      is_norm(p) or re.search(FROZEN, p) or any(re.search(r, p) for r in NO_DECAY)))
  lr_scale = _path_labels(params, lambda p: 0.0 if re.search(FROZEN, p) else (
      cfg.backbone_multiplier if re.search(BACKBONE, p) else 1.0))
  return decay_mask, lr_scale


def make_optimizer(cfg: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """The optax transformation for `params` (a pytree of the model's "params" collection)."""
  if cfg.optimizer != "adamw":
    raise ValueError(f"optim.optimizer must be 'adamw', got {cfg.optimizer!r}")
  decay_mask, lr_scale = parameter_rules(cfg, params)
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_grad_norm) if cfg.clip_grad_norm else optax.identity(),
      optax.adamw(learning_rate_schedule(cfg), b1=0.9, b2=0.999, eps=1e-8,
                  weight_decay=cfg.weight_decay, mask=decay_mask),
      _scale_by_tree(lr_scale),  # frozen: 0 (their gradient is 0 and they get no decay)
  )


def _scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its own constant (per-parameter learning-rate multiplier)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
