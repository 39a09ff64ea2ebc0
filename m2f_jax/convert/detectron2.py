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
import re

import ml_collections
import numpy as np

from m2f_jax.convert import core
from m2f_jax.convert import hf as hf_convert
from m2f_jax.models.backbones.resnet import detectron2_resnet_to_hf_names

# Official name (regex, without the leading "sem_seg_head.") -> transformers name.
_HEAD_RENAMES = (
    # MSDeformAttnPixelDecoder
    (r"^pixel_decoder\.input_proj\.(\d+)\.(\d+)\.", r"pixel_level_module.decoder.input_projections.\1.\2."),
    (r"^pixel_decoder\.transformer\.level_embed$", r"pixel_level_module.decoder.level_embed"),
    (r"^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\.",
     r"pixel_level_module.decoder.encoder.layers.\1.self_attn."),
    (r"^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\.",
     r"pixel_level_module.decoder.encoder.layers.\1.self_attn_layer_norm."),
    (r"^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear1\.",
     r"pixel_level_module.decoder.encoder.layers.\1.fc1."),
    (r"^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear2\.",
     r"pixel_level_module.decoder.encoder.layers.\1.fc2."),
    (r"^pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm2\.",
     r"pixel_level_module.decoder.encoder.layers.\1.final_layer_norm."),
    (r"^pixel_decoder\.mask_features\.", r"pixel_level_module.decoder.mask_projection."),
    (r"^pixel_decoder\.(adapter|layer)_(\d+)\.norm\.", r"pixel_level_module.decoder.\1_\2.1."),
    (r"^pixel_decoder\.(adapter|layer)_(\d+)\.weight$", r"pixel_level_module.decoder.\1_\2.0.weight"),
    # MultiScaleMaskedTransformerDecoder
    (r"^predictor\.query_feat\.", r"transformer_module.queries_features."),
    (r"^predictor\.query_embed\.", r"transformer_module.queries_embedder."),
    (r"^predictor\.level_embed\.", r"transformer_module.level_embed."),
    (r"^predictor\.input_proj\.(\d+)\.", r"transformer_module.input_projections.\1."),
    (r"^predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.",
     r"transformer_module.decoder.layers.\1.self_attn.out_proj."),
    (r"^predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$",
     r"transformer_module.decoder.layers.\1.self_attn.in_proj_\2"),  # split below
    (r"^predictor\.transformer_self_attention_layers\.(\d+)\.norm\.",
     r"transformer_module.decoder.layers.\1.self_attn_layer_norm."),
    (r"^predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.",
     r"transformer_module.decoder.layers.\1.cross_attn."),
    (r"^predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.",
     r"transformer_module.decoder.layers.\1.cross_attn_layer_norm."),
    (r"^predictor\.transformer_ffn_layers\.(\d+)\.linear1\.", r"transformer_module.decoder.layers.\1.fc1."),
    (r"^predictor\.transformer_ffn_layers\.(\d+)\.linear2\.", r"transformer_module.decoder.layers.\1.fc2."),
    (r"^predictor\.transformer_ffn_layers\.(\d+)\.norm\.",
     r"transformer_module.decoder.layers.\1.final_layer_norm."),
    (r"^predictor\.decoder_norm\.", r"transformer_module.decoder.layernorm."),
    (r"^predictor\.class_embed\.", r"class_predictor."),
    (r"^predictor\.mask_embed\.layers\.(\d+)\.", r"transformer_module.decoder.mask_predictor.mask_embedder.\1.0."),
)

# Official Swin (D2SwinTransformer and the ImageNet releases) -> transformers' Swin names.
_SWIN_RENAMES = (
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "embeddings.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.blocks.\2.layernorm_before."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.blocks.\2.layernorm_after."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$",
     r"encoder.layers.\1.blocks.\2.attention.self.relative_position_bias_table"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$",
     r"encoder.layers.\1.blocks.\2.attention.self.qkv.\3"),  # split below
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.blocks.\2.attention.output.dense."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layers.\1.blocks.\2.intermediate.dense."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layers.\1.blocks.\2.output.dense."),
    (r"^layers\.(\d+)\.downsample\.", r"encoder.layers.\1.downsample."),
    (r"^norm(\d)\.", lambda m: f"hidden_states_norms.stage{int(m.group(1)) + 1}."),
)

# Tensors of official checkpoints that carry nothing the Flax model needs.
D2_IGNORE = (r"^criterion\.", r"^pixel_(mean|std)$", r"relative_position_index$", r"attn_mask$")


def _rename(name: str, table) -> str | None:
  for pattern, repl in table:
    new, n = re.subn(pattern, repl, name)
    if n:
      return new
  return None


def _split_fused(out: dict, prefix: str, leaf: str, value: np.ndarray,
                 names: tuple[str, str, str]):
  """Splits a fused [3C, ...] q/k/v tensor into `{prefix}.{name}.{leaf}` for the 3 names."""
  for part, sub in zip(np.split(value, 3, axis=0), names):
    out[f"{prefix}.{sub}.{leaf}"] = part


def swin_to_hf_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Official Swin tensor names (no `backbone.` prefix) -> transformers' Swin names."""
  out, unknown = {}, []
  for name, value in state.items():
    new = _rename(name, _SWIN_RENAMES)
    if new is None:
      unknown.append(name)
    elif new.endswith((".qkv.weight", ".qkv.bias")):  # attention.self.qkv.{weight,bias}
      prefix, _, leaf = new.rsplit(".", 2)
      _split_fused(out, prefix, leaf, value, ("query", "key", "value"))
    else:
      out[new] = value
  if unknown:
    raise core.ConversionError("unknown Swin tensors: " + ", ".join(sorted(unknown)[:20]))
  return out


def detectron2_to_hf_names(state: dict[str, np.ndarray], backbone: str) -> dict[str, np.ndarray]:
  """Official Mask2Former tensor names -> transformers' names (without the `model.` prefix).

  Args:
    state: the "model" dict of a Detectron2 checkpoint.
    backbone: "resnet" or "swin".
  """
  ignore = [re.compile(p) for p in D2_IGNORE]
  backbone_state, out, unknown = {}, {}, []
  for name, value in state.items():
    if any(p.search(name) for p in ignore):
      continue
    if name.startswith("backbone."):
      backbone_state[name[len("backbone."):]] = value
      continue
    new = _rename(name[len("sem_seg_head."):], _HEAD_RENAMES) if name.startswith(
        "sem_seg_head.") else None
    if new is None:
      unknown.append(name)
    elif new.endswith((".self_attn.in_proj_weight", ".self_attn.in_proj_bias")):
      prefix, leaf = new.rsplit(".", 1)  # self_attn, in_proj_{weight,bias}
      _split_fused(out, prefix, leaf[len("in_proj_"):], value, ("q_proj", "k_proj", "v_proj"))
    else:
      out[new] = value
  if unknown:
    raise core.ConversionError("checkpoint tensors with no counterpart in Mask2Former: " +
                               ", ".join(sorted(unknown)[:20]))
  if backbone == "swin":
    bb = swin_to_hf_names(backbone_state)
  elif backbone == "resnet":
    bb = detectron2_resnet_to_hf_names({f"backbone.{k}": v for k, v in backbone_state.items()})
  else:
    raise ValueError(f"backbone must be 'resnet' or 'swin', got {backbone!r}")
  out.update({f"pixel_level_module.encoder.{k}": v for k, v in bb.items()})
  return out


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
  """`(model, variables)` for an official checkpoint and the `model` section of its config."""
  from m2f_jax.models.mask2former import build_model  # pylint: disable=g-import-not-at-top
  model = build_model(model_config)
  names = detectron2_to_hf_names(read_detectron2(path), model_config.backbone.name)
  return model, hf_convert.hf_variables(model, names, source=path)
