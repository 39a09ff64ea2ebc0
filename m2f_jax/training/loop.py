"""The train loop: data, a jit-compiled step over the mesh, checkpoints, metrics, evaluation.

The parts it composes: `m2f_jax.sharding` (mesh, shardings, global batches),
`training.train_step` (state and step), `training.checkpoints` (Orbax, with the data
iterator's position), `training.metric_writer` (metrics.jsonl and TensorBoard), and
`m2f_jax.evaluate` at the end (`train_and_evaluate`).
"""

import contextlib
import dataclasses
import os
import signal
import sys
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from m2f_jax import config_lib
from m2f_jax import data
from m2f_jax import evaluate
from m2f_jax import sharding
from m2f_jax import workdir as workdir_lib
from m2f_jax.errors import ConfigError
from m2f_jax.errors import DataError
from m2f_jax.training import checkpoints
from m2f_jax.training import train_step
from m2f_jax.training.metric_writer import MetricWriter


# ------------------------------------------------------------------------------------------
# Preemption
# ------------------------------------------------------------------------------------------

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
  if config.model.get("video", False):  # clips [B, T, H, W, 3] (m2f_jax.data.video_pipeline)
    from m2f_jax.data import video_pipeline  # pylint: disable=g-import-not-at-top (grain)
    return video_pipeline.train_iterator_from_config(config)
  from m2f_jax.data import pipeline  # pylint: disable=g-import-not-at-top (grain)
  d = config.data
  if d.batch_size % jax.process_count():
    raise ConfigError(f"data.batch_size={d.batch_size} (global) must divide among "
                      f"{jax.process_count()} processes; set --config.data.batch_size to a "
                      "multiple of it")
  return pipeline.train_iterator(
      data.data_source(d, "train"), batch_size=d.batch_size // jax.process_count(),
      seed=config.train.seed, task=d.task, num_targets=d.num_targets,
      image_size=tuple(d.image_size), pixel_mean=config.model.pixel_mean,
      pixel_std=config.model.pixel_std, ignore_label=d.ignore_label,
      scale_range=tuple(d.scale_range) if d.scale_range else None,
      augmentation=d.augmentation, min_size_train=d.min_size_train,
      max_size_train=d.max_size_train, single_category_max_area=d.single_category_max_area,
      worker_count=d.worker_count, read_threads=d.read_threads, prefetch=d.prefetch,
      compact=d.compact_targets, target_layers=d.target_layers)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _workdir_held(workdir: str):
  """One training run per workdir (`m2f_jax.workdir.WorkdirLock`, held by process 0)."""
  lock = workdir_lib.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    yield
  finally:
    lock.release()


def train(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from `workdir` if it holds checkpoints); returns (model, variables)."""
  # A failed checkpoint write's TensorStore tracebacks go to WORKDIR/checkpoint_errors.log;
  # the failure itself is raised here (CheckpointError: one line).
  with _workdir_held(workdir), checkpoints.background_errors_logged(workdir):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str):
  workdir = os.path.abspath(workdir)
  # The data's categories into the config (saved below; stops on a num_classes mismatch).
  config_lib.resolve_categories(config)
  os.makedirs(workdir, exist_ok=True)
  # Nothing is written before the config is known to fit the workdir's checkpoints;
  # config.json is replaced once the run is accepted (below, after the restore).
  changes = workdir_lib.check_config(workdir, config,
                                     has_checkpoints=checkpoints.has_checkpoints(workdir))
  mesh = sharding.make_mesh()
  if config.data.batch_size % mesh.devices.size:
    raise ConfigError(f"data.batch_size={config.data.batch_size} must be a multiple of the "
                      f"{mesh.devices.size} devices; set --config.data.batch_size to a "
                      f"multiple of {mesh.devices.size}")
  if jax.process_index() == 0:  # build a tfds dataset once, on process 0
    try:
      data.prepare_dataset(config.data)
    except (FileNotFoundError, ValueError) as e:
      raise DataError(str(e)) from e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("m2f_jax data.prepare_dataset")
  # Abstract state -> shardings -> state created directly in its sharding.
  model, tx, abstract_state = train_step.abstract_train_state(config)
  image_shape = train_step.input_shape(config)  # (H, W), or (T, H, W) for clips
  rng = jax.random.PRNGKey(config.train.seed)
  shardings = sharding.state_shardings(abstract_state, mesh, config.train.shard_params)
  state = jax.jit(lambda r: train_step.create_train_state(model, tx, r, image_shape),
                  out_shardings=shardings)(rng)

  data_iter = train_data_iterator(config)
  manager = checkpoints.checkpoint_manager(workdir, config.train)
  restored = None
  if manager.latest_step() is not None:  # the newest intact step; damaged ones set aside
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract_state, shardings)
    restored, manager = checkpoints.restore_latest(
        manager, abstract, data_iter, log=lambda m: print(m, file=sys.stderr, flush=True))
  if restored is not None:
    state = restored
    logging.warning("resumed from step %d in %s", int(state.step), manager.directory)
  elif config.init_from:
    state = jax.device_put(
        checkpoints.initialize_from(config.init_from, state, config.model.backbone.name),
        shardings)
    logging.warning("initialized from %s", config.init_from)
  if jax.process_index() == 0:  # the run is accepted: its config becomes the workdir's
    workdir_lib.record_changes(workdir, changes)
    workdir_lib.write_config(workdir, config)

  step_fn = jax.jit(train_step.make_train_step(model, tx, config),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0,
                    compiler_options=train_step.compiler_options(config) or None)
  writer = MetricWriter(workdir)
  preemption = _Preemption()
  preemption.install()
  max_steps, log_every = config.optim.max_steps, config.train.log_every
  first_step = int(jax.device_get(state.step))
  images_per_step = config.data.batch_size
  pending = None  # (step, metrics) of the previous step, read after dispatching this one
  max_label = -1  # the largest class index of the batches so far (advice on a NaN loss)
  t_start, t_last, step_last = time.perf_counter(), time.perf_counter(), first_step

  def report(step, metrics):
    nonlocal t_last, step_last
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    try:
      train_step.check_finite(metrics, step)
    except train_step.NonFiniteLossError as e:
      if max_label >= config.model.num_classes:  # the cause, rather than the learning rate
        raise DataError(
            f"step {step}: non-finite loss, and the data has class index {max_label} but "
            f"model.num_classes={config.model.num_classes} (labels must be below it); set "
            "--config.model.num_classes to the dataset's number of categories") from e
      raise
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
      local = next(data_iter)
      if "labels" in local and "valid" in local:
        max_label = max(max_label, int(np.max(local["labels"], initial=0, where=local["valid"])))
      batch = sharding.global_batch(local, mesh)
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
        checkpoints.save_checkpoint(manager, state, data_iter, force=preempted)
      if preempted:
        checkpoints.wait_until_finished(manager)
        raise SystemExit(143)
    if pending is not None:
      report(*pending)
  finally:
    checkpoints.wait_until_finished(manager)
    writer.close()
  if jax.process_index() == 0:
    print(f"trained {max_steps - first_step} steps in {time.perf_counter() - t_start:.1f} s",
          flush=True)
  return model, {"params": state.params, "batch_stats": state.batch_stats}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, then evaluates the final model on the validation split (eval_results.json)."""
  with (_workdir_held(workdir),  # the evaluation writes into the workdir too
        checkpoints.background_errors_logged(workdir)):  # as in train()
    model, variables = _train(config, workdir)
    from m2f_jax import evaluate_video  # pylint: disable=g-import-not-at-top
    video = evaluate_video.is_video_task(config)  # video instance segmentation: YouTube-VIS AP
    report = (evaluate_video.evaluate_video if video else evaluate.evaluate)(
        config=config, model=model, variables=variables, workdir=workdir)
  if jax.process_index() == 0:
    print((evaluate_video if video else evaluate).format_report(report), flush=True)
    print(f"wrote {os.path.join(workdir, 'eval_results.json')}", flush=True)
  return report
