"""Import of official video model-zoo `.pkl` files (mask2former_video's VideoMaskFormer).

The `.pkl` is written from a random tiny video model by a name table written HERE from the
official module attributes (VideoMultiScaleMaskedTransformerDecoder, MSDeformAttnPixelDecoder,
Detectron2's ResNet), independent of `m2f_jax/convert/names.py`; loading it must give back
every tensor exactly, through the library and the CLI, and a wrong tensor is named.
"""

import os
import pickle
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax import checkpoint
from m2f_jax import config_lib
from m2f_jax import convert
from m2f_jax.convert import __main__ as convert_cli
from m2f_jax.models.mask2former import build_model

CONFIG_TEXT = '''
from m2f_jax import config_lib
def get_config(arg=""):
  config = config_lib.load_config_file({path!r})
  config.model.backbone.norm = "frozen_bn"  # as the official models
  config.model.update(decoder_layers=3, encoder_layers=1)
  return config  # with configs/synthetic_video.py's semantic head: convert drops it
'''


def _config():
  config = config_lib.load_config_file("configs/synthetic_video.py")
  config.model.backbone.norm = "frozen_bn"
  config.model.update(decoder_layers=3, encoder_layers=1)
  config.model.semantic_head = False  # the official model has no per-pixel class head
  return config


_P, _D = "sem_seg_head.predictor.", "sem_seg_head.pixel_decoder."
# Flax path (joined by "/") -> official name (without the leaf), by regex.
_TABLE = [
    (r"^class_predictor$", _P + "class_embed"),
    (r"^transformer_module/queries_embedder$", _P + "query_embed"),
    (r"^transformer_module/queries_features$", _P + "query_feat"),
    (r"^transformer_module/level_embed$", _P + "level_embed"),
    (r"^transformer_module/decoder/layernorm$", _P + "decoder_norm"),
    (r"^transformer_module/decoder/layers_(\d+)/cross_attn$",
     _P + r"transformer_cross_attention_layers.\1.multihead_attn"),
    (r"^transformer_module/decoder/layers_(\d+)/cross_attn/out_proj$",
     _P + r"transformer_cross_attention_layers.\1.multihead_attn.out_proj"),
    (r"^transformer_module/decoder/layers_(\d+)/cross_attn_layer_norm$",
     _P + r"transformer_cross_attention_layers.\1.norm"),
    (r"^transformer_module/decoder/layers_(\d+)/self_attn/out_proj$",
     _P + r"transformer_self_attention_layers.\1.self_attn.out_proj"),
    (r"^transformer_module/decoder/layers_(\d+)/self_attn_layer_norm$",
     _P + r"transformer_self_attention_layers.\1.norm"),
    (r"^transformer_module/decoder/layers_(\d+)/fc(\d)$", _P + r"transformer_ffn_layers.\1.linear\2"),
    (r"^transformer_module/decoder/layers_(\d+)/final_layer_norm$",
     _P + r"transformer_ffn_layers.\1.norm"),
    (r"^transformer_module/decoder/mask_predictor/mask_embedder_(\d)_0$",
     _P + r"mask_embed.layers.\1"),
    (r"^pixel_level_module/decoder/input_projections_(\d)_(\d)$", _D + r"input_proj.\1.\2"),
    (r"^pixel_level_module/decoder$", _D + "transformer"),  # level_embed
    (r"^pixel_level_module/decoder/encoder/layers_(\d+)/self_attn/(\w+)$",
     _D + r"transformer.encoder.layers.\1.self_attn.\2"),
    (r"^pixel_level_module/decoder/encoder/layers_(\d+)/self_attn_layer_norm$",
     _D + r"transformer.encoder.layers.\1.norm1"),
    (r"^pixel_level_module/decoder/encoder/layers_(\d+)/fc(\d)$",
     _D + r"transformer.encoder.layers.\1.linear\2"),
    (r"^pixel_level_module/decoder/encoder/layers_(\d+)/final_layer_norm$",
     _D + r"transformer.encoder.layers.\1.norm2"),
    (r"^pixel_level_module/decoder/(adapter|layer)_(\d)_0$", _D + r"\1_\2"),
    (r"^pixel_level_module/decoder/(adapter|layer)_(\d)_1$", _D + r"\1_\2.norm"),
    (r"^pixel_level_module/decoder/mask_projection$", _D + "mask_features"),
    (r"^pixel_level_module/encoder/embedder/embedder/convolution$", "backbone.stem.conv1"),
    (r"^pixel_level_module/encoder/embedder/embedder/normalization$", "backbone.stem.conv1.norm"),
    (r"^pixel_level_module/encoder/encoder/stages_(\d)/layers_(\d+)/layer_(\d)/convolution$",
     lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}"),
    (r"^pixel_level_module/encoder/encoder/stages_(\d)/layers_(\d+)/layer_(\d)/normalization$",
     lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.norm"),
    (r"^pixel_level_module/encoder/encoder/stages_(\d)/layers_(\d+)/shortcut/convolution$",
     lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.shortcut"),
    (r"^pixel_level_module/encoder/encoder/stages_(\d)/layers_(\d+)/shortcut/normalization$",
     lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.shortcut.norm"),
]
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias",
           "mean": "running_mean", "var": "running_var", "in_proj_weight": "in_proj_weight",
           "in_proj_bias": "in_proj_bias", "level_embed": "level_embed"}


def _official_state(variables) -> dict[str, np.ndarray]:
  """Flax variables -> the official video state dict (torch layouts)."""
  out, fused = {}, {}
  for col in variables:
    for path, value in flax.traverse_util.flatten_dict(variables[col]).items():
      module, leaf, value = "/".join(path[:-1]), path[-1], np.asarray(value)
      m = re.match(r"^transformer_module/decoder/layers_(\d+)/self_attn/([qkv])_proj$", module)
      if m:  # the official self-attention is one nn.MultiheadAttention: fused in_proj
        key = (_P + f"transformer_self_attention_layers.{m[1]}.self_attn.in_proj_"
               + ("weight" if leaf == "kernel" else "bias"))
        fused.setdefault(key, {})[m[2]] = value.T if leaf == "kernel" else value
        continue
      for pattern, repl in _TABLE:
        if re.search(pattern, module):
          name = re.sub(pattern, repl, module) if isinstance(repl, str) else repl(
              re.match(pattern, module))
          break
      else:
        raise AssertionError(f"test table has no rule for {module}/{leaf}")
      if leaf == "kernel":
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      out[f"{name}.{_LEAVES[leaf]}"] = value
  for key, parts in fused.items():
    out[key] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  out["criterion.empty_weight"] = np.ones(5)  # present in official files, not a parameter
  out["pixel_mean"], out["pixel_std"] = np.zeros((3, 1, 1)), np.ones((3, 1, 1))
  return out


@pytest.fixture(scope="module")
def official_pkl(tmp_path_factory):
  config = _config()
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.PRNGKey(7), jnp.zeros((1, 2, 64, 64, 3)))
  # Non-trivial values everywhere (frozen BN statistics included).
  leaves, tree = jax.tree.flatten(variables)
  rng = np.random.RandomState(0)
  variables = jax.tree.unflatten(tree, [
      np.asarray(x) + 0.1 * rng.rand(*x.shape).astype(np.float32) for x in leaves])
  path = tmp_path_factory.mktemp("video_pkl") / "model_final.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": _official_state(variables), "__author__": "test"}, f)
  return str(path), variables


def test_load_detectron2_video_pkl(official_pkl):
  path, want = official_pkl
  model, got = convert.load_detectron2(path, _config().model)
  assert getattr(model, "clip_input", False)
  flat_want = flax.traverse_util.flatten_dict(want)
  flat_got = flax.traverse_util.flatten_dict(got)
  assert flat_got.keys() == flat_want.keys()
  for k, v in flat_want.items():
    np.testing.assert_array_equal(np.asarray(flat_got[k]), v, err_msg="/".join(k))
  # A config with the training-only semantic head (configs/synthetic_video.py's): the
  # official file loads into the model without it.
  config = _config()
  config.model.semantic_head = True
  _, got = convert.load_detectron2(path, config.model)
  assert flax.traverse_util.flatten_dict(got).keys() == flat_want.keys()


def test_convert_cli_video_pkl_and_errors(official_pkl, tmp_path, capsys):
  path, want = official_pkl
  config_file = tmp_path / "video_config.py"
  config_file.write_text(CONFIG_TEXT.format(path=os.path.abspath("configs/synthetic_video.py")))
  out = tmp_path / "converted"
  assert convert_cli.main(["--from", "detectron2", path, "--config", str(config_file),
                           "--output", str(out)]) == 0
  config, model, variables = checkpoint.load_model(str(out))
  assert config.model.video and getattr(model, "clip_input", False)
  assert not config.model.semantic_head and "semantic_head" not in variables["params"]
  np.testing.assert_array_equal(
      np.asarray(variables["params"]["class_predictor"]["kernel"]),
      want["params"]["class_predictor"]["kernel"])
  # A tensor of the wrong shape is named, and nothing is written.
  with open(path, "rb") as f:
    state = pickle.load(f)
  state["model"][_P + "class_embed.weight"] = np.zeros((9, 64), np.float32)
  bad = tmp_path / "bad.pkl"
  with open(bad, "wb") as f:
    pickle.dump(state, f)
  assert convert_cli.main(["--from", "detectron2", str(bad), "--config", str(config_file),
                           "--output", str(tmp_path / "bad_out")]) == 1
  assert "class_predictor/kernel" in capsys.readouterr().err  # the same report as images
  assert not (tmp_path / "bad_out").exists()
