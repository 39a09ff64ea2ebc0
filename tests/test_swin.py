"""Swin backbone: window helpers against direct computations, res2..res5 against transformers."""

import copy
import functools
import os
import tempfile

import jax
import numpy as np
import pytest

from m2f_jax.convert.core import abstract_variables, state_dict_to_variables
from m2f_jax.models.backbones import swin
from tests import reference

_PREFIX = "model.pixel_level_module.encoder."


# ----------------------------------------------------------------------------------------
# Window helpers.
# ----------------------------------------------------------------------------------------


def test_window_partition_matches_slices_and_reverses():
  x = np.random.default_rng(0).normal(size=(2, 6, 9, 5))
  windows = swin.window_partition(x, 3)
  assert windows.shape == (2, 6, 9, 5)
  for i in range(2):
    for j in range(3):
      want = x[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3].reshape(2, 9, 5)
      np.testing.assert_array_equal(windows[:, i * 3 + j], want)
  np.testing.assert_array_equal(swin.window_reverse(windows, 3, 6, 9), x)
  jx = swin.window_reverse(swin.window_partition(jax.numpy.asarray(x), 3), 3, 6, 9)
  np.testing.assert_allclose(np.asarray(jx), x, rtol=1e-6)


def _brute_force_mask(height, width, ws, shift):
  """The official construction: label 3x3 slice regions, then compare labels per window."""
  labels = np.zeros((height, width))
  cnt = 0
  for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
    for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
      labels[hs, wsl] = cnt
      cnt += 1
  masks = []
  for i in range(height // ws):
    for j in range(width // ws):
      tokens = [labels[i * ws + a, j * ws + b] for a in range(ws) for b in range(ws)]
      masks.append([[0.0 if p == q else -100.0 for q in tokens] for p in tokens])
  return np.array(masks)


@pytest.mark.parametrize("height,width,ws,shift", [(8, 12, 4, 2), (7, 14, 7, 3), (3, 6, 3, 1)])
def test_shifted_window_mask_matches_brute_force(height, width, ws, shift):
  got = swin.shifted_window_attention_mask(height, width, ws, shift)
  np.testing.assert_array_equal(got, _brute_force_mask(height, width, ws, shift))


@pytest.mark.parametrize("ws", [2, 3, 7])
def test_relative_position_index(ws):
  got = swin.relative_position_index(ws)
  assert got.shape == (ws * ws, ws * ws)
  for p in range(ws * ws):
    for q in range(ws * ws):
      dy, dx = p // ws - q // ws, p % ws - q % ws
      assert got[p, q] == (dy + ws - 1) * (2 * ws - 1) + dx + ws - 1
  # Every displacement has its own row of the table and every row is used.
  assert sorted(set(got.ravel().tolist())) == list(range((2 * ws - 1)**2))


def test_adapt_window_rejects_stages_smaller_than_window():
  model = swin.Swin(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=7,
                    adapt_window_to_input=True)
  with pytest.raises(ValueError, match="smaller than the window"):
    abstract_variables(model, np.zeros((1, 64, 64, 3), np.float32))


# ----------------------------------------------------------------------------------------
# Parity with transformers' Mask2Former Swin backbone.
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _reference(window_size, depths, seed):
  """A perturbed tiny Mask2Former's backbone and its tensors under the `save_pretrained` names."""
  torch = reference.require_reference()
  from safetensors.numpy import load_file
  from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
  torch.manual_seed(seed)
  backbone_config = SwinConfig(
      embed_dim=16, depths=list(depths), num_heads=[1, 2, 4, 8], window_size=window_size,
      out_features=["stage1", "stage2", "stage3", "stage4"])
  config = Mask2FormerConfig(
      backbone_config=backbone_config, hidden_dim=32, mask_feature_size=32, feature_size=32,
      encoder_layers=1, decoder_layers=2, num_queries=2, encoder_feedforward_dim=32,
      dim_feedforward=32, num_attention_heads=2)
  model = Mask2FormerForUniversalSegmentation(config).eval()
  encoder = reference.perturb_(model.model.pixel_level_module.encoder, seed)
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    saved = load_file(os.path.join(tmp, "model.safetensors"))
  state_dict = {k[len(_PREFIX):]: v for k, v in saved.items() if k.startswith(_PREFIX)}
  return encoder, state_dict


def _hf_features(encoder, images, *, always_partition=True):
  """NHWC res2..res5 of transformers' backbone (or of its SwinModel run without
  `always_partition`, with the backbone's output norms applied as `SwinBackbone` does)."""
  torch = reference.require_reference()
  x = torch.from_numpy(reference.nhwc_to_nchw(images).copy())
  if always_partition:
    maps = encoder(x).feature_maps
  else:
    out = encoder.swin(x, always_partition=False, output_hidden_states=True,
                       output_hidden_states_before_downsampling=True)
    maps = []
    for i, hidden in enumerate(out.reshaped_hidden_states[1:]):
      norm = encoder.hidden_states_norms[f"stage{i + 1}"]
      maps.append(norm(hidden.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
  return {f"res{i + 2}": reference.nchw_to_nhwc(reference.to_numpy(m)) for i, m in enumerate(maps)}


def _run(model, variables, images, **kwargs):
  return jax.tree.map(np.asarray, jax.jit(functools.partial(model.apply, **kwargs))(
      variables, images))


def _convert(model, state_dict, images):
  return state_dict_to_variables(state_dict, abstract_variables(model, images),
                                 ignore=[r"^swin\.layernorm"], source="transformers Swin")


def _assert_close(got, want, shapes):
  assert sorted(got) == ["res2", "res3", "res4", "res5"]
  for name, shape in zip(sorted(got), shapes):
    assert got[name].shape == shape, (name, got[name].shape)
    diff = np.abs(got[name] - want[name]).max()
    assert diff <= 1e-4, f"{name}: max abs diff {diff}"


def test_matches_transformers_with_padding():
  """Batch 2, H/W not multiples of the patch; odd merges; every stage padded to window 7."""
  reference.require_reference()
  encoder, state_dict = _reference(7, (2, 2, 2, 2), seed=0)
  images = np.random.default_rng(1).normal(size=(2, 98, 150, 3)).astype(np.float32)
  model = swin.Swin(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)
  variables = _convert(model, state_dict, images)
  got = _run(model, variables, images)
  # 98x150 -> patches 25x38 -> 13x19 -> 7x10 -> 4x5.
  _assert_close(got, _hf_features(encoder, images),
                [(2, 25, 38, 16), (2, 13, 19, 32), (2, 7, 10, 64), (2, 4, 5, 128)])
  assert model.out_channels == {"res2": 16, "res3": 32, "res4": 64, "res5": 128}
  assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

  # Stochastic depth is the identity at inference; in training it drops whole branches.
  dropping = swin.Swin(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
                       drop_path_rate=0.5)
  for name, value in _run(dropping, variables, images).items():
    np.testing.assert_array_equal(value, got[name])
  train = jax.jit(functools.partial(dropping.apply, train=True))
  rngs = {"dropout": jax.random.PRNGKey(0)}
  trained = np.asarray(train(variables, images, rngs=rngs)["res5"])
  assert np.abs(trained - got["res5"]).max() > 1e-3
  np.testing.assert_array_equal(trained, train(variables, images, rngs=rngs)["res5"])


def test_adapt_window_to_input_matches_transformers_swin_model():
  """Window 3 on 96x160: res5 is 3x5, where transformers' SwinModel drops the shift."""
  reference.require_reference()
  images = np.random.default_rng(2).normal(size=(1, 96, 160, 3)).astype(np.float32)
  shapes = [(1, 24, 40, 16), (1, 12, 20, 32), (1, 6, 10, 64), (1, 3, 5, 128)]
  encoder, state_dict = _reference(3, (1, 1, 2, 2), seed=1)
  want_padded = _hf_features(encoder, images)
  # On a copy: transformers' SwinLayer keeps the adapted window and shift afterwards.
  want_adapted = _hf_features(copy.deepcopy(encoder), images, always_partition=False)
  assert np.abs(want_adapted["res5"] - want_padded["res5"]).max() > 1e-2

  kwargs = dict(embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 4, 8), window_size=3)
  adapted = swin.Swin(**kwargs, adapt_window_to_input=True)
  variables = _convert(adapted, state_dict, images)
  _assert_close(_run(adapted, variables, images), want_adapted, shapes)
  _assert_close(_run(swin.Swin(**kwargs), variables, images), want_padded, shapes)
