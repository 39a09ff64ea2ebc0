"""Import of transformers' `Mask2FormerForUniversalSegmentation.save_pretrained` directories."""

import json
import os

import ml_collections
import numpy as np

from m2f_jax import config_lib
from m2f_jax.convert import core
from m2f_jax.convert import names
from m2f_jax.models.mask2former import abstract_variables
from m2f_jax.models.mask2former import build_model

def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """All tensors of a transformers directory (safetensors, sharded or not, or pytorch .bin)."""
  files = sorted(os.listdir(path))
  shards = [f for f in files if f.endswith(".safetensors")]
  if shards:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    state = {}
    for shard in shards:
      state.update(load_file(os.path.join(path, shard)))
    return state
  bins = [f for f in files if f.endswith(".bin")]
  if bins:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise core.ConversionError(
          f"{path} holds PyTorch .bin weights ({bins[0]}); reading them needs torch "
          "(pip install torch==2.13.0), or re-save the model with safetensors.") from e
    state = {}
    for b in bins:
      state.update({k: v.float().numpy() if v.is_floating_point() else v.numpy()
                    for k, v in torch.load(os.path.join(path, b), map_location="cpu",
                                           weights_only=True).items()})
    return state
  raise core.ConversionError(
      f"{path} has no weights: expected model.safetensors (or shards, or pytorch_model.bin) "
      "as written by Mask2FormerForUniversalSegmentation.save_pretrained")


def hf_config_to_model_config(hf: dict) -> ml_collections.ConfigDict:
  """The `model` section of our config equivalent to a transformers `Mask2FormerConfig`."""
  if hf.get("model_type") != "mask2former":
    raise core.ConversionError(
        f"config.json has model_type {hf.get('model_type')!r}; expected 'mask2former'")
  bb = hf.get("backbone_config") or {}
  kind = bb.get("model_type", "swin")
  stages = bb.get("out_features", ["stage1", "stage2", "stage3", "stage4"])
  if list(stages) != ["stage1", "stage2", "stage3", "stage4"]:
    raise core.ConversionError(
        f"backbone out_features {stages} unsupported: Mask2Former uses stage1..stage4")
  if kind == "swin":
    if bb.get("use_absolute_embeddings", False):
      raise core.ConversionError("Swin with absolute position embeddings is not supported "
                                 "(no Mask2Former checkpoint uses it)")
    if bb.get("hidden_act", "gelu") != "gelu" or bb.get("layer_norm_eps", 1e-5) != 1e-5:
      raise core.ConversionError("Swin backbone must use gelu and layer_norm_eps 1e-5 as "
                                 "every Mask2Former checkpoint does")
    backbone = config_lib.swin_backbone("tiny")
    backbone.update(
        embed_dim=bb.get("embed_dim", 96), depths=list(bb.get("depths", [2, 2, 6, 2])),
        num_heads=list(bb.get("num_heads", [3, 6, 12, 24])),
        window_size=bb.get("window_size", 7), patch_size=bb.get("patch_size", 4),
        mlp_ratio=float(bb.get("mlp_ratio", 4.0)), qkv_bias=bb.get("qkv_bias", True),
        drop_path_rate=float(bb.get("drop_path_rate", 0.1)))
  elif kind == "resnet":
    if bb.get("hidden_act", "relu") != "relu" or bb.get("downsample_in_first_stage", False):
      raise core.ConversionError("ResNet backbone must use relu and "
                                 "downsample_in_first_stage=False")
    backbone = config_lib.resnet_backbone(50)
    backbone.update(
        depths=list(bb.get("depths", [3, 4, 6, 3])),
        hidden_sizes=list(bb.get("hidden_sizes", [256, 512, 1024, 2048])),
        embedding_size=bb.get("embedding_size", 64),
        layer_type=bb.get("layer_type", "bottleneck"),
        downsample_in_bottleneck=bb.get("downsample_in_bottleneck", False))
  else:
    raise core.ConversionError(f"backbone model_type {kind!r} unsupported: swin or resnet")
  if hf.get("activation_function", "relu") != "relu":
    raise core.ConversionError("only activation_function='relu' is supported")
  if list(hf.get("feature_strides", [4, 8, 16, 32])) != [4, 8, 16, 32]:
    raise core.ConversionError("feature_strides must be [4, 8, 16, 32]")
  id2label = hf.get("id2label") or {}
  num_classes = len(id2label) if id2label else hf.get("num_labels")
  model = config_lib.model_config(backbone, num_classes=num_classes,
                                  num_queries=hf.get("num_queries", 100))
  heads = hf.get("num_attention_heads", 8)
  model.update(
      hidden_dim=hf.get("hidden_dim", 256), feature_size=hf.get("feature_size", 256),
      mask_feature_size=hf.get("mask_feature_size", 256),
      encoder_layers=hf.get("encoder_layers", 6),
      encoder_feedforward_dim=hf.get("encoder_feedforward_dim", 1024),
      encoder_num_heads=heads, num_heads=heads, decoder_layers=hf.get("decoder_layers", 10),
      dim_feedforward=hf.get("dim_feedforward", 2048), pre_norm=hf.get("pre_norm", False),
      enforce_input_projection=hf.get("enforce_input_projection", False),
      common_stride=hf.get("common_stride", 4))
  return model


def class_names_from_hf(hf: dict) -> list[str]:
  id2label = hf.get("id2label") or {}
  return [id2label[k] for k in sorted(id2label, key=int)]


def load_hf(path: str):
  """`(model, variables)` for a transformers Mask2Former directory (config.json + weights)."""
  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    raise core.ConversionError(
        f"{cfg_file} not found: give the directory written by "
        "Mask2FormerForUniversalSegmentation.save_pretrained")
  with open(cfg_file) as f:
    hf = json.load(f)
  model_cfg = hf_config_to_model_config(hf)
  model = build_model(model_cfg)
  return model, hf_variables(model, read_state_dict(path), source=path)


def hf_variables(model, state_dict, *, source: str = "checkpoint"):
  """Maps transformers tensor names (with their `model.` prefix) onto `model`'s variables."""
  renamed = {}
  for name, value in state_dict.items():
    name = names.saved_hf_name(name)
    renamed[name[len("model."):] if name.startswith("model.") else name] = value
  return core.state_dict_to_variables(renamed, abstract_variables(model), ignore=names.HF_IGNORE,
                                      source=source)
