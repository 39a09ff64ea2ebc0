"""Model checkpoints on disk, and loading any checkpoint for inference.

A model directory holds `config.json` and Orbax-saved `variables/`; `python -m
m2f_jax.convert` writes one (`save_model`), `train.py --config.init_from=DIR` reads one. Writes
are atomic: everything goes to a temporary sibling directory that is renamed into place at
the end, so a failure never leaves a half-written checkpoint and never touches an existing
one.

`load_for_inference(path)` reads a model directory or a training checkpoint step
(`WORKDIR/checkpoints/STEP`, written by `m2f_jax.training.checkpoints`): only the weights
are restored, so `eval.py`, `predict` and notebooks need nothing of training.
`load_checked` does the same for the entry points: a missing or damaged checkpoint, or one of
another architecture than its config's model, is one `CheckpointError` line.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from m2f_jax import config_lib
from m2f_jax import errors
from m2f_jax import sharding
from m2f_jax.atomic_dir import atomic_directory
from m2f_jax.models.mask2former import abstract_variables
from m2f_jax.models.mask2former import build_model

CONFIG_FILE = "config.json"
VARIABLES_DIR = "variables"
TRAINING_CHECKPOINTS_DIR = "checkpoints"  # WORKDIR/checkpoints/STEP/{state,data}
STATE_DIR = "state"  # the TrainState inside a training checkpoint step


def save_model(directory: str, config: ml_collections.ConfigDict, variables, *,
               overwrite: bool = False) -> str:
  """Writes `config` and `variables` to `directory`; returns its absolute path.

  The saved config holds the model's categories (`data.categories`: dataset ids, names,
  thing flags, colours), resolved from the data here if `config` lacks them, so the model
  directory is used without access to its dataset.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists and is not empty; choose another --output or "
                          "pass --overwrite to replace it")
  config = config_lib.resolve_categories(ml_collections.ConfigDict(config.to_dict()))
  # Collections the model does not have (batch_stats of a GroupNorm ResNet or of Swin) are
  # left out, so the saved tree is the model's own (`load_model` restores into it).
  variables = {k: v for k, v in variables.items() if k == "params" or jax.tree.leaves(v)}
  with atomic_directory(directory) as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES_DIR), jax.tree.map(np.asarray, variables))
      ckptr.wait_until_finished()
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      f.write(config.to_json(indent=2))
  return directory


def load_config(directory: str) -> ml_collections.ConfigDict:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not an m2f_jax checkpoint "
                            "(make one with `python -m m2f_jax.convert`)")
  with open(path) as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
      raise ValueError(f"{path}: not the JSON of a config ({e})") from e


def load_model(directory: str):
  """`(config, model, variables)` of a model directory."""
  config = load_config(directory)
  model = build_model(config.model)
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(os.path.abspath(directory), VARIABLES_DIR),
                              abstract_variables(model))
  return config, model, variables


def _restore_training_weights(state_dir: str, model):
  """params and batch_stats of a saved TrainState (the optimizer state is not read).

  Restored replicated on this machine's devices, whatever devices saved the checkpoint
  (Orbax refuses a checkpoint of other devices without target shardings).
  """
  replicated = sharding.replicated(sharding.make_mesh())
  target = {k: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), v)
            for k, v in abstract_variables(model).items() if v}  # no empty batch_stats
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return restored


def load_for_inference(path: str, config: ml_collections.ConfigDict | None = None):
  """`(config, model, variables)` from a model directory or a training checkpoint step.

  A model directory has `config.json` + `variables/`; a training step directory is
  `WORKDIR/checkpoints/STEP` with `state/`, its config in `WORKDIR/config.json`. `config`,
  when given, replaces the stored one (its model section must fit the weights).
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, VARIABLES_DIR)):
    stored, _, variables = load_model(path)
  elif os.path.isdir(os.path.join(path, STATE_DIR)):
    stored = load_config(os.path.dirname(os.path.dirname(path)))
    variables = _restore_training_weights(os.path.join(path, STATE_DIR),
                                          build_model(stored.model))
  else:
    raise FileNotFoundError(
        f"{path} is neither a model directory (config.json + variables/) nor a training "
        "checkpoint step (WORKDIR/checkpoints/STEP with state/)")
  config = config if config is not None else stored
  return config, build_model(config.model), variables


def _config_path(path: str) -> str:
  """The config.json that goes with a model directory or a training checkpoint step."""
  if os.path.isdir(os.path.join(path, STATE_DIR)):
    return os.path.join(os.path.dirname(os.path.dirname(path)), CONFIG_FILE)
  return os.path.join(path, CONFIG_FILE)


def _shapes(tree) -> dict:
  """{"['params']['...']": shape} of the variables in `tree` (no empty collections)."""
  tree = {k: v for k, v in dict(tree).items()
          if k in ("params", "batch_stats") and jax.tree.leaves(v)}
  return {jax.tree_util.keystr(k): tuple(x.shape)
          for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stored_shapes(path: str) -> dict:
  """The shapes of the weights a checkpoint holds, from its metadata (no array is read)."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (Orbax's path type)
  folder = VARIABLES_DIR if os.path.isdir(os.path.join(path, VARIABLES_DIR)) else STATE_DIR
  # The handler's metadata: the checkpointer's warns that a training step's state/ has no
  # _CHECKPOINT_METADATA (its CheckpointManager keeps that one level up).
  metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(os.path.join(path, folder)))
  return _shapes(getattr(metadata, "tree", metadata))


def _first_difference(got: dict, want: dict) -> str | None:
  """`NAME is A in the checkpoint, B in the model` for the first tensor that differs."""
  name = next((k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)), None)
  if name is None:
    return None
  return (f"{name} is {got.get(name, 'absent')} in the checkpoint, "
          f"{want.get(name, 'absent')} in the model")


def load_checked(path: str, config: ml_collections.ConfigDict | None = None, *,
                 flag: str = "--checkpoint"):
  """`load_for_inference(path, config)`, every failure one `errors.CheckpointError` line.

  What the line names: a path that is not a checkpoint; a checkpoint of another architecture
  than `config`'s model (or, without `config`, than the model of its own config.json: that
  file was replaced), with the first tensor that differs; a damaged checkpoint (a file
  missing, truncated or garbled), with the error of the file that does not restore.
  """
  path = os.path.abspath(path)
  whose = ("the config's model" if config is not None else
           f"the model of its config {_config_path(path)}")
  advice = ("use it with its own config (omit --config) or the matching one"
            if config is not None else "put back the config.json it was trained with")
  try:
    with errors.closed_loop_callbacks_to(None):  # a failed read's TensorStore tracebacks
      config, model, variables = load_for_inference(path, config)
  except Exception as e:  # pylint: disable=broad-except  (damaged, or another architecture)
    weights = (os.path.isdir(os.path.join(path, VARIABLES_DIR))
               or os.path.isdir(os.path.join(path, STATE_DIR)))
    if isinstance(e, FileNotFoundError) and not (weights and os.path.isfile(_config_path(path))):
      raise errors.CheckpointError(f"{flag}: {e}") from e  # not a checkpoint, no config.json
    try:
      stored = _stored_shapes(path)
      model = build_model((config or load_config(os.path.dirname(_config_path(path)))).model)
      difference = _first_difference(stored, _shapes(abstract_variables(model)))
    except Exception:  # pylint: disable=broad-except  (its metadata or config unreadable too)
      difference = None
    if difference is None:
      raise errors.CheckpointError(
          f"{flag} {path}: its weights do not restore ({type(e).__name__}: "
          f"{errors.one_line(e, 1)[:200]}); the checkpoint is damaged (a file missing, "
          "truncated or garbled): use another step, or write it again") from e
    raise errors.CheckpointError(f"{flag} {path} is another architecture than {whose}: "
                                 f"{difference}; {advice}") from e
  try:  # `config` given, or a training step restored partially (tensors the model lacks)
    difference = _first_difference(_stored_shapes(path), _shapes(abstract_variables(model)))
  except Exception:  # pylint: disable=broad-except  (a model of other inputs: not compared)
    difference = None
  if difference is not None:
    raise errors.CheckpointError(f"{flag} {path} is another architecture than {whose}: "
                                 f"{difference}; {advice}")
  return config, model, variables
