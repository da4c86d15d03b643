"""Layers the model families share: PyTorch's BatchNorm over the global batch, pooling, inits.

`BatchNorm` is PyTorch's `BatchNorm2d` (biased batch variance, unbiased
running variance, PyTorch's momentum rule) with the batch statistics taken
over every example of the global batch when a step runs on several devices.
`max_pool` (TF 'SAME' 3x3/2, the tutorial's) and `max_pool_2x2` are
formulated for XLA's CPU backend, whose reduce-window gradient is slow; both
have the same values and gradients as `nn.max_pool` (tests hold them to it).
The initialisers are PyTorch's defaults and the few special ones the
families use.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.models.convolutions import Conv


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int, int]:
  """(output size, padding before, padding after) of TF's 'SAME' padding."""
  out = -(-size // stride)
  total = max((out - 1) * stride + window - size, 0)
  return out, total // 2, total - total // 2


def _pool_geometry(shape, window: int, stride: int):
  """Output sizes and the padding that makes the padded input stride * (out + extra)."""
  (out_h, before_h, _), (out_w, before_w, _) = (
      _same_padding(shape[1], window, stride), _same_padding(shape[2], window, stride))
  # Padded to a whole number of strides so that it reshapes into
  # (blocks, stride) per axis; window offset k lies in block k // stride,
  # phase k % stride.
  blocks_h = out_h + (window - 1) // stride
  blocks_w = out_w + (window - 1) // stride
  pads = ((0, 0), (before_h, stride * blocks_h - shape[1] - before_h),
          (before_w, stride * blocks_w - shape[2] - before_w), (0, 0))
  return out_h, out_w, blocks_h, blocks_w, pads


def _pool_windows(x: jax.Array, window: int, stride: int) -> list[jax.Array]:
  """The window * window strided views of the -inf-padded input, row-major offsets."""
  out_h, out_w, blocks_h, blocks_w, pads = _pool_geometry(x.shape, window, stride)
  padded = jnp.pad(x, pads, constant_values=-jnp.inf)
  phases = padded.reshape(x.shape[0], blocks_h, stride, blocks_w, stride, x.shape[3])
  views = []
  for i in range(window):
    for j in range(window):
      a, b = i // stride, j // stride
      views.append(phases[:, a:a + out_h, i % stride, b:b + out_w, j % stride, :])
  return views


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """`nn.max_pool(x, (window, window), (stride, stride), 'SAME')` on NHWC inputs.

  Same values, and the same gradient: each output's gradient goes to the
  first maximum of its window in row-major order, as XLA's select-and-scatter
  (and TF's MaxPoolGrad) do, also when several elements tie (common after a
  ReLU). Written as strided views and a one-hot scatter, which XLA's CPU
  backend runs far faster than reduce-window's gradient.
  """
  return functools.reduce(jnp.maximum, _pool_windows(x, window, stride))


def _max_pool_forward(x, window, stride):
  views = _pool_windows(x, window, stride)
  pooled = functools.reduce(jnp.maximum, views)
  # Index of the first view that holds the maximum (the last one if none
  # before it does).
  first = jnp.full(pooled.shape, len(views) - 1, jnp.int8)
  for k in reversed(range(len(views) - 1)):
    first = jnp.where(views[k] == pooled, jnp.int8(k), first)
  return pooled, (first, x.shape)


def _max_pool_backward(window, stride, residuals, grad):
  first, shape = residuals
  out_h, out_w, blocks_h, blocks_w, pads = _pool_geometry(shape, window, stride)
  phases = [[jnp.zeros((shape[0], blocks_h, blocks_w, shape[3]), grad.dtype)
             for _ in range(stride)] for _ in range(stride)]
  for k in range(window * window):
    i, j = divmod(k, window)
    a, b = i // stride, j // stride
    routed = jnp.where(first == k, grad, jnp.zeros((), grad.dtype))
    phases[i % stride][j % stride] += jnp.pad(
        routed, ((0, 0), (a, blocks_h - out_h - a), (b, blocks_w - out_w - b), (0, 0)))
  padded = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2).reshape(
      shape[0], stride * blocks_h, stride * blocks_w, shape[3])
  return (padded[:, pads[1][0]:pads[1][0] + shape[1], pads[2][0]:pads[2][0] + shape[2], :],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def reference_max_pool(x: jax.Array) -> jax.Array:
  """`nn.max_pool` 3x3/2 'SAME': the plain formulation `max_pool` is held to."""
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')


# config.model.formulation of every family: the same function and gradients. 'fast' (the
# default) takes the layers written for XLA's CPU backend (`max_pool`, the rsqrt LRN,
# `batch_norm_train`'s analytic backward, `convolutions.Conv`'s measured passes); 'reference'
# the plain ones (`nn.max_pool`, pow,
# BatchNorm differentiated by JAX): for the BatchNorm networks, what they trained with
# before the fast formulation existed, bit for bit (docs/performance.md).
FORMULATIONS = ('fast', 'reference')


def _batch_statistics(x: jax.Array, axis_name: str | None,
                      axis_by_axis: bool = False) -> tuple[jax.Array, jax.Array]:
  """Mean and biased variance over every axis but the last, across `axis_name` too.

  Two passes (the mean, then the mean squared deviation from it), averaged
  over the devices in that order: what PyTorch computes, without the
  cancellation of the one-pass E[x^2] - E[x]^2. `axis_by_axis` sums with
  `_channel_sum` (the fast formulation); the reference keeps its bits.
  """
  count = x.size // x.shape[-1]
  channel_mean = ((lambda v: _channel_sum(v) / count) if axis_by_axis
                  else (lambda v: jnp.mean(v, tuple(range(v.ndim - 1)))))
  mean = channel_mean(x)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = channel_mean(jnp.square(x - mean))
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


def _channel_sum(x: jax.Array) -> jax.Array:
  """The sum over every axis but the last, one axis at a time: width, height, then the batch.

  Why not in one reduction: compiled with the trainer's CPU option, XLA sums a
  whole [N, H, W, C] batch per channel an order of magnitude less accurately
  than without it (3.6e-6 of the largest channel sum at [16, 32, 32, 64],
  against 2.5e-7), enough to move activations near zero across the ReLU's
  kink. Summed one axis at a time (W, then H, then N terms) the rounding
  stays at 1.2e-7-2.8e-7 with or without the option, at no cost in speed
  (docs/performance.md, "Accuracy of the float32 step").
  """
  for axis in reversed(range(1, x.ndim - 1)):
    # The barrier keeps XLA's simplifier from folding the sums back into one.
    x = jax.lax.optimization_barrier(jnp.sum(x, axis))
  return jnp.sum(x, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: str | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(scale * (x - mean) / sqrt(var + epsilon) + bias, mean, var) with the batch's statistics.

  The training-mode BatchNorm of the fast formulation. Its backward is the
  analytic one: two per-channel sums, sum(dy) and sum(dy * x_hat) (the bias's
  and the scale's gradients, summed over the devices for the input's), then
  one elementwise pass, dx = scale / std * (dy - mean(dy) - x_hat * mean(dy * x_hat)).
  JAX's own derivative of the two-pass statistics runs the chain rule through
  each of them, several more passes over the activations, which dominate a
  wide network's BatchNorm time on a CPU.
  """
  return _batch_norm_forward(x, scale, bias, epsilon, axis_name)[0]


def _batch_norm_forward(x, scale, bias, epsilon, axis_name):
  x, scale, bias = (getattr(v, 'value', v) for v in (x, scale, bias))  # CustomVJPPrimal
  mean, var = _batch_statistics(x, axis_name, axis_by_axis=True)
  inverse_std = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inverse_std * scale) + bias
  return (y, mean, var), (x, mean, inverse_std, scale)


def _batch_norm_backward(epsilon, axis_name, residuals, cotangents):
  del epsilon
  x, mean, inverse_std, scale = residuals
  dy, dmean, dvar = cotangents
  count = x.size // x.shape[-1]
  x_hat = (x - mean) * inverse_std
  dbias = _channel_sum(dy)  # this device's share, as JAX's derivative gives it
  dscale = _channel_sum(dy * x_hat)
  total_dbias, total_dscale = dbias, dscale
  if axis_name is not None:  # the statistics are the global batch's: so is their derivative
    total_dbias, total_dscale = jax.lax.psum((dbias, dscale), axis_name)
    count = count * jax.lax.psum(1, axis_name)
  dx = (scale * inverse_std) * (dy - total_dbias / count - x_hat * (total_dscale / count))
  # The statistics are outputs too (for the running averages); their cotangents are zero in
  # training, but a caller may differentiate them.
  if not isinstance(dmean, jax.custom_derivatives.SymbolicZero):
    dx = dx + dmean / count
  if not isinstance(dvar, jax.custom_derivatives.SymbolicZero):
    dx = dx + (2 / count) * (x - mean) * dvar
  return dx, dscale, dbias


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward, symbolic_zeros=True)


class BatchNorm(nn.Module):
  """PyTorch's `BatchNorm2d` over the global batch (airbench's defaults: frozen scale, 0.6, 1e-12).

  In training, the mean and (biased) variance normalise over every example of
  the global batch: with several devices they are averaged over `axis_name`
  (mean first, then the mean squared deviation from it), so the result does
  not depend on how the batch is split. The running statistics follow
  PyTorch: running = momentum * running + (1 - momentum) * batch, with the
  unbiased variance n / (n - 1). `momentum` is the weight of the old value
  (flax's convention; PyTorch's `momentum` is 1 - this: the ResNets' 0.9 is
  PyTorch's default 0.1). Without `use_scale` the scale is the constant 1
  (airbench freezes it there); with it, a `scale` parameter starting at 1, as
  PyTorch's `weight`. `formulation` (FORMULATIONS): 'fast' trains through
  `batch_norm_train`'s analytic backward, 'reference' lets JAX differentiate
  the plain statistics; the same function and gradient.
  """

  momentum: float = 0.6
  epsilon: float = 1e-12
  use_scale: bool = False
  axis_name: str | None = None
  formulation: str = 'fast'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    scale = (self.param('scale', nn.initializers.ones, (features,), jnp.float32)
             if self.use_scale else None)
    x32 = x.astype(at_least_float32(x.dtype))  # float64 where the faithfulness check asks
    axis_name = None if self.is_initializing() else self.axis_name
    if train and self.formulation == 'fast':
      y, mean, var = batch_norm_train(
          x32, jnp.ones((features,), x32.dtype) if scale is None else scale.astype(x32.dtype),
          bias.astype(x32.dtype), self.epsilon, axis_name)
    else:
      mean, var = (_batch_statistics(x32, axis_name) if train
                   else (running_mean.value, running_var.value))
      y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
      if scale is not None:
        y = y * scale
      y = y + bias
    if train and not self.is_initializing():
      count = x.size // features * (1 if axis_name is None else jax.lax.psum(1, axis_name))
      m = self.momentum
      running_mean.value = m * running_mean.value + (1 - m) * mean
      running_var.value = m * running_var.value + (1 - m) * var * (count / (count - 1))
    return y.astype(x.dtype)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.MaxPool2d(2)` (floor mode) on NHWC, as a reshape and max.

  Same values as reduce-window; its gradient is a cheap comparison instead of
  XLA's select-and-scatter (ties, which have measure zero after a
  convolution, share the gradient).
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def pytorch_default_uniform() -> nn.initializers.Initializer:
  """PyTorch's default Conv2d/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def pytorch_default_bias(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)  # the bias's shape does not hold fan_in: given
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def dirac_init(base: nn.initializers.Initializer) -> nn.initializers.Initializer:
  """`base`, then `torch.nn.init.dirac_` on the first in_channels outputs (HWIO kernels).

  Output channel i < in_channels becomes the identity on input channel i
  (1 at the kernel's centre); the other outputs keep `base`'s values.
  """
  def init(key, shape, dtype=jnp.float32):
    kernel = base(key, shape, dtype)
    height, width, in_channels, out_channels = shape
    identity = min(in_channels, out_channels)
    dirac = jnp.zeros((height, width, in_channels, identity), dtype)
    dirac = dirac.at[height // 2, width // 2, jnp.arange(identity), jnp.arange(identity)].set(1)
    return kernel.at[..., :identity].set(dirac)
  return init


def unit_std_init(base: nn.initializers.Initializer) -> nn.initializers.Initializer:
  """`base`, divided by its sample standard deviation (airbench94_muon's head)."""
  def init(key, shape, dtype=jnp.float32):
    kernel = base(key, shape, dtype)
    return kernel / jnp.std(kernel, ddof=1)
  return init


def global_average_pool(x: jax.Array) -> jax.Array:
  """Mean over height and width, [N, H, W, C] -> [N, C], in float32 whatever x's dtype.

  kuangliu's `F.avg_pool2d(out, 4)` and WideResNet's `avg_pool2d(out, 8)` on
  32x32 images: the whole last feature map. As a global mean it takes any
  image size.
  """
  return jnp.mean(x.astype(at_least_float32(x.dtype)), axis=(1, 2)).astype(x.dtype)


def at_least_float32(dtype: Any) -> Any:
  """float32 for bfloat16 and float32; float64 stays (the float64 faithfulness checks)."""
  return jnp.promote_types(dtype, jnp.float32)


def kaiming_normal_fan_out() -> nn.initializers.Initializer:
  """N(0, 2 / (kh * kw * out_channels)): WideResNet's conv init (`normal_(0, sqrt(2 / n))`)."""
  # jax's 'normal' is untruncated, as PyTorch's normal_.
  return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def pytorch_conv(features: int, kernel_size: int, stride: int = 1, *, dtype: Any,
                 name: str, kernel_init: nn.initializers.Initializer | None = None,
                 formulation: str = 'reference') -> nn.Module:
  """`nn.Conv2d(.., kernel_size, stride, padding=kernel_size // 2, bias=False)` on NHWC.

  The padding is explicit: PyTorch pads kernel_size // 2 on both sides, where
  flax's 'SAME' pads a strided convolution on even sizes only after (the
  windows would start one pixel later, a different function). `formulation`
  (FORMULATIONS): 'fast' takes each pass's faster formulation where one was
  measured (`convolutions.Conv`), 'reference' flax's `nn.Conv`; both have the
  same parameter.
  """
  kernel_init = kernel_init or pytorch_default_uniform()
  if formulation == 'fast':
    return Conv(features, kernel_size, stride, kernel_init=kernel_init, dtype=dtype, name=name)
  pad = kernel_size // 2
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=kernel_init, dtype=dtype, name=name)

