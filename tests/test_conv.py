"""m2f_jax.models.conv: every path against lax.conv_general_dilated, values and gradients;
which path each platform lowers (XLA's own convolution everywhere but the CPU)."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.models import conv
from m2f_jax.models.conv import Conv
from m2f_jax.models.conv import conv2d

_cpu_conv2d = conv._cpu_conv2d  # pylint: disable=protected-access


def _reference(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (kernel, stride, padding, height, width): 1x1 (matmul), 1x1 strided (ResNet shortcut),
# patches (Swin), 3x3 / 7x7 with padding and strides (custom kernel gradient), odd sizes.
CASES = [(1, 1, 0, 6, 5), (1, 2, 0, 7, 6), (4, 4, 0, 8, 12), (3, 1, 1, 6, 7), (3, 2, 1, 7, 6),
         (7, 2, 3, 9, 10), (3, 1, 0, 6, 6), (2, 2, 0, 5, 6)]


@pytest.mark.parametrize("k,stride,padding,height,width", CASES)
def test_conv2d_matches_xla_convolution_and_its_gradients(k, stride, padding, height, width):
  rng = np.random.default_rng(k * 100 + stride * 10 + padding)
  x = jnp.asarray(rng.standard_normal((2, height, width, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, 3, 4)), jnp.float32)
  out = conv2d(x, kernel, stride=stride, padding=padding)
  expected = _reference(x, kernel, stride, padding)
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

  cotangent = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
  grads = jax.grad(lambda x, w: jnp.sum(conv2d(x, w, stride=stride, padding=padding)
                                        * cotangent), argnums=(0, 1))(x, kernel)
  expected_grads = jax.grad(lambda x, w: jnp.sum(_reference(x, w, stride, padding) * cotangent),
                            argnums=(0, 1))(x, kernel)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,stride,padding,height,width", CASES)
def test_cpu_path_matches_xla_convolution_and_its_gradients(k, stride, padding, height, width):
  """The CPU branch called directly (whatever the test machine) against XLA's convolution."""
  rng = np.random.default_rng(k * 100 + stride * 10 + padding + 1)
  x = jnp.asarray(rng.standard_normal((2, height, width, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, 3, 4)), jnp.float32)
  expected = _reference(x, kernel, stride, padding)
  cotangent = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
  for fn in (_cpu_conv2d, conv._xla_conv):  # pylint: disable=protected-access
    out, vjp = jax.vjp(functools.partial(fn, stride=stride, padding=padding), x, kernel)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    _, expected_vjp = jax.vjp(lambda x, w: _reference(x, w, stride, padding), x, kernel)
    for got, want in zip(vjp(cotangent), expected_vjp(cotangent)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


_SWITCH_OPS = {"stablehlo.case", "stablehlo.return", "stablehlo.constant"}


def _stablehlo_ops(fn, *args, platform):
  """The StableHLO op names of `fn` lowered for `platform` (no device of that kind needed)."""
  text = jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()
  # Without the platform switch's own ops (a `case` on a constant index, its `return`s).
  return set(re.findall(r"\bstablehlo\.\w+", text)) - _SWITCH_OPS


@pytest.mark.parametrize("k,stride,padding", [(1, 1, 0), (1, 2, 0), (4, 4, 0), (3, 2, 1)])
def test_gpu_and_tpu_lower_xla_convolution_and_its_gradients(k, stride, padding):
  """Off the CPU, forward and gradients are exactly what lax.conv_general_dilated lowers to."""
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  kernel = jax.ShapeDtypeStruct((k, k, 3, 4), jnp.float32)

  def loss(conv_fn):
    return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv_fn(x, w))), argnums=(0, 1))

  ours = loss(lambda x, w: conv2d(x, w, stride=stride, padding=padding))
  plain = loss(lambda x, w: _reference(x, w, stride, padding))
  for platform in ("cuda", "rocm", "tpu"):
    got = _stablehlo_ops(ours, x, kernel, platform=platform)
    assert "stablehlo.convolution" in got and "stablehlo.dot_general" not in got, (platform, got)
    assert got == _stablehlo_ops(plain, x, kernel, platform=platform), platform
  cpu = _stablehlo_ops(ours, x, kernel, platform="cpu")
  if k == 1 or k == stride:  # the CPU expresses these as matmuls
    assert "stablehlo.dot_general" in cpu and "stablehlo.convolution" not in cpu, cpu


def test_conv2d_jits_and_rejects_channel_mismatch():
  x = jnp.ones((1, 5, 5, 3))
  out = jax.jit(lambda x, w: conv2d(x, w, padding=1))(x, jnp.ones((3, 3, 3, 2)))
  np.testing.assert_allclose(out[0, 2, 2], [27.0, 27.0])
  with pytest.raises(ValueError, match="channels"):
    conv2d(x, jnp.ones((1, 1, 4, 2)))


def test_conv_module_has_flax_conv_variables():
  x = jnp.ones((1, 8, 8, 3))
  ours = Conv(5, 3, stride=2, padding=1).init(jax.random.PRNGKey(0), x)["params"]
  flax_conv = jax.eval_shape(nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))).init,
                             jax.random.PRNGKey(0), x)["params"]
  assert jax.tree.map(jnp.shape, ours) == jax.tree.map(lambda a: a.shape, flax_conv)
  no_bias = Conv(5, 1, use_bias=False).init(jax.random.PRNGKey(0), x)["params"]
  assert set(no_bias) == {"kernel"}
  y = Conv(5, 3, stride=2, padding=1, dtype=jnp.bfloat16).apply({"params": ours}, x)
  assert y.shape == (1, 4, 4, 5) and y.dtype == jnp.bfloat16
