"""2-d convolution (NHWC, HWIO kernels) for every convolution of the model.

`Conv` is a drop-in for the `flax.linen.Conv` uses of this package (same variable names and
shapes: `kernel` [kh, kw, C_in, C_out], `bias` [C_out]; symmetric zero padding as torch's
`Conv2d(padding=p)`), so checkpoints and the weight-import tables are unaffected.

On GPU and TPU (every platform but the CPU) `conv2d` is XLA's own convolution,
`lax.conv_general_dilated`, with its own gradients: nothing here was measured faster there.
On CPU the convolution is expressed by shape, as measured on XLA:CPU (2 cores):

  * 1x1 kernels (most of a ResNet, every projection): a strided slice and one matmul over
    channels ([2, 128, 128, 256] -> 256: forward 2x and forward + backward 2.7x faster than
    `lax.conv_general_dilated`, whose backward transposes the activations to a channels-first
    layout), with the kernel gradient oriented by hand (below).
  * non-overlapping patches (kernel = stride, no padding: Swin's patch embedding): a reshape
    into patches and one matmul.
  * other kernels: `lax.conv_general_dilated` forward and input gradient; the kernel gradient
    is one matmul per kernel tap (the output gradient against the input slice under that tap)
    instead of XLA:CPU's filter-gradient convolution ([2, 128, 128, 256] 3x3 -> 256: forward +
    backward 0.93 s -> 0.54 s).

The choice is made when the computation is lowered (`jax.lax.platform_dependent`), not from
the default backend, so a step lowered for a GPU on a CPU host (or exported for both) gets
XLA's convolution there; lowered for one platform, only that platform's branch is compiled
(the compiled CPU step is the same as without the switch). Every path computes the same
function as `lax.conv_general_dilated` up to float rounding (tests/test_conv.py).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=_DIMENSIONS)


def _tap_inputs(x: jax.Array, kernel_shape, stride: int, padding: int, out_hw):
  """The input slice under each kernel tap (row-major over (kh, kw)): [B, Ho, Wo, C] each."""
  kh, kw = kernel_shape[:2]
  out_h, out_w = out_hw
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return [xp[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _spatial_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  return _xla_conv(x, kernel, stride, padding)


def _spatial_conv_fwd(x, kernel, stride, padding):
  return _xla_conv(x, kernel, stride, padding), (x, kernel)


def _f32(x: jax.Array) -> jax.Array:
  """Kernel gradients on CPU are float32 matmuls: XLA:CPU has no bfloat16 x bfloat16 ->
  float32 dot for some layouts ("Unsupported element type for DotThunk::Execute", jax 0.10.2:
  the bfloat16 train step failed on the 1x1 kernel gradient with C_in > C_out)."""
  return x.astype(jnp.float32)


def _spatial_conv_bwd(stride, padding, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, stride, padding), x)
  (dx,) = input_vjp(grad)

  # The kernel gradient: one matmul per tap, [B, Ho, Wo, C_in] x [B, Ho, Wo, C_out] each.
  taps = _tap_inputs(x, kernel.shape, stride, padding, grad.shape[1:3])
  # [C_out, C_in] per tap: XLA:CPU then transposes the output gradient once for all taps
  # instead of each input slice.
  dk = jnp.stack([jnp.einsum("BHWD,BHWC->DC", _f32(grad), _f32(tap)) for tap in taps])
  # [kh * kw, C_out, C_in]
  return dx, dk.transpose(0, 2, 1).reshape(kernel.shape).astype(kernel.dtype)


_spatial_conv.defvjp(_spatial_conv_fwd, _spatial_conv_bwd)


# A 1x1 convolution is a matmul over channels; its kernel gradient contracts over every
# pixel, and XLA:CPU transposes one operand for it. The hand-written gradient picks the
# orientation whose output has the fewer rows (e.g. [64, 256] rather than [256, 64]), which
# measured 7% faster on the whole R50 train step on CPU; the values are the same.
@jax.custom_vjp
def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jnp.einsum("BHWC,CD->BHWD", x, kernel[0, 0])


def _pointwise_fwd(x, kernel):
  return _pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, grad):
  x, kernel = residuals
  c_in, c_out = kernel.shape[2:]
  dx = jnp.einsum("BHWD,CD->BHWC", grad, kernel[0, 0])
  if c_in <= c_out:
    dk = jnp.einsum("BHWC,BHWD->CD", _f32(x), _f32(grad))
  else:
    dk = jnp.einsum("BHWD,BHWC->DC", _f32(grad), _f32(x)).T
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _cpu_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """The CPU expression of `conv2d`, chosen by shape (see the module docstring)."""
  kh, kw, _, _ = kernel.shape
  batch, height, width, channels = x.shape
  if kh == kw == 1 and padding == 0:
    return _pointwise(x[:, ::stride, ::stride], kernel)
  if kh == kw == stride and padding == 0 and height % kh == 0 and width % kw == 0:
    patches = x.reshape(batch, height // kh, kh, width // kw, kw, channels)
    return jnp.einsum("BHiWjC,ijCD->BHWD", patches, kernel)
  return _spatial_conv(x, kernel, stride, padding)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0) -> jax.Array:
  """`torch.nn.functional.conv2d(x, kernel, stride=stride, padding=padding)` in NHWC / HWIO.

  XLA's `lax.conv_general_dilated` on GPU / TPU; `_cpu_conv2d` on CPU (same values).

  Args:
    x: [B, H, W, C_in].
    kernel: [kh, kw, C_in, C_out], same dtype as `x`.
    stride: the same along both axes.
    padding: zeros added on every side.

  Returns:
    [B, Ho, Wo, C_out] with Ho = (H + 2 * padding - kh) // stride + 1 (likewise Wo).
  """
  c_in = kernel.shape[2]
  if x.shape[-1] != c_in:
    raise ValueError(f"conv2d: input {x.shape} has {x.shape[-1]} channels, kernel "
                     f"{kernel.shape} expects {c_in} ([kh, kw, C_in, C_out]).")
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, k: _cpu_conv2d(x, k, stride, padding),
      default=lambda x, k: _xla_conv(x, k, stride, padding))


class Conv(nn.Module):
  """A square convolution with symmetric zero padding (torch `nn.Conv2d`), NHWC.

  Attributes:
    features: C_out.
    kernel_size: k (the kernel is k x k).
    stride: the same along both axes.
    padding: zeros on every side (torch's `padding`); 0 is "VALID".
    use_bias: add a learned bias.
    dtype: computation dtype (parameters stay float32).
    kernel_init, bias_init: initializers of `kernel` [k, k, C_in, C_out] and `bias` [C_out].
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = conv2d(x, kernel, stride=self.stride, padding=self.padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y
