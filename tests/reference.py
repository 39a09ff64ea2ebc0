"""Helpers for tests that compare with the PyTorch reference (transformers' Mask2Former).

Import `torch` only through `require_reference()`, so that the module skips with a clear
reason when the `reference` extra (torch==2.13.0, transformers) is not installed.
"""

import numpy as np
import pytest


def require_reference():
  """Imports torch and transformers or skips the calling test module."""
  torch = pytest.importorskip(
      "torch", reason="the PyTorch reference is not installed: pip install -e '.[test,reference]'")
  pytest.importorskip(
      "transformers", reason="transformers is not installed: pip install -e '.[test,reference]'")
  torch.set_grad_enabled(False)
  return torch


def perturb_(module, seed: int = 0, scale: float = 0.1):
  """Adds noise to every parameter and floating buffer of a torch module, in place.

  Freshly initialized models have zero biases, unit norm scales and zero running means,
  which would hide a transposed or swapped mapping. Running variances stay positive.
  """
  torch = require_reference()
  gen = torch.Generator().manual_seed(seed)
  for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
    if not tensor.is_floating_point():
      continue
    noise = torch.randn(tensor.shape, generator=gen) * scale
    if name.endswith("running_var"):
      tensor.copy_(tensor.abs() + 0.5 + noise.abs())
    else:
      tensor.add_(noise)
  return module


def to_numpy(t) -> np.ndarray:
  return t.detach().cpu().numpy()


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 3, 1, 2))
