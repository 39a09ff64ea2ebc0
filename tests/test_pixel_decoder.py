"""MSDeformAttn pixel decoder against transformers' `Mask2FormerPixelDecoder`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.convert.core import abstract_variables
from m2f_jax.convert.core import state_dict_to_variables
from m2f_jax.models.pixel_decoder import MSDeformAttnPixelDecoder
from m2f_jax.models.pixel_decoder import encoder_reference_points
from tests import reference

FEATURE_CHANNELS = (8, 16, 24, 40)  # res2..res5
IMAGE_SIZE = (64, 96)  # res2 16x24 ... res5 2x3


def _tiny_decoder(**kwargs):
  return MSDeformAttnPixelDecoder(feature_size=32, mask_feature_size=32, num_encoder_layers=2,
                                  encoder_feedforward_dim=64, num_heads=4, **kwargs)


def _features(seed, batch=2):
  rng = np.random.default_rng(seed)
  height, width = IMAGE_SIZE
  return {f"res{i + 2}": rng.normal(size=(batch, height >> (i + 2), width >> (i + 2), c)).astype(
      np.float32) for i, c in enumerate(FEATURE_CHANNELS)}


def test_reference_points_are_pixel_centres():
  points = np.asarray(encoder_reference_points(((2, 3), (1, 2))))
  assert points.shape == (8, 2, 2)
  np.testing.assert_allclose(points[:, 0], points[:, 1])
  want = [[1 / 6, 1 / 4], [1 / 2, 1 / 4], [5 / 6, 1 / 4], [1 / 6, 3 / 4], [1 / 2, 3 / 4],
          [5 / 6, 3 / 4], [1 / 4, 1 / 2], [3 / 4, 1 / 2]]
  np.testing.assert_allclose(points[:, 0], want, atol=1e-7)


def test_missing_feature_is_reported():
  features = _features(0)
  del features["res2"]
  with pytest.raises(ValueError, match="res2"):
    _tiny_decoder().init(jax.random.PRNGKey(0), jax.tree.map(jnp.asarray, features))


def test_matches_transformers():
  torch = reference.require_reference()
  from transformers import Mask2FormerConfig
  from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder
  config = Mask2FormerConfig(feature_size=32, mask_feature_size=32, encoder_layers=2,
                             encoder_feedforward_dim=64, num_attention_heads=4)
  ref = Mask2FormerPixelDecoder(config, feature_channels=list(FEATURE_CHANNELS)).eval()
  ref.level_embed.data.normal_(generator=torch.Generator().manual_seed(0))  # left uninitialized
  reference.perturb_(ref, seed=1, scale=0.3)

  features = _features(2)
  out = ref([torch.tensor(reference.nhwc_to_nchw(features[f"res{i}"])) for i in range(2, 6)])
  want_mask = reference.nchw_to_nhwc(reference.to_numpy(out.mask_features))
  want_scales = [reference.nchw_to_nhwc(reference.to_numpy(x)) for x in out.multi_scale_features]

  model = _tiny_decoder()
  inputs = jax.tree.map(jnp.asarray, features)
  variables = state_dict_to_variables(ref.state_dict(), abstract_variables(model, inputs),
                                      source="transformers Mask2FormerPixelDecoder")
  mask_features, scales = jax.jit(model.apply)(variables, inputs)

  assert mask_features.shape == (2, 16, 24, 32)
  assert [x.shape for x in scales] == [(2, 2, 3, 32), (2, 4, 6, 32), (2, 8, 12, 32)]
  np.testing.assert_allclose(np.asarray(mask_features), want_mask, atol=1e-4)
  for level, (got, want) in enumerate(zip(scales, want_scales)):
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, err_msg=f"level {level}")

  # Dropout is active only in training (and then needs its rng).
  train_model = _tiny_decoder(dropout=0.5)
  train_mask, _ = jax.jit(lambda v, x: train_model.apply(
      v, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}))(variables, inputs)
  assert np.all(np.isfinite(np.asarray(train_mask)))
  assert np.abs(np.asarray(train_mask) - want_mask).max() > 1e-2
