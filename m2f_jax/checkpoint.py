"""Model checkpoints on disk: a directory with `config.json` and Orbax-saved `variables/`.

Written by `python -m m2f_jax.convert` (and by training); read by `eval.py`, `predict` and
`train.py --config.init_from=DIR`. Writes are atomic: everything goes to a temporary sibling
directory that is renamed into place at the end, so a failure never leaves a half-written
checkpoint and never touches an existing one.
"""

import json
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
VARIABLES_DIR = "variables"


def save_model(directory: str, config: ml_collections.ConfigDict, variables, *,
               overwrite: bool = False) -> str:
  """Writes `config` and `variables` to `directory`; returns its absolute path."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists and is not empty; choose another --output or "
                          "pass --overwrite to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES_DIR), jax.tree.map(np.asarray, variables))
      ckptr.wait_until_finished()
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      f.write(config.to_json(indent=2))
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old.", dir=parent)
      os.rename(directory, os.path.join(old, "d"))
      os.rename(tmp, directory)
      shutil.rmtree(old)
    else:
      os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def load_config(directory: str) -> ml_collections.ConfigDict:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not an m2f_jax checkpoint "
                            "(make one with `python -m m2f_jax.convert`)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_model(directory: str):
  """`(config, model, variables)` of a checkpoint directory."""
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  config = load_config(directory)
  model = build_model(config.model)
  from m2f_jax.convert import core  # pylint: disable=g-import-not-at-top
  abstract = core.abstract_variables(model, np.zeros((1, 64, 64, 3), np.float32))
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(os.path.abspath(directory), VARIABLES_DIR), abstract)
  return config, model, variables
