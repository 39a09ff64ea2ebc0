"""End-to-end parity with transformers' Mask2FormerForUniversalSegmentation, and weight import.

Each case builds the PyTorch reference with random weights (every parameter and buffer
perturbed), saves it with `save_pretrained`, imports it with `m2f_jax.convert.load_hf` and
compares the final and every intermediate prediction (max abs difference <= 1e-4, float32).
The Detectron2 import is tested by renaming the same reference weights to the official names
(an independent inverse of the import table, written from the official module attributes).
"""

import os
import pickle
import re

import flax
import jax
import numpy as np
import pytest

from m2f_jax import checkpoint
from m2f_jax import convert
from m2f_jax.convert import __main__ as convert_cli
from tests import reference

torch = reference.require_reference()
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig, SwinConfig  # pylint: disable=g-import-not-at-top,wrong-import-position

TOL = 1e-4
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _swin(**kw):
  base = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
              out_features=STAGES, drop_path_rate=0.0)
  base.update(kw)
  return SwinConfig(**base)


def _resnet(**kw):
  base = dict(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 1, 1],
              layer_type="bottleneck", out_features=STAGES)
  base.update(kw)
  return ResNetConfig(**base)


def _m2f(backbone, **kw):
  base = dict(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
              encoder_feedforward_dim=48, encoder_layers=2, decoder_layers=4,
              num_attention_heads=4, dim_feedforward=40, num_queries=9, num_labels=5)
  base.update(kw)
  return Mask2FormerConfig(**base)


# (name, config, batch, height, width)
CASES = {
    "swin": (lambda: _m2f(_swin()), 2, 160, 224),
    "swin_small_input_prenorm": (lambda: _m2f(_swin(window_size=7), pre_norm=True,
                                              num_queries=13, num_labels=11, decoder_layers=5),
                                 1, 96, 64),
    "resnet": (lambda: _m2f(_resnet(), num_queries=5, num_labels=3, decoder_layers=3), 2, 64, 96),
    "resnet_stride_in_1x1": (lambda: _m2f(_resnet(downsample_in_bottleneck=True, depths=[2, 1, 1, 1]),
                                          hidden_dim=64, feature_size=64, mask_feature_size=32,
                                          enforce_input_projection=True, num_queries=3,
                                          num_labels=1, decoder_layers=2), 3, 32, 64),
}


def _reference(name, tmp_path_factory, seed=0):
  make_cfg, b, h, w = CASES[name]
  torch.manual_seed(seed)
  ref = Mask2FormerForUniversalSegmentation(make_cfg()).eval()
  reference.perturb_(ref, seed=seed)
  directory = tmp_path_factory.mktemp(name)
  ref.save_pretrained(directory)
  images = np.random.RandomState(seed).randn(b, h, w, 3).astype(np.float32)
  out = ref(torch.from_numpy(reference.nhwc_to_nchw(images)), output_auxiliary_logits=True)
  logits = [reference.to_numpy(a["class_queries_logits"]) for a in out.auxiliary_logits]
  masks = [reference.to_numpy(a["masks_queries_logits"]) for a in out.auxiliary_logits]
  want = {
      "pred_logits": reference.to_numpy(out.class_queries_logits),
      "pred_masks": reference.to_numpy(out.masks_queries_logits),
      "aux_logits": np.stack(logits), "aux_masks": np.stack(masks),
  }
  return ref, str(directory), images, want


def _assert_close(got, want):
  assert set(got) == set(want)
  for key in want:
    assert got[key].shape == want[key].shape, (key, got[key].shape, want[key].shape)
    err = np.abs(np.asarray(got[key]) - want[key]).max()
    assert err <= TOL, f"{key}: max abs difference {err:.2e} > {TOL}"


@pytest.mark.parametrize("name", list(CASES))
def test_load_hf_matches_transformers(name, tmp_path_factory):
  _, directory, images, want = _reference(name, tmp_path_factory)
  model, variables = convert.load_hf(directory)
  got = jax.jit(model.apply)(variables, images)
  _assert_close(got, want)


# ----------------------------------------------------------------------------------------
# Detectron2: an independent inverse of the import, from transformers' names to the official
# module attributes (MultiScaleMaskedTransformerDecoder, MSDeformAttnPixelDecoder,
# D2SwinTransformer, Detectron2 ResNet).
# ----------------------------------------------------------------------------------------

def _hf_to_official(state):
  out = {}
  for k, v in state.items():
    if k.startswith("criterion."):
      continue
    k = k[len("model."):] if k.startswith("model.") else k
    m = re.match(r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
    if m:
      i, which, leaf = m.groups()
      key = f"sem_seg_head.predictor.transformer_self_attention_layers.{i}.self_attn.in_proj_{leaf}"
      out.setdefault(key, {})[which] = v
      continue
    m = re.match(r"pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$", k)
    if m:
      i, j, which, leaf = m.groups()
      key = f"backbone.layers.{i}.blocks.{j}.attn.qkv.{leaf}"
      out.setdefault(key, {})[which[0]] = v
      continue
    rules = [
        (r"^pixel_level_module\.decoder\.input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
        (r"^pixel_level_module\.decoder\.level_embed$", "sem_seg_head.pixel_decoder.transformer.level_embed"),
        (r"^pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn."),
        (r"^pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm1."),
        (r"^pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc1\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear1."),
        (r"^pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc2\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear2."),
        (r"^pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm2."),
        (r"^pixel_level_module\.decoder\.mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
        (r"^pixel_level_module\.decoder\.(adapter|layer)_(\d+)\.0\.weight$", r"sem_seg_head.pixel_decoder.\1_\2.weight"),
        (r"^pixel_level_module\.decoder\.(adapter|layer)_(\d+)\.1\.", r"sem_seg_head.pixel_decoder.\1_\2.norm."),
        (r"^transformer_module\.queries_features\.", "sem_seg_head.predictor.query_feat."),
        (r"^transformer_module\.queries_embedder\.", "sem_seg_head.predictor.query_embed."),
        (r"^transformer_module\.level_embed\.", "sem_seg_head.predictor.level_embed."),
        (r"^transformer_module\.input_projections\.", "sem_seg_head.predictor.input_proj."),
        (r"^transformer_module\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj."),
        (r"^transformer_module\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm."),
        (r"^transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn."),
        (r"^transformer_module\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.norm."),
        (r"^transformer_module\.decoder\.layers\.(\d+)\.fc1\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear1."),
        (r"^transformer_module\.decoder\.layers\.(\d+)\.fc2\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear2."),
        (r"^transformer_module\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.norm."),
        (r"^transformer_module\.decoder\.layernorm\.", "sem_seg_head.predictor.decoder_norm."),
        (r"^transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.", r"sem_seg_head.predictor.mask_embed.layers.\1."),
        (r"^class_predictor\.", "sem_seg_head.predictor.class_embed."),
        # D2SwinTransformer
        (r"^pixel_level_module\.encoder\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
        (r"^pixel_level_module\.encoder\.embeddings\.norm\.", "backbone.patch_embed.norm."),
        (r"^pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"backbone.layers.\1.blocks.\2.norm1."),
        (r"^pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"backbone.layers.\1.blocks.\2.norm2."),
        (r"^pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table$", r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table"),
        (r"^pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"backbone.layers.\1.blocks.\2.attn.proj."),
        (r"^pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"backbone.layers.\1.blocks.\2.mlp.fc1."),
        (r"^pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"backbone.layers.\1.blocks.\2.mlp.fc2."),
        (r"^pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.downsample\.", r"backbone.layers.\1.downsample."),
        (r"^pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.", lambda m: f"backbone.norm{int(m.group(1)) - 1}."),
        (r"^pixel_level_module\.encoder\.swin\.layernorm\.", None),
        # Detectron2 ResNet
        (r"^pixel_level_module\.encoder\.embedder\.embedder\.convolution\.weight$", "backbone.stem.conv1.weight"),
        (r"^pixel_level_module\.encoder\.embedder\.embedder\.normalization\.", "backbone.stem.conv1.norm."),
        (r"^pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight$", lambda m: f"backbone.res{int(m.group(1)) + 2}.{m.group(2)}.shortcut.weight"),
        (r"^pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", lambda m: f"backbone.res{int(m.group(1)) + 2}.{m.group(2)}.shortcut.norm."),
        (r"^pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight$", lambda m: f"backbone.res{int(m.group(1)) + 2}.{m.group(2)}.conv{int(m.group(3)) + 1}.weight"),
        (r"^pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\.", lambda m: f"backbone.res{int(m.group(1)) + 2}.{m.group(2)}.conv{int(m.group(3)) + 1}.norm."),
    ]
    for pattern, repl in rules:
      if re.search(pattern, k):
        if repl is not None:
          out[re.sub(pattern, repl, k)] = v
        break
    else:
      raise AssertionError(f"test inverse has no rule for {k}")
  for key, parts in list(out.items()):
    if isinstance(parts, dict):
      out[key] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  out["criterion.empty_weight"] = np.ones(3)  # present in official files, ignored
  out["pixel_mean"], out["pixel_std"] = np.zeros((3, 1, 1)), np.ones((3, 1, 1))
  return out


def _official_pickle(directory, tmp_path, name):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  state = _hf_to_official({k: v for k, v in load_file(os.path.join(directory, "model.safetensors")).items()
                           if not k.endswith("num_batches_tracked")})
  path = os.path.join(tmp_path, f"{name}.pkl")
  with open(path, "wb") as f:
    pickle.dump({"model": state, "__author__": "test"}, f)
  return path


@pytest.mark.parametrize("name", ["swin", "resnet"])
def test_load_detectron2_matches_reference(name, tmp_path_factory, tmp_path):
  ref, directory, images, want = _reference(name, tmp_path_factory)
  path = _official_pickle(directory, tmp_path, name)
  model_cfg = convert.hf.hf_config_to_model_config(ref.config.to_dict())
  model, variables = convert.load_detectron2(path, model_cfg)
  _assert_close(jax.jit(model.apply)(variables, images), want)


def test_cli_writes_checkpoint_that_loads(tmp_path_factory, tmp_path):
  _, directory, images, want = _reference("resnet", tmp_path_factory)
  out = tmp_path / "ckpt"
  assert convert_cli.main(["--from", "hf", directory, "--output", str(out)]) == 0
  config, model, variables = checkpoint.load_model(str(out))
  assert config.data.class_names == [f"LABEL_{i}" for i in range(3)]
  _assert_close(jax.jit(model.apply)(variables, images), want)
  # A second conversion to the same place refuses to overwrite what is there.
  assert convert_cli.main(["--from", "hf", directory, "--output", str(out)]) == 1
  assert sorted(os.listdir(out)) == ["config.json", "variables"]


def test_wrong_shape_names_tensor_and_writes_nothing(tmp_path_factory, tmp_path):
  ref, directory, _, _ = _reference("resnet", tmp_path_factory)
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  state = load_file(os.path.join(directory, "model.safetensors"))
  key = "model.transformer_module.queries_features.weight"
  state[key] = np.zeros((state[key].shape[0] + 1, state[key].shape[1]), np.float32)
  del state["class_predictor.bias"]
  state["model.extra.weight"] = np.zeros(3, np.float32)
  save_file(state, os.path.join(directory, "model.safetensors"))
  with pytest.raises(convert.ConversionError) as e:
    convert.load_hf(directory)
  msg = str(e.value)
  assert "transformer_module.queries_features.weight" in msg and "(6, 32)" in msg and "(5, 32)" in msg
  assert "class_predictor/bias" in msg and "extra.weight" in msg
  out = tmp_path / "never"
  assert convert_cli.main(["--from", "hf", directory, "--output", str(out)]) == 1
  assert not out.exists() and os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------
# ImageNet backbones (training initialization): torchvision ResNet and official Swin files.
# ----------------------------------------------------------------------------------------

def _torchvision_names(official):
  """Detectron2 ResNet names (from `_hf_to_official`) -> torchvision's."""
  out = {}
  for k, v in official.items():
    k = k[len("backbone."):]
    k = k.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
    m = re.match(r"res(\d)\.(\d+)\.(conv\d|shortcut)(\.norm)?\.(\w+)$", k)
    if m:
      stage, block, conv, norm, leaf = m.groups()
      layer = f"layer{int(stage) - 1}.{block}"
      if conv == "shortcut":
        k = f"{layer}.downsample.{1 if norm else 0}.{leaf}"
      else:
        k = f"{layer}.{'bn' + conv[-1] if norm else conv}.{leaf}"
    out[k] = torch.from_numpy(np.asarray(v))
  out["fc.weight"], out["fc.bias"] = torch.zeros(10, 64), torch.zeros(10)
  return out


@pytest.mark.parametrize("name", ["resnet", "swin"])
def test_imagenet_backbone_loads_into_backbone_only(name, tmp_path_factory, tmp_path):
  _, directory, _, _ = _reference(name, tmp_path_factory)
  model, want = convert.load_hf(directory)
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  official = _hf_to_official(load_file(os.path.join(directory, "model.safetensors")))
  backbone = {k: v for k, v in official.items() if k.startswith("backbone.")}
  path = str(tmp_path / "imagenet.pth")
  if name == "resnet":
    torch.save(_torchvision_names(backbone), path)
  else:  # the official release: {"model": ...}, no prefix, with a classifier and final norm
    state = {k[len("backbone."):]: torch.from_numpy(np.asarray(v)) for k, v in backbone.items()
             if not k.startswith("backbone.norm")}
    state.update({"norm.weight": torch.ones(64), "norm.bias": torch.zeros(64),
                  "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10),
                  "layers.0.blocks.0.attn.relative_position_index": torch.zeros(16, 16)})
    torch.save({"model": state}, path)
  init = jax.jit(model.init)(jax.random.PRNGKey(1), np.zeros((1, 64, 64, 3), np.float32))
  got = convert.load_imagenet_backbone(path, name, init)
  got, want, init = (
      {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(t).items()}
      for t in (got, want, init))
  assert got.keys() == want.keys()
  for k in got:
    in_backbone = "pixel_level_module/encoder/" in k and "hidden_states_norms" not in k
    np.testing.assert_array_equal(got[k], want[k] if in_backbone else init[k], err_msg=k)


def test_verify_cli_reports_parity(tmp_path_factory, capsys):
  from m2f_jax.convert import verify  # pylint: disable=g-import-not-at-top
  _, directory, _, _ = _reference("resnet", tmp_path_factory)
  assert verify.main(["--hf-dir", directory, "--size", "64x96", "--batch", "2"]) == 0
  out = capsys.readouterr().out
  assert "aux_masks[1]" in out and "OK tolerance" in out
