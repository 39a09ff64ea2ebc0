"""Sine positional embedding against the official formula and transformers' module."""

import math

import numpy as np

from m2f_jax.models.position_encoding import sine_position_embedding
from tests import reference


def _direct(height, width, f, temperature=10000.0, scale=2 * math.pi):
  """The official definition written out channel by channel."""
  out = np.zeros((height, width, 2 * f))
  for i in range(height):
    for j in range(width):
      for half, pos, n in ((0, i + 1, height), (1, j + 1, width)):
        p = pos / (n + 1e-6) * scale
        for c in range(f):
          angle = p / temperature ** (2 * (c // 2) / f)
          out[i, j, half * f + c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
  return out


def test_matches_direct_formula():
  got = np.asarray(sine_position_embedding(3, 5, 6))
  np.testing.assert_allclose(got, _direct(3, 5, 6), atol=1e-5)


def test_matches_transformers():
  torch = reference.require_reference()
  from transformers.models.mask2former.modeling_mask2former import Mask2FormerSinePositionEmbedding
  ref = Mask2FormerSinePositionEmbedding(num_position_features=16, normalize=True)
  want = reference.nchw_to_nhwc(reference.to_numpy(ref((2, 32, 7, 9), "cpu", torch.float32)))
  got = np.asarray(sine_position_embedding(7, 9, 16))
  np.testing.assert_allclose(got[None].repeat(2, 0), want, atol=1e-5)
