"""The network of the TensorFlow CIFAR-10 tutorial (`cifar10.py`, `inference()`).

Layer for layer and initialiser for initialiser:

  conv1 5x5x64 + ReLU -> max-pool 3x3/2 -> LRN
  conv2 5x5x64 + ReLU -> LRN -> max-pool 3x3/2
  local3 dense 384 + ReLU -> local4 dense 192 + ReLU -> linear logits

On 24x24x3 inputs with the default widths it has 1,068,298 parameters.

Two formulations compute the same function and the same gradients:
`'reference'` uses `nn.max_pool` (XLA reduce-window, whose gradient XLA's CPU
backend runs as a slow select-and-scatter) and `jnp.power` in the LRN;
`'fast'` (the default) uses `layers.max_pool`, whose custom gradient routes to
the same element of each window, and computes the LRN's `** -0.75` with
rsqrt. On a CPU the fast pooling is an order of magnitude faster than the
reference's (docs/performance.md); tests hold the two formulations to each
other.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax.core import fields as spec
from cifar_jax.models.layers import FORMULATIONS, max_pool, reference_max_pool


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


class TutorialCNN(nn.Module):
  """The tutorial's network; widths are configurable for tiny test models."""

  # Range checks of config.model's fields (models.check_model_fields; the rest by type).
  FIELD_CHECKS: ClassVar[dict] = {
      'conv_features': spec.integer(1), 'local3_features': spec.integer(1),
      'local4_features': spec.integer(1), 'formulation': spec.choice(FORMULATIONS)}

  num_classes: int = 10
  conv_features: int = 64
  local3_features: int = 384
  local4_features: int = 192
  formulation: str = 'fast'  # see the module docstring
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    del train  # no layer behaves differently in training
    fast = self.formulation == 'fast'
    pool = max_pool if fast else reference_max_pool
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
