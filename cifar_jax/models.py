"""Models, looked up by name from `config.model.name`.

`TutorialCNN` is the network of the TensorFlow CIFAR-10 tutorial (`cifar10.py`,
`inference()`), layer for layer and initialiser for initialiser:

  conv1 5x5x64 + ReLU -> max-pool 3x3/2 -> LRN
  conv2 5x5x64 + ReLU -> LRN -> max-pool 3x3/2
  local3 dense 384 + ReLU -> local4 dense 192 + ReLU -> linear logits

On 24x24x3 inputs with the default widths it has 1,068,298 parameters.
"""

from __future__ import annotations

from collections.abc import Callable
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
  return x * jnp.power(bias + alpha * squared_sum, -beta)


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')


class TutorialCNN(nn.Module):
  """The tutorial's network; widths are configurable for tiny test models."""

  num_classes: int = 10
  conv_features: int = 64
  local3_features: int = 384
  local4_features: int = 192
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
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
    x = local_response_normalization(_max_pool(x))  # pool1 -> norm1
    x = nn.relu(conv('conv2', 0.1)(x))
    x = _max_pool(local_response_normalization(x))  # norm2 -> pool2
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
