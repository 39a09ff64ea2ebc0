"""ResNet backbone against transformers' ResNetBackbone; torchvision / Detectron2 renaming."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from m2f_jax.convert.core import ConversionError, abstract_variables, state_dict_to_variables
from m2f_jax.convert import names
from m2f_jax.models.backbones import resnet
from tests import reference

TINY = dict(depths=[1, 2, 1, 1], hidden_sizes=[16, 32, 64, 128], embedding_size=8)


def _hf_backbone(seed, **fields):
  reference.require_reference()
  from transformers import ResNetBackbone, ResNetConfig
  config = ResNetConfig(**fields, out_features=["stage1", "stage2", "stage3", "stage4"])
  return reference.perturb_(ResNetBackbone(config).eval(), seed=seed)


def _hf_features(model, images_nhwc):
  torch = reference.require_reference()
  maps = model(torch.from_numpy(reference.nhwc_to_nchw(images_nhwc))).feature_maps
  return [reference.nchw_to_nhwc(reference.to_numpy(m)) for m in maps]


def _check_parity(model, hf, images, apply_fn=None):
  """Converts `hf`'s state dict, runs both, returns (apply_fn, variables, max abs diff)."""
  variables = state_dict_to_variables(hf.state_dict(), abstract_variables(model, images),
                                      source="HF ResNetBackbone")
  apply_fn = apply_fn or jax.jit(model.apply)
  got = apply_fn(variables, images)
  assert list(got) == ["res2", "res3", "res4", "res5"]
  want = _hf_features(hf, images)
  diff = 0.0
  for name, w in zip(resnet.FEATURE_NAMES, want):
    assert got[name].shape == w.shape, (name, got[name].shape, w.shape)
    assert got[name].shape[-1] == model.out_channels[name]
    diff = max(diff, float(np.max(np.abs(np.asarray(got[name]) - w))))
  assert diff <= 1e-4, diff
  return apply_fn, variables, diff


@pytest.fixture(scope="module")
def bottleneck():
  """The tiny bottleneck model, its perturbed HF twin, images, jitted apply, variables."""
  hf = _hf_backbone(0, **TINY)
  model = resnet.ResNet(**TINY)
  images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  apply_fn, variables, diff = _check_parity(model, hf, images)
  return hf, model, images, apply_fn, variables, diff


def test_bottleneck_matches_transformers(bottleneck):
  _, model, images, apply_fn, variables, diff = bottleneck  # the fixture checked parity
  out = apply_fn(variables, images)
  assert [out[k].shape[1:3] for k in resnet.FEATURE_NAMES] == [(16, 24), (8, 12), (4, 6),
                                                                (2, 3)]
  assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
  print("bottleneck max abs diff", diff)


def test_downsample_in_bottleneck_matches_transformers():
  fields = dict(TINY, downsample_in_bottleneck=True)
  images = np.random.default_rng(1).normal(size=(1, 64, 96, 3)).astype(np.float32)
  _, _, diff = _check_parity(resnet.ResNet(**fields), _hf_backbone(1, **fields), images)
  print("downsample_in_bottleneck max abs diff", diff)


def test_basic_odd_sizes_first_stage_stride_match_transformers():
  # Odd sizes at every level check torch's padding and max-pool rounding.
  fields = dict(TINY, layer_type="basic", downsample_in_first_stage=True)
  images = np.random.default_rng(2).normal(size=(1, 50, 70, 3)).astype(np.float32)
  model = resnet.ResNet(**fields)
  _, _, diff = _check_parity(model, _hf_backbone(2, **fields), images)
  assert model.out_strides["res5"] == 64
  print("basic max abs diff", diff)


def test_names_match_mask2former_pixel_level_encoder():
  reference.require_reference()
  from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
  backbone = ResNetConfig(**TINY, out_features=["stage1", "stage2", "stage3", "stage4"])
  m2f = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
      backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
      encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
      dim_feedforward=16, num_queries=3, num_labels=2))
  prefix = "model.pixel_level_module.encoder."
  state = {k[len(prefix):]: v for k, v in m2f.state_dict().items() if k.startswith(prefix)}
  assert "embedder.embedder.convolution.weight" in state
  assert "encoder.stages.1.layers.0.shortcut.normalization.running_var" in state
  abstract = abstract_variables(resnet.ResNet(**TINY), jnp.zeros((1, 64, 64, 3)))
  state_dict_to_variables(state, abstract, source="Mask2Former pixel_level_module.encoder")


# ----------------------------------------------------------------------------------------
# Renaming. The inverses below are written independently of resnet.py's rules.
# ----------------------------------------------------------------------------------------


def _hf_to_torchvision(name):
  name = re.sub(r"^embedder\.embedder\.convolution\.", "conv1.", name)
  name = re.sub(r"^embedder\.embedder\.normalization\.", "bn1.", name)
  parts = name.split(".")
  if parts[0] == "encoder":  # encoder.stages.S.layers.J.<rest>
    s, j, rest = int(parts[2]), parts[4], parts[5:]
    if rest[0] == "shortcut":
      rest = ["downsample", "0" if rest[1] == "convolution" else "1"] + rest[2:]
    else:  # layer.K.convolution|normalization.leaf
      kind = "conv" if rest[2] == "convolution" else "bn"
      rest = [f"{kind}{int(rest[1]) + 1}"] + rest[3:]
    name = ".".join([f"layer{s + 1}", j] + rest)
  return name


def _hf_to_detectron2(name):
  name = name.replace("embedder.embedder.convolution.", "stem.conv1.")
  name = name.replace("embedder.embedder.normalization.", "stem.conv1.norm.")
  parts = name.split(".")
  if parts[0] == "encoder":
    s, j, rest = int(parts[2]), parts[4], parts[5:]
    if rest[0] == "shortcut":
      head = ["shortcut"]
      rest = rest[1:]
    else:
      head = [f"conv{int(rest[1]) + 1}"]
      rest = rest[2:]
    norm = ["norm"] if rest[0] == "normalization" else []
    name = ".".join([f"res{s + 2}", j] + head + norm + rest[1:])
  return "backbone." + name


def test_torchvision_and_detectron2_renaming_round_trip(bottleneck):
  hf, model, images, apply_fn, variables, _ = bottleneck
  hf_state = hf.state_dict()
  want = apply_fn(variables, images)
  abstract = abstract_variables(model, images)

  tv = {_hf_to_torchvision(k): v for k, v in hf_state.items()}
  assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv3.weight", "layer1.0.bn2.bias",
          "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
          "layer4.0.bn3.weight"} <= set(tv)
  tv["fc.weight"], tv["fc.bias"] = np.zeros((10, 128)), np.zeros((10,))
  d2 = {_hf_to_detectron2(k): v for k, v in hf_state.items()}
  assert {"backbone.stem.conv1.weight", "backbone.stem.conv1.norm.running_var",
          "backbone.res2.0.conv1.weight", "backbone.res2.0.conv3.norm.bias",
          "backbone.res3.0.shortcut.weight", "backbone.res3.0.shortcut.norm.running_mean",
          "backbone.res5.0.conv2.norm.weight"} <= set(d2)
  d2_pretrained = {k[len("backbone."):]: v for k, v in d2.items()}  # R-50.pkl style
  d2_pretrained["stem.fc.weight"] = np.zeros((10, 128))

  for renamed in (names.torchvision_to_hf_names(tv), names.detectron2_resnet_to_hf_names(d2),
                  names.detectron2_resnet_to_hf_names(d2_pretrained)):
    assert set(renamed) == set(hf_state)
    assert all(renamed[k] is hf_state[k] for k in renamed)
    got = apply_fn(state_dict_to_variables(renamed, abstract), images)
    for name in resnet.FEATURE_NAMES:
      np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))


def test_renaming_rejects_foreign_tensors():
  with pytest.raises(ConversionError, match="sem_seg_head.predictor.weight"):
    names.detectron2_resnet_to_hf_names({"backbone.stem.conv1.weight": 0,
                                          "sem_seg_head.predictor.weight": 0})
  with pytest.raises(ConversionError, match="layer5.0.conv1.weight"):
    names.torchvision_to_hf_names({"layer5.0.conv1.weight": 0})


def test_frozen_batchnorm_has_no_gradient_and_ignores_train():
  model = resnet.ResNet(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8], embedding_size=4,
                        layer_type="basic")
  images = jnp.ones((1, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), images)
  assert set(variables) == {"params", "batch_stats"}
  loss = jax.jit(lambda p, train: model.apply({**variables, "params": p}, images, train=train)[
      "res5"].sum(), static_argnums=1)
  grads = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], True)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  norm_grads = [g for path, g in flat if "normalization" in jax.tree_util.keystr(path)]
  conv_grads = [g for path, g in flat if "convolution" in jax.tree_util.keystr(path)]
  assert norm_grads and all(float(jnp.abs(g).max()) == 0.0 for g in norm_grads)
  assert any(float(jnp.abs(g).max()) > 0.0 for g in conv_grads)
  np.testing.assert_array_equal(loss(variables["params"], True),
                                loss(variables["params"], False))


def test_group_norm_variant_has_no_statistics_and_trains():
  """norm="group_norm" (a backbone trained from scratch): no batch_stats, trainable affine."""
  from m2f_jax.training import optimizer  # pylint: disable=g-import-not-at-top
  model = resnet.ResNet(**TINY, norm="group_norm")
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3)) * 50.0 + 20.0
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
  assert set(variables) == {"params"}
  features = jax.jit(model.apply)(variables, images)
  assert features["res2"].shape == (2, 16, 16, TINY["hidden_sizes"][0])
  assert np.isfinite(features["res5"]).all()
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  norm_paths = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat
                if "group_norm" in str(path)]
  assert norm_paths and not any("normalization" in p for p in norm_paths)
  # Under the optimizer's rules the GroupNorm affine is trained (not the frozen-BN rule).
  params = {"pixel_level_module": {"encoder": variables["params"]}}
  cfg = ml_collections.ConfigDict(dict(
      optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, backbone_multiplier=1.0,
      clip_grad_norm=0.0, warmup_steps=0, warmup_factor=1.0, lr_schedule="poly",
      decay_steps=[], decay_factor=0.1, poly_power=0.9, max_steps=10))
  tx = optimizer.make_optimizer(cfg, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  scales = [u for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]
            if "group_norm" in str(path)]
  assert scales and all(np.abs(np.asarray(u)).min() > 0 for u in scales)
  with pytest.raises(ValueError, match="norm='batch_norm'"):
    resnet.ResNet(**TINY, norm="batch_norm").init(jax.random.PRNGKey(1), images)
