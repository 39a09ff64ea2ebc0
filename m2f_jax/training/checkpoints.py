"""Training checkpoints (Orbax) with the data iterator's position, and initialization.

`WORKDIR/checkpoints/STEP/` holds `state/` (the whole TrainState) and `data/` (the grain
iterator's state), so a resumed run sees exactly the batches it would have seen. Reading the
weights of such a step for inference is `m2f_jax.checkpoint.load_for_inference`, which needs
nothing of training.
"""

import os

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from m2f_jax import checkpoint as model_checkpoint
from m2f_jax.convert import imagenet
from m2f_jax.training.train_step import TrainState

CHECKPOINTS_DIR = model_checkpoint.TRAINING_CHECKPOINTS_DIR


def checkpoint_manager(workdir: str, train_cfg) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR),
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


def _keep_class_head_if_resized(path: str, loaded: dict, variables: dict) -> dict:
  """`loaded` with this model's fresh `class_predictor` when the class counts differ.

  As the official video training initialized from a COCO instance model (Detectron2's
  checkpointer skips the class head whose shape changed): image and video models share every
  other parameter, so an image checkpoint initializes a video model of another dataset.
  """
  head = "class_predictor"
  ours, theirs = variables["params"].get(head), dict(loaded["params"]).get(head)
  if ours is None or theirs is None or (
      jax.tree.map(np.shape, dict(ours)) == jax.tree.map(np.shape, dict(theirs))):
    return loaded
  logging.warning("init_from=%s: class head %s re-initialized (checkpoint %s, model %s)",
                  path, head, np.shape(theirs["kernel"]), np.shape(ours["kernel"]))
  return {**loaded, "params": {**dict(loaded["params"]), head: ours}}


def initialize_from(path: str, state: TrainState, backbone: str) -> TrainState:
  """`config.init_from`: an m2f_jax checkpoint directory or an ImageNet backbone file."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if os.path.isdir(path):
    _, _, loaded = model_checkpoint.load_model(path)
    loaded = {"batch_stats": {}, **loaded}  # models without batch_stats save none
    variables = _keep_class_head_if_resized(path, loaded, variables)
    shapes = jax.tree.map(np.shape, variables)
    if jax.tree.map(np.shape, dict(loaded)) != shapes:
      raise ValueError(f"init_from={path}: its variables do not match this config's model "
                       "(different backbone, widths or queries?)")
    variables = loaded
  else:
    variables = imagenet.load_imagenet_backbone(path, backbone, variables)
  return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
