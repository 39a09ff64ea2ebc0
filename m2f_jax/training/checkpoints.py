"""Training checkpoints (Orbax) with the data iterator's position, and initialization.

`WORKDIR/checkpoints/STEP/` holds `state/` (the whole TrainState) and `data/` (the grain
iterator's state), so a resumed run sees exactly the batches it would have seen. Reading the
weights of such a step for inference is `m2f_jax.checkpoint.load_for_inference`, which needs
nothing of training.

Orbax writes a step into a temporary directory renamed into place once complete, so a run
killed (or out of disk space) while writing leaves the previous steps as they were.
`restore_latest` resumes from the newest step that restores completely: a damaged one (a file
missing or truncated) is reported in one line and moved to `WORKDIR/damaged_checkpoints/`,
never deleted. A step that cannot be written stops the run with one line naming the step that
stays valid (`CheckpointError`); the tracebacks TensorStore's threads print for such a write go
to `WORKDIR/checkpoint_errors.log` (`background_errors_logged`).
"""

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from m2f_jax import checkpoint as model_checkpoint
from m2f_jax import errors
from m2f_jax.convert import imagenet
from m2f_jax.errors import CheckpointError
from m2f_jax.training.train_step import TrainState

CHECKPOINTS_DIR = model_checkpoint.TRAINING_CHECKPOINTS_DIR
DAMAGED_DIR = "damaged_checkpoints"  # WORKDIR/damaged_checkpoints/STEP[-N]: kept, not read
ERRORS_LOG = "checkpoint_errors.log"  # WORKDIR/checkpoint_errors.log: see below


def has_checkpoints(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints holds a finalized step (a directory named by a number)."""
  folder = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def checkpoint_manager(workdir: str, train_cfg) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR),
      options=ocp.CheckpointManagerOptions(max_to_keep=train_cfg.keep_checkpoints,
                                           enable_async_checkpointing=True, create=True))


@contextlib.contextmanager
def background_errors_logged(workdir: str):
  """A failed write's `Event loop is closed` tracebacks go to WORKDIR/checkpoint_errors.log.

  See `errors.closed_loop_callbacks_to`: when a write fails (full or read-only disk),
  TensorStore's callbacks of the other writes print them, often before the main thread has
  the failure to report in one line.
  """
  with errors.closed_loop_callbacks_to(os.path.join(os.path.abspath(workdir), ERRORS_LOG)):
    yield


def _write_error(manager, step, err: BaseException) -> CheckpointError:
  kept = manager.latest_step()
  kept = f"step {kept} stays valid" if kept is not None else "no earlier checkpoint exists"
  reason = (err.strerror if isinstance(err, OSError) and err.strerror else
            (_WRITE_ERRORS.search(str(err)) or [None])[0])
  if reason is None:  # e.g. a timeout waiting for a background thread that failed: why?
    reason = _probe_write(manager.directory) or _first_line(err)
  return CheckpointError(
      f"could not write checkpoint step {step} in {manager.directory} ({reason}); {kept}. "
      "Free space or make the directory writable, then run the same command to resume")


def save_checkpoint(manager, state: TrainState, data_iter, *, force: bool = False):
  """Saves (asynchronously) the state and the data position at `state.step`.

  A failed write (full or read-only disk), here or of the previous asynchronous save, raises
  CheckpointError; the steps already finalized are untouched.
  """
  import grain  # pylint: disable=g-import-not-at-top
  step = int(jax.device_get(state.step))
  previous = getattr(manager, "m2f_saving", step)
  manager.m2f_saving = step
  if jax.process_index() == 0:  # a read-only directory fails Orbax only after a long timeout
    unwritable = _probe_write(manager.directory)
    if unwritable:
      raise _write_error(manager, step, OSError(errno.EROFS, unwritable))
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter)), force=force)
  except Exception as e:  # pylint: disable=broad-except
    if _os_error(e) is None:
      raise
    # The error may be the previous asynchronous save's, surfacing now.
    failed = previous if manager.latest_step() != previous else step
    raise _write_error(manager, failed, _os_error(e)) from e


def wait_until_finished(manager):
  """Waits for the asynchronous save; a failed write raises CheckpointError."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    if _os_error(e) is None:
      raise
    raise _write_error(manager, getattr(manager, "m2f_saving", "?"), _os_error(e)) from e


def _probe_write(directory) -> str | None:
  """Why `directory` cannot be written (a read-only mount, permissions), or None."""
  try:
    with tempfile.TemporaryDirectory(prefix=".m2f_probe-", dir=directory):
      pass
  except OSError as e:
    return e.strerror or str(e)
  return None


_WRITE_ERRORS = re.compile(r"No space left on device|Read-only file system|Permission denied|"
                           r"Disk quota exceeded")


def _os_error(e: BaseException) -> BaseException | None:
  """The OSError in `e`'s chain (Orbax wraps errors of its background threads; TensorStore's
  name the errno in their message), or None."""
  chain = []
  while e is not None and e not in chain and len(chain) < 20:
    chain.append(e)
    e = e.__cause__ or e.__context__
  return (next((c for c in chain if isinstance(c, OSError)), None)
          or next((c for c in chain if _WRITE_ERRORS.search(str(c))), None))


def _first_line(err: BaseException, limit: int = 160) -> str:
  text = next((l.strip() for l in str(err).splitlines() if l.strip()), "")
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _precheck(step_dir: str) -> str | None:
  """`FILE: what is wrong` for a file a complete step has and `step_dir` lacks or garbles."""
  data = os.path.join(step_dir, "data",
                      f"process_{jax.process_index()}-of-{jax.process_count()}.json")
  for path in (os.path.join(step_dir, "state", "_METADATA"),
               os.path.join(step_dir, "state", "manifest.ocdbt"), data):
    if not os.path.isfile(path):
      return f"{path}: missing"
  try:
    with open(data) as f:
      json.load(f)
  except ValueError as e:
    return f"{data}: not the data iterator's state ({e})"
  return None


def _damage(step_dir: str, err: BaseException) -> str:
  """`FILE: what is wrong` for a step that failed to restore (the innermost cause's line)."""
  chain, e = [], err
  while e is not None and e not in chain and len(chain) < 20:
    if not isinstance(e, StopIteration):  # internal to iterators, never the message
      chain.append(e)
    e = e.__cause__ or e.__context__
  chain = chain or [err]
  paths = [p.rstrip("/") for c in chain
           for p in re.findall(re.escape(step_dir) + r"[^\s'\",:)\]]*", str(c))]
  where = max(paths, key=len) if paths else step_dir
  cause = chain[-1]
  what = re.sub(r' in OCDBT database at local file "[^"]*"', "", _first_line(cause, 400))
  return f"{where}: {type(cause).__name__}: {what[:240]}"


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _move_aside(workdir: str, step_dir: str) -> str:
  """Moves a damaged step out of the manager's sight (never deletes it); returns where."""
  base = os.path.join(workdir, DAMAGED_DIR, os.path.basename(step_dir))
  target, n = base, 1
  while os.path.exists(target):
    target, n = f"{base}-{n}", n + 1
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(step_dir, target)
  return target


def restore_latest(manager, abstract_state, data_iter, *, log=print):
  """Restores the newest complete checkpoint: `(state, manager)`, or `(None, manager)`.

  Steps that do not restore are reported in one line each (step, file, what is wrong),
  moved to WORKDIR/damaged_checkpoints/ and skipped; the manager is reloaded afterwards (the
  returned one sees only intact steps).
  """
  workdir = os.path.dirname(os.path.abspath(manager.directory))
  moved = False
  state = None
  for step in sorted(manager.all_steps(), reverse=True):
    step_dir = os.path.join(os.path.abspath(manager.directory), str(step))
    problem = _precheck(step_dir)
    if problem is None:
      try:
        state = restore_checkpoint(manager, abstract_state, data_iter, step=step)
      except Exception as e:  # pylint: disable=broad-except  (any damage: report, skip)
        problem = _damage(step_dir, e)
    if _all_processes_ok(problem is None):
      break
    state = None
    target = _move_aside(workdir, step_dir)
    moved = True
    if jax.process_index() == 0:
      log(f"checkpoint step {step} is damaged ({problem or 'on another process'}); "
          f"skipped and moved to {target} (not deleted)")
  if moved:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("m2f_jax damaged checkpoints moved")
    manager.reload()
  return state, manager


def restore_checkpoint(manager, abstract_state, data_iter, step: int | None = None):
  import grain  # pylint: disable=g-import-not-at-top
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored["state"]


def _fresh_heads(path: str, loaded: dict, variables: dict) -> dict:
  """`loaded` with this model's fresh `class_predictor` when the class counts differ, and
  its fresh `semantic_head` when the checkpoint has none or one of another class count.

  As the official video training initialized from a COCO instance model (Detectron2's
  checkpointer skips the class head whose shape changed): image and video models share every
  other parameter, so an image checkpoint initializes a video model of another dataset. The
  per-pixel `semantic_head` (`model.semantic_head`, not in the official model) is trained
  from scratch when the checkpoint (e.g. an imported official one) lacks it.
  """
  params = dict(loaded["params"])
  for head in ("class_predictor", "semantic_head"):
    ours, theirs = variables["params"].get(head), params.get(head)
    if ours is None:  # this model has no such head: a checkpoint's semantic head is dropped
      if head == "semantic_head":
        params.pop(head, None)
      continue
    if theirs is None and head == "class_predictor":
      continue  # not a Mask2Former checkpoint: the shape check below names it
    if theirs is not None and (jax.tree.map(np.shape, dict(ours))
                               == jax.tree.map(np.shape, dict(theirs))):
      continue
    logging.warning("init_from=%s: %s initialized afresh (checkpoint %s, model %s)", path,
                    head, None if theirs is None else np.shape(theirs["kernel"]),
                    np.shape(ours["kernel"]))
    params[head] = ours
  return {**loaded, "params": params}


def initialize_from(path: str, state: TrainState, backbone: str) -> TrainState:
  """`config.init_from`: an m2f_jax checkpoint directory or an ImageNet backbone file."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if os.path.isdir(path):
    try:  # a model directory, or a training checkpoint step (WORKDIR/checkpoints/STEP)
      _, _, loaded = model_checkpoint.load_for_inference(path)
    except FileNotFoundError as e:
      raise CheckpointError(f"init_from={path}: {e}") from None
    loaded = {"batch_stats": {}, **loaded}  # models without batch_stats save none
    loaded = _fresh_heads(path, loaded, variables)  # e.g. COCO -> YouTube-VIS
    shapes = jax.tree.map(np.shape, variables)
    if jax.tree.map(np.shape, dict(loaded)) != shapes:
      raise CheckpointError(f"init_from={path}: its variables do not match this config's "
                            "model (different backbone, widths or queries?); use a checkpoint "
                            "of this architecture or change config.model")
    variables = loaded
  else:
    variables = imagenet.load_imagenet_backbone(path, backbone, variables)
  return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
