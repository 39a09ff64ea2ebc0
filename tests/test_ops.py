"""m2f_jax.ops: bilinear point sampling and the top-k selection.

bilinear_sample against a direct per-point loop (no torch needed) and torch's `grid_sample`
(values and gradients); top_k_indices against `jax.lax.top_k` with ties, NaN and infinities,
both of its branches (CPU bisection, XLA's TopK elsewhere) and which one each platform lowers.
"""

import math

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax import ops
from m2f_jax.ops import bilinear_sample
from m2f_jax.ops import top_k_indices
from tests import reference

_top_k_xla = ops._top_k_indices_xla  # pylint: disable=protected-access
_top_k_bisection = ops._top_k_indices_bisection  # pylint: disable=protected-access


def _points(rng, batch, num_points):
  """Random points in and around [0, 1]^2 plus the borders and pixel-grid lines exactly."""
  pts = rng.uniform(-0.3, 1.3, size=(batch, num_points, 2)).astype(np.float32)
  special = np.array([[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 0.5], [0.1, 0.0], [1.0, 0.3],
                      [-0.05, 0.5], [0.5, 1.05], [0.3, 0.7]], np.float32)
  pts[:, :len(special)] = special
  return pts


def _direct_bilinear(values, points):
  """grid_sample(align_corners=False, padding zeros) written out point by point."""
  batch, height, width, channels = values.shape
  out = np.zeros((batch, points.shape[1], channels), np.float64)
  for b in range(batch):
    for i, (px, py) in enumerate(points[b].astype(np.float64)):
      x, y = px * width - 0.5, py * height - 0.5
      x0, y0 = math.floor(x), math.floor(y)
      for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
          if 0 <= xx < width and 0 <= yy < height:
            weight = (1 - abs(x - xx)) * (1 - abs(y - yy))
            out[b, i] += weight * values[b, yy, xx]
  return out


# ----------------------------------------------------------------------------- bilinear_sample


def test_bilinear_sample_matches_direct_loop():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
  points = _points(rng, 2, 40)
  got = np.asarray(bilinear_sample(jnp.asarray(values), jnp.asarray(points)))
  np.testing.assert_allclose(got, _direct_bilinear(values, points), atol=1e-5)


def test_bilinear_sample_leading_dims_and_dtype():
  rng = np.random.default_rng(1)
  values = rng.normal(size=(2, 3, 4, 5, 2)).astype(np.float32)
  points = rng.uniform(0, 1, size=(2, 3, 7, 2)).astype(np.float32)
  got = bilinear_sample(jnp.asarray(values), jnp.asarray(points))
  assert got.shape == (2, 3, 7, 2)
  flat = bilinear_sample(jnp.asarray(values.reshape(6, 4, 5, 2)),
                         jnp.asarray(points.reshape(6, 7, 2)))
  np.testing.assert_allclose(np.asarray(got).reshape(6, 7, 2), np.asarray(flat), atol=1e-6)
  low = bilinear_sample(jnp.asarray(values, jnp.bfloat16), jnp.asarray(points))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), np.asarray(got), atol=5e-2)
  with pytest.raises(ValueError, match="leading dimensions"):
    bilinear_sample(jnp.asarray(values), jnp.asarray(points[:1]))


def test_bilinear_sample_matches_grid_sample_values_and_gradients():
  torch = reference.require_reference()
  rng = np.random.default_rng(2)
  values = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
  points = _points(rng, 2, 60)
  cotangent = rng.normal(size=(2, 60, 3)).astype(np.float32)

  def loss(v, p):
    return jnp.sum(bilinear_sample(v, p) * cotangent)

  got = np.asarray(bilinear_sample(jnp.asarray(values), jnp.asarray(points)))
  grad_v, grad_p = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(values), jnp.asarray(points))

  with torch.enable_grad():
    tv = torch.tensor(reference.nhwc_to_nchw(values), requires_grad=True)
    tp = torch.tensor(points, requires_grad=True)
    out = torch.nn.functional.grid_sample(tv, 2 * tp[:, :, None] - 1, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    want = out[..., 0].permute(0, 2, 1)  # [B, P, C]
    (want * torch.tensor(cotangent)).sum().backward()
  np.testing.assert_allclose(got, reference.to_numpy(want), atol=1e-5)
  want_grad_v = reference.nchw_to_nhwc(reference.to_numpy(tv.grad))
  np.testing.assert_allclose(np.asarray(grad_v), want_grad_v, atol=1e-5)
  # Also on the pixel-grid lines and borders: both sides take the corner at floor(x).
  np.testing.assert_allclose(np.asarray(grad_p), reference.to_numpy(tp.grad), atol=1e-4)
  assert np.all(np.isfinite(np.asarray(grad_p)))


# ------------------------------------------------------------------------------- top_k_indices


@pytest.mark.parametrize("shape,k", [((200, 37632), 9408), ((3, 4, 50), 7), ((5,), 5),
                                     ((2, 9), 0), ((4, 30), 1)])
def test_top_k_indices_is_the_set_of_top_k(shape, k):
  rng = np.random.default_rng(k)
  x = rng.standard_normal(shape).astype(np.float32)
  x[..., ::3] = np.round(x[..., ::3])  # many ties
  got = np.asarray(jax.jit(lambda x: top_k_indices(x, k))(x))
  assert got.shape == shape[:-1] + (k,) and got.dtype == np.int32
  assert np.all(np.diff(got, axis=-1) > 0)  # distinct, increasing
  want = np.asarray(jax.lax.top_k(x, k)[1])
  np.testing.assert_array_equal(np.sort(np.take_along_axis(x, got, -1), -1),
                                np.sort(np.take_along_axis(x, want, -1), -1))


def test_top_k_indices_orders_nan_and_infinities_like_top_k():
  x = jnp.asarray([[np.nan, 1.0, -np.inf, np.inf, -0.0, 0.0, -2.0]], jnp.float32)
  for k in range(8):
    np.testing.assert_array_equal(top_k_indices(x, k), np.sort(jax.lax.top_k(x, k)[1], -1))
  with pytest.raises(ValueError, match="k=8"):
    top_k_indices(x, 8)


def test_top_k_indices_branches_agree():
  """The CPU bisection and XLA's TopK (GPU / TPU) give the same indices, ties and NaN too."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 4, 50)).astype(np.float32)
  x[..., ::3] = np.round(x[..., ::3])  # many ties
  x[0, 0, :4] = [np.nan, np.inf, -np.inf, -0.0]
  for k in (0, 1, 7, 50):
    xla = jax.jit(lambda x: _top_k_xla(x, k))(x)
    bisection = jax.jit(lambda x: _top_k_bisection(x, k))(x)
    np.testing.assert_array_equal(bisection, xla, err_msg=f"k={k}")
    assert xla.dtype == bisection.dtype == np.int32


_SWITCH_OPS = {"stablehlo.case", "stablehlo.return", "stablehlo.constant"}


def _stablehlo_ops(fn, *args, platform):
  """The StableHLO / CHLO op names of `fn` lowered for `platform` (no device needed)."""
  text = jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()
  # Without the platform switch's own ops (a `case` on a constant index, its `return`s).
  return set(re.findall(r"\b((?:stablehlo|chlo)\.\w+)", text)) - _SWITCH_OPS


def test_top_k_indices_is_xla_top_k_on_gpu_and_tpu():
  x = jax.ShapeDtypeStruct((4, 30), jnp.float32)
  for platform in ("cuda", "rocm", "tpu"):
    got = _stablehlo_ops(lambda x: top_k_indices(x, 5), x, platform=platform)
    assert "chlo.top_k" in got and "stablehlo.while" not in got, (platform, got)
    assert got == _stablehlo_ops(lambda x: _top_k_xla(x, 5), x, platform=platform)
  cpu = _stablehlo_ops(lambda x: top_k_indices(x, 5), x, platform="cpu")
  assert "stablehlo.while" in cpu and "chlo.top_k" not in cpu, cpu  # the bisection
