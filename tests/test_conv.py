"""m2f_jax.models.conv: every path against lax.conv_general_dilated, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.models.conv import Conv
from m2f_jax.models.conv import conv2d


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
