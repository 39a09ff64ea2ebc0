"""Every rename table: the tensor names of each checkpoint format -> transformers' names.

The Flax modules are named after transformers' `Mask2FormerForUniversalSegmentation` (the
names `save_pretrained` writes), so `m2f_jax.convert.core` maps a transformers name to a Flax
path by one rule. The other formats are first renamed here:

  transformers >= 5 in-memory Swin names -> its on-disk names         `saved_hf_name`
  official Detectron2 Mask2Former (`sem_seg_head.*`, `backbone.*`)  `detectron2_to_hf_names`
  official Swin (D2SwinTransformer, ImageNet releases)             `swin_to_hf_names`
  torchvision ResNet (ImageNet)                                    `torchvision_to_hf_names`
  Detectron2 ResNet (model zoo, `R-50.pkl`)                        `detectron2_resnet_to_hf_names`

written from the module attributes of the official code (msdeformattn.py,
mask2former_transformer_decoder.py, backbone/swin.py), Detectron2's ResNet and torchvision.
Fused q/k/v tensors (nn.MultiheadAttention's `in_proj`, Swin's `qkv`) are split.
"""

from collections.abc import Mapping
import re
from typing import Any

import numpy as np

from m2f_jax.convert.core import ConversionError

# ------------------------------------------------------------------------------------------
# transformers
# ------------------------------------------------------------------------------------------

# Tensors of a transformers checkpoint that the Flax model has no use for.
HF_IGNORE = (
    r"^criterion\.",           # the loss's class weights, rebuilt from the config
    r"\.swin\.layernorm\.",    # SwinModel's final norm, unused by the backbone
    r"relative_position_index$",
)

# transformers >= 5 names some Swin tensors differently in memory than on disk; a directory
# written with those names is brought back to the on-disk names the Flax modules follow.
_NEW_TO_SAVED_SWIN = (
    (r"\.swin\.(encoder|embeddings)\.", r".\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$",
     ".attention.self.relative_position_bias_table"),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
_BACKBONE_PREFIX = "model.pixel_level_module.encoder."


def saved_hf_name(name: str) -> str:
  if not name.startswith(_BACKBONE_PREFIX):
    return name
  for pattern, repl in _NEW_TO_SAVED_SWIN:
    name = re.sub(pattern, repl, name)
  return name


# ------------------------------------------------------------------------------------------
# Detectron2 Mask2Former and the official Swin
# ------------------------------------------------------------------------------------------

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
    raise ConversionError("unknown Swin tensors: " + ", ".join(sorted(unknown)[:20]))
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
    raise ConversionError("checkpoint tensors with no counterpart in Mask2Former: " +
                               ", ".join(sorted(unknown)[:20]))
  if backbone == "swin":
    bb = swin_to_hf_names(backbone_state)
  elif backbone == "resnet":
    bb = detectron2_resnet_to_hf_names({f"backbone.{k}": v for k, v in backbone_state.items()})
  else:
    raise ValueError(f"backbone must be 'resnet' or 'swin', got {backbone!r}")
  out.update({f"pixel_level_module.encoder.{k}": v for k, v in bb.items()})
  return out


# ----------------------------------------------------------------------------------------
# Renaming other ResNet checkpoint formats to transformers' ResNetBackbone names.
# ----------------------------------------------------------------------------------------

_BN_LEAVES = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

_TORCHVISION_RULES = (
    (re.compile(r"^conv1\.weight$"), lambda m: "embedder.embedder.convolution.weight"),
    (re.compile(rf"^bn1\.{_BN_LEAVES}$"),
     lambda m: f"embedder.embedder.normalization.{m[1]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$"),
     lambda m: f"{_layer(m[1], 1, m[2])}.layer.{int(m[3]) - 1}.convolution.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.bn([1-3])\.{_BN_LEAVES}$"),
     lambda m: f"{_layer(m[1], 1, m[2])}.layer.{int(m[3]) - 1}.normalization.{m[4]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"{_layer(m[1], 1, m[2])}.shortcut.convolution.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN_LEAVES}$"),
     lambda m: f"{_layer(m[1], 1, m[2])}.shortcut.normalization.{m[3]}"),
)
_TORCHVISION_DROP = re.compile(r"^fc\.")

_DETECTRON2_RULES = (
    (re.compile(r"^stem\.conv1\.weight$"), lambda m: "embedder.embedder.convolution.weight"),
    (re.compile(rf"^stem\.conv1\.norm\.{_BN_LEAVES}$"),
     lambda m: f"embedder.embedder.normalization.{m[1]}"),
    (re.compile(r"^res([2-5])\.(\d+)\.conv([1-3])\.weight$"),
     lambda m: f"{_layer(m[1], 2, m[2])}.layer.{int(m[3]) - 1}.convolution.weight"),
    (re.compile(rf"^res([2-5])\.(\d+)\.conv([1-3])\.norm\.{_BN_LEAVES}$"),
     lambda m: f"{_layer(m[1], 2, m[2])}.layer.{int(m[3]) - 1}.normalization.{m[4]}"),
    (re.compile(r"^res([2-5])\.(\d+)\.shortcut\.weight$"),
     lambda m: f"{_layer(m[1], 2, m[2])}.shortcut.convolution.weight"),
    (re.compile(rf"^res([2-5])\.(\d+)\.shortcut\.norm\.{_BN_LEAVES}$"),
     lambda m: f"{_layer(m[1], 2, m[2])}.shortcut.normalization.{m[3]}"),
)
# Detectron2's tools/convert-torchvision-to-d2.py files the ImageNet classifier as stem.fc.
_DETECTRON2_DROP = re.compile(r"^(stem\.)?(fc|linear)\.")


def _layer(stage: str, first: int, index: str) -> str:
  return f"encoder.stages.{int(stage) - first}.layers.{int(index)}"


def _rename_resnet(state_dict: Mapping[str, Any], rules, drop: re.Pattern[str], source: str,
            strip_prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  unknown = []
  for name, value in state_dict.items():
    key = name[len(strip_prefix):] if strip_prefix and name.startswith(strip_prefix) else name
    if drop.search(key):
      continue
    for pattern, new_name in rules:
      m = pattern.match(key)
      if m:
        target = new_name(m)
        if target in out:
          raise ConversionError(f"{source}: two tensors map to {target!r} (the second is "
                                f"{name!r}); is a prefix applied twice?")
        out[target] = value
        break
    else:
      unknown.append(name)
  if unknown:
    raise ConversionError(
        f"{source}: tensors that are not part of a ResNet backbone (select the backbone's "
        f"tensors before renaming):\n  " + "\n  ".join(sorted(unknown)))
  return out


def torchvision_to_hf_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Renames a torchvision ResNet state dict to transformers' `ResNetBackbone` names.

  `conv1`/`bn1` -> `embedder.embedder.{convolution,normalization}`,
  `layer{s}.{j}.conv{k}`/`bn{k}` -> `encoder.stages.{s-1}.layers.{j}.layer.{k-1}.*`,
  `layer{s}.{j}.downsample.0`/`.1` -> `...shortcut.{convolution,normalization}`; the
  classifier `fc.*` is dropped. Values pass through untouched; names carry no prefix.

  Raises:
    ConversionError: naming every tensor that is not part of a torchvision ResNet.
  """
  return _rename_resnet(state_dict, _TORCHVISION_RULES, _TORCHVISION_DROP, "torchvision ResNet")


def detectron2_resnet_to_hf_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Renames a Detectron2 ResNet state dict to transformers' `ResNetBackbone` names.

  Accepts the names of a full Detectron2 model (`backbone.stem.conv1.weight`, ...) and of
  an ImageNet-pretrained `R-50.pkl` (`stem.conv1.weight`, ...): `stem.conv1[.norm]` ->
  `embedder.embedder.{convolution,normalization}`, `res{s}.{j}.conv{k}[.norm]` ->
  `encoder.stages.{s-2}.layers.{j}.layer.{k-1}.*`, `res{s}.{j}.shortcut[.norm]` ->
  `...shortcut.{convolution,normalization}`; a classifier (`stem.fc.*`, `fc.*`,
  `linear.*`) is dropped. Values pass through untouched; names carry no prefix.

  Raises:
    ConversionError: naming every tensor that is not part of a Detectron2 ResNet (pass
      only the `backbone.*` tensors of a full model).
  """
  return _rename_resnet(state_dict, _DETECTRON2_RULES, _DETECTRON2_DROP, "Detectron2 ResNet",
                 strip_prefix="backbone.")
