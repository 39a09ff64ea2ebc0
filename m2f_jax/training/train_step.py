"""The train state and the train step: forward, matching + criterion, backward, optax update.

`make_train_step(model, tx, config)` returns a pure `step(state, batch) -> (state, metrics)`
that the caller jit-compiles over its mesh (`m2f_jax.sharding`); the loss is normalized by
the number of target masks in the global batch, which under jit over global arrays is a
plain sum.

Video models (`config.model.video`) train on clip batches with the image batch's keys and a
T axis: "images" float32 [B, T, H, W, 3] (normalized as images), "labels" int32 [B, M],
"masks" uint8 [B, M, T, H, W] (0 in the frames where an instance is absent), "valid" bool
[B, M]; the same step runs, with the video matcher and criterion (`m2f_jax.criterion` takes
clips as they come).

Mixed precision (`model.dtype="bfloat16"`): parameters, gradients and optimizer state stay
float32 (master weights); the modules cast them to bfloat16 for their matmuls and
convolutions, and keep normalization statistics, softmaxes and sampling coordinates in
float32; predictions come back float32, and matching and losses run in float32
(tests/test_mixed_precision.py: a tiny run learns as in float32). `train.remat` builds the
model with every repeated block rematerialized (`build_model(..., remat=True)`, which
`abstract_train_state` does): its activations are recomputed block by block in the backward
pass, for the same loss and a lower peak when the step is compiled with
`compiler_options(config)` (tests/test_mixed_precision.py; figures in benchmarks/README.md).
"""

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from m2f_jax import criterion
from m2f_jax import device_batch
from m2f_jax.models.mask2former import build_model
from m2f_jax.training import optimizer as optim_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


class NonFiniteLossError(FloatingPointError):
  pass


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one training example without channels: (H, W), or (T, H, W) for clips."""
  image_shape = tuple(config.data.image_size)
  if config.model.get("video", False):
    return (config.data.num_frames, *image_shape)
  return image_shape


def create_train_state(model, tx, rng, image_shape) -> TrainState:
  """`image_shape`: `input_shape(config)`, (H, W) or (T, H, W)."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape, 3), jnp.float32))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng)


def abstract_train_state(config: ml_collections.ConfigDict):
  """`(model, optimizer, TrainState of ShapeDtypeStructs)` for a config."""
  model = build_model(config.model, remat=config.train.remat)
  image_shape = input_shape(config)
  params_shape = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape, 3))))["params"]
  tx = optim_lib.make_optimizer(config.optim, params_shape)
  abstract = jax.eval_shape(lambda r: create_train_state(model, tx, r, image_shape),
                            jax.random.PRNGKey(0))
  return model, tx, abstract


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, str]:
  """XLA options for compiling the train step: `jax.jit(step, compiler_options=...)`.

  With `train.remat` on the CPU, XLA:CPU's `cse_barrier_expander` pass drops the optimization
  barriers that keep JAX's rematerialized blocks apart from the forward pass, and CSE then
  merges the recomputation back into the forward: no memory saved. Disabling that one pass
  for this compile keeps the recomputation (tests/test_mixed_precision.py). Other platforms,
  and steps without remat, compile as before.
  """
  if config.train.remat and jax.default_backend() == "cpu":
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}
  return {}


def loss_kwargs(loss_cfg: ml_collections.ConfigDict) -> dict:
  return dict(no_object_weight=loss_cfg.no_object_weight, class_weight=loss_cfg.class_weight,
              mask_weight=loss_cfg.mask_weight, dice_weight=loss_cfg.dice_weight,
              num_points=loss_cfg.train_num_points, oversample_ratio=loss_cfg.oversample_ratio,
              importance_sample_ratio=loss_cfg.importance_sample_ratio,
              deep_supervision=loss_cfg.deep_supervision)


def official_video_labels(labels: jax.Array, masks: jax.Array, num_classes: int) -> jax.Array:
  """The official video training's labels: K ("no object") for an instance with no pixel in
  the LAST frame of its clip (`prepare_targets` reads the classes of the last frame, where the
  mapper put a dummy annotation of class `num_classes`). labels [B, M], masks [B, M, T, H, W].
  """
  present_last = jnp.any(masks[:, :, -1] > 0, axis=(-2, -1))  # [B, M]
  return jnp.where(present_last, labels, num_classes).astype(labels.dtype)


def make_loss_fn(model, config: ml_collections.ConfigDict):
  """The training loss: `loss_fn(params, batch_stats, batch, dropout_rng, point_rng)`.

  `batch` is dense ("images", "labels", "masks", "valid": `device_batch.dense_batch`'s
  output); returns `(total_loss, aux)`, aux = {"losses": the criterion's terms (and
  `loss_sem` with the per-pixel class head) and `num_masks`, "outputs": the model's float32
  predictions, "matching": each stage's assignment (`criterion.set_criterion`)}. The train
  step differentiates it; tests/test_training_parity.py compares it with transformers'.
  """
  kwargs = loss_kwargs(config.loss)
  video_absent_last_frame_no_object = config.model.get("video", False) and config.loss.get(
      "video_absent_last_frame_no_object", True)
  semantic_weight = config.loss.get("semantic_weight", 0.0)
  if semantic_weight and not config.model.get("semantic_head", False):
    raise ValueError(f"config.loss.semantic_weight = {semantic_weight} needs the per-pixel "
                     "class head: set config.model.semantic_head = True (or the weight to 0)")

  def loss_fn(params, batch_stats, batch, dropout_rng, point_rng):
    targets = {k: batch[k] for k in ("labels", "masks", "valid")}
    class_labels = targets["labels"]  # before the video relabelling (semantic_loss)
    if video_absent_last_frame_no_object:
      targets["labels"] = official_video_labels(targets["labels"], targets["masks"],
                                                model.num_classes)
    num_masks = criterion.count_masks(batch["valid"])  # global batch: arrays are global
    variables = {"params": params, "batch_stats": batch_stats}
    outputs = model.apply(variables, batch["images"], train=True, rngs={"dropout": dropout_rng})
    # Matching and losses in float32 whatever model.dtype (the models already return
    # float32 predictions; this keeps it so for any model): bf16 computes the network only.
    outputs = jax.tree.map(lambda x: x.astype(jnp.float32), outputs)
    losses = criterion.set_criterion(outputs=outputs, targets=targets, key=point_rng,
                                     num_masks=num_masks, with_matching=True, **kwargs)
    matching = losses.pop("matching")
    losses["num_masks"] = num_masks
    if semantic_weight:
      losses["loss_sem"] = criterion.semantic_loss(
          semantic_logits=outputs["semantic_logits"], target_labels=class_labels,
          target_masks=targets["masks"], valid=targets["valid"])
      losses["total_loss"] = losses["total_loss"] + semantic_weight * losses["loss_sem"]
    return losses["total_loss"], {"losses": losses, "outputs": outputs, "matching": matching}

  return loss_fn


def make_train_step(model, tx, config: ml_collections.ConfigDict):
  """`step(state, batch) -> (state, metrics)`, to be jit-compiled by the caller."""
  loss_fn = make_loss_fn(model, config)
  schedule = optim_lib.learning_rate_schedule(config.optim)
  if config.train.remat and not model.pixel_level_module.decoder.remat:
    raise ValueError("config.train.remat is True but the model was built without it: build "
                     "it with build_model(config.model, remat=True), as abstract_train_state "
                     "does")

  def step(state: TrainState, batch: dict):
    rng, dropout_rng, point_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    batch = device_batch.dense_batch(  # compact batches (the default) are expanded here
        batch, pixel_mean=config.model.pixel_mean, pixel_std=config.model.pixel_std,
        zero_padding=config.data.augmentation == "synthetic")
    grads, aux = jax.grad(
        lambda p: loss_fn(p, state.batch_stats, batch, dropout_rng, point_rng),
        has_aux=True)(state.params)
    losses = aux["losses"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(losses, grad_norm=optax.global_norm(grads),
                   learning_rate=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    return new_state, metrics

  return step


def check_finite(metrics: dict, step: int):
  """Stops training on a NaN or infinite loss, naming the step and the term."""
  bad = [k for k, v in metrics.items() if k.startswith(("loss", "total")) and not math.isfinite(v)]
  if bad:
    raise NonFiniteLossError(
        f"step {step}: non-finite loss in {', '.join(sorted(bad))} "
        f"({', '.join(f'{k}={metrics[k]}' for k in sorted(bad))}); lower optim.learning_rate, "
        "check the data of this step, or resume from the last checkpoint")
