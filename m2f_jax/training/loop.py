"""The train loop: one jit-compiled step over a device mesh, Orbax checkpoints, metrics.

Data parallel over every device of every host: the batch is sharded over the mesh axis
"data", parameters and optimizer state are replicated (or, with `train.shard_params`,
sharded over the same axis, ZeRO-3 style, for large backbones). Each process feeds its own
shard of the global batch (`jax.make_array_from_process_local_data`); the loss is
normalized by the number of target masks in the global batch, which under jit over global
arrays is a plain sum.
"""

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from m2f_jax import checkpoint as model_checkpoint
from m2f_jax import criterion
from m2f_jax.convert import imagenet
from m2f_jax.models.mask2former import build_model
from m2f_jax.training import optimizer as optim_lib

DATA = "data"  # the mesh axis


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


class NonFiniteLossError(FloatingPointError):
  pass


# ------------------------------------------------------------------------------------------
# Mesh and shardings
# ------------------------------------------------------------------------------------------

def make_mesh() -> jax.sharding.Mesh:
  """A 1-d mesh over every device of every process (axis "data")."""
  return jax.make_mesh((jax.device_count(),), (DATA,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _param_spec(x, num_devices: int, shard: bool) -> P:
  """Replicated, or (shard=True) split along the largest axis the device count divides."""
  if not shard or not hasattr(x, "shape") or x.ndim == 0:
    return P()
  for axis in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
    if x.shape[axis] % num_devices == 0 and x.shape[axis] >= num_devices:
      spec = [None] * x.ndim
      spec[axis] = DATA
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh, shard_params: bool):
  n = mesh.devices.size
  return jax.tree.map(lambda x: NamedSharding(mesh, _param_spec(x, n, shard_params)),
                      abstract_state)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def global_batch(local_batch: dict, mesh) -> dict:
  """This process's batch -> global jax.Arrays sharded over "data"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


# ------------------------------------------------------------------------------------------
# State and step
# ------------------------------------------------------------------------------------------

def create_train_state(model, tx, rng, image_shape) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape, 3), jnp.float32))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng)


def abstract_train_state(config: ml_collections.ConfigDict):
  """`(model, optimizer, TrainState of ShapeDtypeStructs)` for a config."""
  model = build_model(config.model)
  image_shape = tuple(config.data.image_size)
  params_shape = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape, 3))))["params"]
  tx = optim_lib.make_optimizer(config.optim, params_shape)
  abstract = jax.eval_shape(lambda r: create_train_state(model, tx, r, image_shape),
                            jax.random.PRNGKey(0))
  return model, tx, abstract


def loss_kwargs(loss_cfg: ml_collections.ConfigDict) -> dict:
  return dict(no_object_weight=loss_cfg.no_object_weight, class_weight=loss_cfg.class_weight,
              mask_weight=loss_cfg.mask_weight, dice_weight=loss_cfg.dice_weight,
              num_points=loss_cfg.train_num_points, oversample_ratio=loss_cfg.oversample_ratio,
              importance_sample_ratio=loss_cfg.importance_sample_ratio,
              deep_supervision=loss_cfg.deep_supervision)


def make_train_step(model, tx, config: ml_collections.ConfigDict):
  """`step(state, batch) -> (state, metrics)`, to be jit-compiled by the caller."""
  kwargs = loss_kwargs(config.loss)
  schedule = optim_lib.learning_rate_schedule(config.optim)

  def forward(params, batch_stats, images, rng):
    variables = {"params": params, "batch_stats": batch_stats}
    return model.apply(variables, images, train=True, rngs={"dropout": rng})

  if config.train.remat:  # keep matmul outputs, recompute the rest in the backward pass
    forward = jax.checkpoint(forward, policy=jax.checkpoint_policies.dots_saveable)

  def step(state: TrainState, batch: dict):
    rng, dropout_rng, point_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    targets = {k: batch[k] for k in ("labels", "masks", "valid")}
    num_masks = criterion.count_masks(batch["valid"])  # global batch: arrays are global

    def loss_fn(params):
      outputs = forward(params, state.batch_stats, batch["images"], dropout_rng)
      losses = criterion.set_criterion(outputs=outputs, targets=targets, key=point_rng,
                                       num_masks=num_masks, **kwargs)
      return losses["total_loss"], losses

    grads, losses = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(losses, grad_norm=optax.global_norm(grads),
                   learning_rate=schedule(state.step), num_masks=num_masks)
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


# ------------------------------------------------------------------------------------------
# Checkpoints (Orbax) with the data iterator's position
# ------------------------------------------------------------------------------------------

def checkpoint_manager(workdir: str, train_cfg) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=train_cfg.keep_checkpoints,
                                           enable_async_checkpointing=True, create=True))


def save_checkpoint(manager, state: TrainState, data_iter, *, force: bool = False):
  import grain  # pylint: disable=g-import-not-at-top
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter)), force=force)


def restore_checkpoint(manager, abstract_state, data_iter):
  import grain  # pylint: disable=g-import-not-at-top
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored["state"]


def initialize_from(path: str, state: TrainState, backbone: str) -> TrainState:
  """`config.init_from`: an m2f_jax checkpoint directory or an ImageNet backbone file."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if os.path.isdir(path):
    _, _, loaded = model_checkpoint.load_model(path)
    shapes = jax.tree.map(np.shape, variables)
    if jax.tree.map(np.shape, dict(loaded)) != shapes:
      raise ValueError(f"init_from={path}: its variables do not match this config's model "
                       "(different backbone, widths, queries or classes?)")
    variables = loaded
  else:
    variables = imagenet.load_imagenet_backbone(path, backbone, variables)
  return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))


# ------------------------------------------------------------------------------------------
# Metrics output
# ------------------------------------------------------------------------------------------

class MetricWriter:
  """JSON lines (`metrics.jsonl`) and TensorBoard events in the workdir (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(k, v, step)

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


@dataclasses.dataclass
class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint and stops after the current step."""
  requested: bool = False

  def install(self):
    signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

def train_data_iterator(config: ml_collections.ConfigDict):
  from m2f_jax import data  # pylint: disable=g-import-not-at-top
  from m2f_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size={d.batch_size} (global) must divide among "
                     f"{jax.process_count()} processes")
  return pipeline.train_iterator(
      data.data_source(d, "train"), batch_size=d.batch_size // jax.process_count(),
      seed=config.train.seed, task=d.task, num_targets=d.num_targets,
      image_size=tuple(d.image_size), pixel_mean=config.model.pixel_mean,
      pixel_std=config.model.pixel_std, ignore_label=d.ignore_label,
      scale_range=tuple(d.scale_range) if d.get("scale_range") else None,
      augmentation=d.get("augmentation", "synthetic"),
      min_size_train=d.get("min_size_train"), max_size_train=d.get("max_size_train"),
      single_category_max_area=d.get("single_category_max_area", 1.0),
      worker_count=d.worker_count, read_threads=d.read_threads, prefetch=d.prefetch)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------

def train(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from `workdir` if it holds checkpoints); returns (model, variables)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  mesh = make_mesh()
  if config.data.batch_size % mesh.devices.size:
    raise ValueError(f"data.batch_size={config.data.batch_size} must be a multiple of the "
                     f"{mesh.devices.size} devices")
  # Abstract state -> shardings -> state created directly in its sharding.
  model, tx, abstract_state = abstract_train_state(config)
  image_shape = tuple(config.data.image_size)
  rng = jax.random.PRNGKey(config.train.seed)
  shardings = state_shardings(abstract_state, mesh, config.train.get("shard_params", False))
  state = jax.jit(lambda r: create_train_state(model, tx, r, image_shape),
                  out_shardings=shardings)(rng)

  if config.data.dataset != "synthetic":  # build the tfds dataset once, on process 0
    from m2f_jax import data  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      data.prepare(config.data)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("m2f_jax data.prepare")
  data_iter = train_data_iterator(config)
  manager = checkpoint_manager(workdir, config.train)
  if manager.latest_step() is not None:
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract_state, shardings)
    state = restore_checkpoint(manager, abstract, data_iter)
    logging.warning("resumed from step %d in %s", int(state.step), manager.directory)
  elif config.get("init_from"):
    state = jax.device_put(initialize_from(config.init_from, state, config.model.backbone.name),
                           shardings)
    logging.warning("initialized from %s", config.init_from)

  step_fn = jax.jit(make_train_step(model, tx, config),
                    in_shardings=(shardings, batch_sharding(mesh)),
                    out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
  writer = MetricWriter(workdir)
  preemption = _Preemption()
  preemption.install()
  max_steps, log_every = config.optim.max_steps, config.train.log_every
  first_step = int(jax.device_get(state.step))
  images_per_step = config.data.batch_size
  pending = None  # (step, metrics) of the previous step, read after dispatching this one
  t_start, t_last, step_last = time.perf_counter(), time.perf_counter(), first_step

  def report(step, metrics):
    nonlocal t_last, step_last
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    check_finite(metrics, step)
    if step % log_every == 0 or step == max_steps:
      now = time.perf_counter()
      dt = (now - t_last) / max(step - step_last, 1)
      t_last, step_last = now, step
      metrics.update(step_time=dt, images_per_sec=images_per_step / dt)
      writer.write(step, metrics)
      eta = time.strftime("%H:%M:%S", time.gmtime(dt * (max_steps - step)))
      if jax.process_index() == 0:
        print(f"step {step}/{max_steps}  loss {metrics['total_loss']:.4f}  "
              f"lr {metrics['learning_rate']:.2e}  {dt:.3f} s/step  "
              f"{images_per_step / dt:.1f} img/s  ETA {eta}", flush=True)

  try:
    for step in range(first_step + 1, max_steps + 1):
      batch = global_batch(next(data_iter), mesh)
      state, metrics = step_fn(state, batch)
      if pending is not None:
        report(*pending)
      pending = (step, metrics)
      preempted = preemption.any_process()
      if preempted or step % config.train.checkpoint_every == 0 or step == max_steps:
        report(*pending)  # checks the loss first: a non-finite step is never saved
        pending = None
        if preempted:
          logging.warning("SIGTERM: saving step %d and stopping", step)
        save_checkpoint(manager, state, data_iter, force=preempted)
      if preempted:
        manager.wait_until_finished()
        raise SystemExit(143)
    if pending is not None:
      report(*pending)
  finally:
    manager.wait_until_finished()
    writer.close()
  if jax.process_index() == 0:
    print(f"trained {max_steps - first_step} steps in {time.perf_counter() - t_start:.1f} s",
          flush=True)
  return model, {"params": state.params, "batch_stats": state.batch_stats}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, then evaluates the final model on the validation split (eval_results.json)."""
  from m2f_jax import evaluate  # pylint: disable=g-import-not-at-top
  model, variables = train(config, workdir)
  report = evaluate.evaluate(config=config, model=model, variables=variables, workdir=workdir)
  if jax.process_index() == 0:
    print(evaluate.format_report(report), flush=True)
    print(f"wrote {os.path.join(workdir, 'eval_results.json')}", flush=True)
  return report


def load_for_inference(path: str, config: ml_collections.ConfigDict | None = None):
  """`(config, model, variables)` from a model directory or a training checkpoint step.

  A model directory has `config.json` + `variables/` (`m2f_jax.checkpoint`); a training
  step directory is `WORKDIR/checkpoints/STEP` with the config in `WORKDIR/config.json`.
  `config`, when given, replaces the stored one (its model section must fit the weights).
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, model_checkpoint.VARIABLES_DIR)):
    stored, _, variables = model_checkpoint.load_model(path)
  elif os.path.isdir(os.path.join(path, "state")):
    stored = model_checkpoint.load_config(os.path.dirname(os.path.dirname(path)))
    model, _, abstract_state = abstract_train_state(stored)
    # Restored replicated on this machine's devices, whatever devices saved the checkpoint
    # (Orbax refuses a checkpoint of other devices without target shardings).
    replicated = NamedSharding(make_mesh(), P())
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_state)
    with ocp.StandardCheckpointer() as ckptr:
      state = ckptr.restore(os.path.join(path, "state"), abstract_state)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
  else:
    raise FileNotFoundError(
        f"{path} is neither a model directory (config.json + variables/) nor a training "
        "checkpoint step (WORKDIR/checkpoints/STEP with state/)")
  config = config if config is not None else stored
  return config, build_model(config.model), variables
