"""Models, looked up by name from `config.model.name`.

`TutorialCNN` is the network of the TensorFlow CIFAR-10 tutorial (`cifar10.py`,
`inference()`), layer for layer and initialiser for initialiser:

  conv1 5x5x64 + ReLU -> max-pool 3x3/2 -> LRN
  conv2 5x5x64 + ReLU -> LRN -> max-pool 3x3/2
  local3 dense 384 + ReLU -> local4 dense 192 + ReLU -> linear logits

On 24x24x3 inputs with the default widths it has 1,068,298 parameters.

Two formulations compute the same function and the same gradients:
`'reference'` uses `nn.max_pool` (XLA reduce-window, whose gradient XLA's CPU
backend runs as a slow select-and-scatter) and `jnp.power` in the LRN;
`'fast'` (the default) uses `max_pool`, whose custom gradient routes to the
same element of each window, and computes the LRN's `** -0.75` with rsqrt.
On a 2-core CPU the fast pooling is ~10x faster than the reference's for
pool1 (forward + backward); tests hold the two formulations to each other.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax.errors import UserError


def local_response_normalization(
    x: jax.Array,
    depth_radius: int = 4,
    bias: float = 1.0,
    alpha: float = 0.001 / 9.0,
    beta: float = 0.75,
    rsqrt_for_three_quarters: bool = True,
) -> jax.Array:
  """`tf.nn.lrn` on NHWC inputs.

  out = x / (bias + alpha * sum_{c' in [c - r, c + r]} x[..., c']^2) ** beta.
  Like TensorFlow (and unlike the AlexNet paper), alpha is not divided by the
  window size.
  """
  window = 2 * depth_radius + 1
  squared_sum = jax.lax.reduce_window(
      jnp.square(x),
      0.0,
      jax.lax.add,
      window_dimensions=(1, 1, 1, window),
      window_strides=(1, 1, 1, 1),
      padding=((0, 0), (0, 0), (0, 0), (depth_radius, depth_radius)),
  )
  scale = bias + alpha * squared_sum
  if beta == 0.75 and rsqrt_for_three_quarters:
    # The tutorial's beta: s ** -0.75 = rsqrt(s) * sqrt(rsqrt(s)), about 4x
    # cheaper than pow (exp and log) forward and backward on a CPU; equal to
    # pow within a few ulps.
    inverse_root = jax.lax.rsqrt(scale)
    return x * (inverse_root * jnp.sqrt(inverse_root))
  return x * jnp.power(scale, -beta)


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


def _reference_max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')


FORMULATIONS = ('fast', 'reference')


class TutorialCNN(nn.Module):
  """The tutorial's network; widths are configurable for tiny test models."""

  num_classes: int = 10
  conv_features: int = 64
  local3_features: int = 384
  local4_features: int = 192
  formulation: str = 'fast'  # see the module docstring
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if self.formulation not in FORMULATIONS:
      raise UserError(f'Unknown config.model.formulation {self.formulation!r}; choose one of '
                      f'{FORMULATIONS}.')
    fast = self.formulation == 'fast'
    pool = max_pool if fast else _reference_max_pool
    norm = functools.partial(local_response_normalization, rsqrt_for_three_quarters=fast)
    # TF's truncated_normal_initializer cuts at two standard deviations and,
    # like jax's truncated_normal, does not rescale the variance.
    init = nn.initializers.truncated_normal
    conv = lambda name, bias: nn.Conv(  # noqa: E731
        self.conv_features,
        kernel_size=(5, 5),
        strides=(1, 1),
        padding='SAME',
        kernel_init=init(5e-2),
        bias_init=nn.initializers.constant(bias),
        dtype=self.dtype,
        name=name,
    )
    x = images.astype(self.dtype)
    x = nn.relu(conv('conv1', 0.0)(x))
    x = norm(pool(x))  # pool1 -> norm1
    x = nn.relu(conv('conv2', 0.1)(x))
    x = pool(norm(x))  # norm2 -> pool2
    x = x.reshape((x.shape[0], -1))
    dense = lambda features, stddev, bias, name: nn.Dense(  # noqa: E731
        features,
        kernel_init=init(stddev),
        bias_init=nn.initializers.constant(bias),
        dtype=self.dtype,
        name=name,
    )
    x = nn.relu(dense(self.local3_features, 0.04, 0.1, 'local3')(x))
    x = nn.relu(dense(self.local4_features, 0.04, 0.1, 'local4')(x))
    logits = dense(self.num_classes, 1.0 / self.local4_features, 0.0, 'logits')(x)
    return logits.astype(jnp.float32)


MODELS: dict[str, Callable[..., nn.Module]] = {
    'tutorial_cnn': TutorialCNN,
}


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds `MODELS[model_config.name]` with the other fields as arguments."""
  options = dict(model_config)
  name = options.pop('name')
  if name not in MODELS:
    raise UserError(
        f'Unknown model {name!r} in config.model.name; choose one of {sorted(MODELS)}.'
    )
  try:
    return MODELS[name](num_classes=num_classes, **options)
  except TypeError as e:
    raise UserError(f'config.model does not fit model {name!r}: {e}.') from e


def count_parameters(params: Any) -> int:
  """Total number of scalars in a parameter tree."""
  return sum(x.size for x in jax.tree.leaves(params))
