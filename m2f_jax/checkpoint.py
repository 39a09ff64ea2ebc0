"""Model checkpoints on disk, and loading any checkpoint for inference.

A model directory holds `config.json` and Orbax-saved `variables/`; `python -m
m2f_jax.convert` writes one (`save_model`), `train.py --config.init_from=DIR` reads one. Writes
are atomic: everything goes to a temporary sibling directory that is renamed into place at
the end, so a failure never leaves a half-written checkpoint and never touches an existing
one.

`load_for_inference(path)` reads a model directory or a training checkpoint step
(`WORKDIR/checkpoints/STEP`, written by `m2f_jax.training.checkpoints`): only the weights
are restored, so `eval.py`, `predict` and notebooks need nothing of training.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from m2f_jax import config_lib
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
    return ml_collections.ConfigDict(json.load(f))


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
