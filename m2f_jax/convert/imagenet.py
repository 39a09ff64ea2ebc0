"""ImageNet-pretrained backbone weights, which the official training starts from.

Accepted files:
  * ResNet: a torchvision state dict (`conv1.*`, `layer1.0.*`, `fc.*`; .pth) or Detectron2's
    converted `R-50.pkl` / `R-101.pkl` (`stem.conv1.*`, `res2.0.*`).
  * Swin: the official releases (`swin_tiny_patch4_window7_224.pth`, ...; .pth with a "model"
    dict) or Mask2Former's .pkl conversions of them (same names).
The classifier head and Swin's final norm are dropped; the per-stage output norms of the
Mask2Former Swin backbone are not in these files and keep their initial values (as in the
official training).
"""

import os
import pickle

import flax
import numpy as np

from m2f_jax.convert import core
from m2f_jax.convert import names


def _read(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise core.ConversionError(f"{path}: no such file (expected ImageNet backbone weights)")
  if path.endswith((".pth", ".pt", ".bin")):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise core.ConversionError(f"reading {path} needs torch (pip install torch==2.13.0)") from e
    data = torch.load(path, map_location="cpu", weights_only=True)
  else:
    with open(path, "rb") as f:
      try:
        data = pickle.load(f, encoding="latin1")
      except Exception as e:
        raise core.ConversionError(f"{path} is not a readable pickle ({e})") from e
  if isinstance(data, dict) and isinstance(data.get("model"), dict):
    data = data["model"]
  if not isinstance(data, dict):
    raise core.ConversionError(f"{path} does not hold a dict of tensors")
  out = {}
  for k, v in data.items():
    k = k[len("backbone."):] if k.startswith("backbone.") else k
    out[k] = np.asarray(v.float().numpy() if hasattr(v, "float") else v)
  return out


def backbone_to_hf_names(state: dict[str, np.ndarray], backbone: str) -> dict[str, np.ndarray]:
  """ImageNet checkpoint names -> transformers' backbone names."""
  if backbone == "resnet":
    if any(k.startswith(("stem.", "res2.")) for k in state):
      return names.detectron2_resnet_to_hf_names({f"backbone.{k}": v for k, v in state.items()})
    return names.torchvision_to_hf_names({k: v for k, v in state.items() if not k.startswith("fc.")})
  if backbone == "swin":
    drop = ("head.", "norm.", "absolute_pos_embed")
    kept = {k: v for k, v in state.items()
            if not k.startswith(drop) and not k.endswith(("relative_position_index", "attn_mask"))}
    return names.swin_to_hf_names(kept)
  raise ValueError(f"backbone must be 'resnet' or 'swin', got {backbone!r}")


def load_imagenet_backbone(path: str, backbone: str, variables) -> dict:
  """Returns `variables` (a full Mask2Former tree) with the backbone replaced from `path`."""
  names = backbone_to_hf_names(_read(path), backbone)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  prefix = ("pixel_level_module", "encoder")
  keep_init = ("hidden_states_norms",)  # Swin output norms: not in ImageNet checkpoints
  target = {k: v for k, v in flat.items()
            if k[1:3] == prefix and not (len(k) > 3 and k[3] in keep_init)}
  target = flax.traverse_util.unflatten_dict({(k[0],) + k[3:]: v for k, v in target.items()})
  loaded = core.state_dict_to_variables(names, target, source=path)
  out = dict(flat)
  for k, v in flax.traverse_util.flatten_dict(loaded).items():
    out[(k[0],) + prefix + k[1:]] = v
  return flax.traverse_util.unflatten_dict(out)
