"""Import of the official Detectron2 Mask2Former checkpoints (model-zoo `.pkl` files).

A model-zoo file is a pickled dict whose "model" entry maps the official tensor names
(`backbone.*`, `sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*`) to numpy arrays.
They are renamed to transformers' names (the names the Flax modules follow) by the table
below, written from the module attributes of the official code (msdeformattn.py,
mask2former_transformer_decoder.py, backbone/swin.py) and Detectron2's ResNet, and then
mapped like a transformers checkpoint. nn.MultiheadAttention's fused `in_proj` of the
official self-attention is split into q/k/v projections.
"""

import os
import pickle

import ml_collections
import numpy as np

from m2f_jax.convert import core
from m2f_jax.convert import hf as hf_convert
from m2f_jax.convert import names
from m2f_jax.models.mask2former import build_model

def read_detectron2(path: str) -> dict[str, np.ndarray]:
  """The "model" dict of a Detectron2 `.pkl` (or a PyTorch `.pth` with the same names)."""
  if not os.path.isfile(path):
    raise core.ConversionError(f"{path}: no such file (expected an official .pkl checkpoint)")
  if path.endswith((".pth", ".pt")):
    import torch  # pylint: disable=g-import-not-at-top
    data = torch.load(path, map_location="cpu", weights_only=True)
  else:
    with open(path, "rb") as f:
      try:
        data = pickle.load(f, encoding="latin1")
      except Exception as e:  # a truncated or foreign file
        raise core.ConversionError(f"{path} is not a readable pickle ({e})") from e
  state = data.get("model", data) if isinstance(data, dict) else None
  if not isinstance(state, dict):
    raise core.ConversionError(f"{path} does not hold a dict of tensors under 'model'")
  return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state.items()}


def load_detectron2(path: str, model_config: ml_collections.ConfigDict):
  """`(model, variables)` for an official checkpoint and the `model` section of its config.

  The model is built without `semantic_head` (a training-only auxiliary head the official
  model does not have; `train.py --config.init_from` adds a fresh one where a config asks).
  """
  if model_config.get("semantic_head", False):
    model_config = model_config.copy_and_resolve_references()
    model_config.semantic_head = False
  model = build_model(model_config)
  renamed = names.detectron2_to_hf_names(read_detectron2(path), model_config.backbone.name)
  return model, hf_convert.hf_variables(model, renamed, source=path)
