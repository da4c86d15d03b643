"""Models, looked up by name from `config.model.name`.

`TutorialCNN` is the network of the TensorFlow CIFAR-10 tutorial (`cifar10.py`,
`inference()`), layer for layer and initialiser for initialiser:

  conv1 5x5x64 + ReLU -> max-pool 3x3/2 -> LRN
  conv2 5x5x64 + ReLU -> LRN -> max-pool 3x3/2
  local3 dense 384 + ReLU -> local4 dense 192 + ReLU -> linear logits

On 24x24x3 inputs with the default widths it has 1,068,298 parameters.

`Airbench94` is the network of airbench94 (Keller Jordan's
`cifar10-airbench`, `legacy/airbench94.py` and `airbench94_muon.py`): a frozen
2x2 patch-whitening convolution, three conv groups and a scaled linear head,
with BatchNorm whose statistics live in the `batch_stats` collection.

Two formulations compute the same function and the same gradients:
`'reference'` uses `nn.max_pool` (XLA reduce-window, whose gradient XLA's CPU
backend runs as a slow select-and-scatter) and `jnp.power` in the LRN;
`'fast'` (the default) uses `max_pool`, whose custom gradient routes to the
same element of each window, and computes the LRN's `** -0.75` with rsqrt.
On a CPU the fast pooling is an order of magnitude faster than the
reference's (docs/performance.md); tests hold the two formulations to each
other.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.errors import UserError
from cifar_jax.parallel import AXIS_NAME


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
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    del train  # no layer behaves differently in training
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


# ----------------------------------------------------------------------------
# airbench94.


class BatchNorm(nn.Module):
  """PyTorch's `BatchNorm2d` as airbench uses it, over the global batch.

  In training, the mean and (biased) variance normalise over every example of
  the global batch: with several devices they are averaged over `axis_name`
  (mean first, then the mean squared deviation from it), so the result does
  not depend on how the batch is split. The running statistics follow
  PyTorch: running = momentum * running + (1 - momentum) * batch, with the
  unbiased variance n / (n - 1). `momentum` is the weight of the old value
  (flax's convention; PyTorch's `momentum` is 1 - this). Without `use_scale`
  the scale is the constant 1 (airbench freezes it there).
  """

  momentum: float = 0.6
  epsilon: float = 1e-12
  use_scale: bool = False
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      count = x.size // features
      mean = jnp.mean(x32, axes)
      collective = self.axis_name is not None and not self.is_initializing()
      if collective:
        mean = jax.lax.pmean(mean, self.axis_name)
        count = count * jax.lax.psum(1, self.axis_name)
      var = jnp.mean(jnp.square(x32 - mean), axes)
      if collective:
        var = jax.lax.pmean(var, self.axis_name)
      if not self.is_initializing():
        m = self.momentum
        running_mean.value = m * running_mean.value + (1 - m) * mean
        running_var.value = m * running_var.value + (1 - m) * var * (count / (count - 1))
    else:
      mean, var = running_mean.value, running_var.value
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      y = y * self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    return (y + bias).astype(x.dtype)


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


def _pytorch_default_bias(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
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


def image_patches(images: np.ndarray, size: int) -> np.ndarray:
  """Every size x size patch (stride 1) of NHWC images, flattened (h, w, c): [P, size*size*C]."""
  n, h, w, c = images.shape
  views = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
  # views: [N, H-size+1, W-size+1, C, size, size] -> patches ordered (h, w, c).
  return views.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * c)


def whitening_kernel(images: np.ndarray, size: int = 2, eps: float = 5e-4) -> np.ndarray:
  """airbench's patch-whitening filters (HWIO, float32) from preprocessed NHWC images.

  The covariance of all size x size patches (uncentred, as the original) is
  eigen-decomposed; filter k < D is eigenvector k (eigenvalues descending)
  scaled by 1 / sqrt(eigenvalue + eps), filter D + k its negative. Computed in
  float64 on the host.
  """
  covariance, count = 0.0, 0
  for start in range(0, len(images), 256):  # bounded memory: patches are 4x the images
    patches = image_patches(np.asarray(images[start:start + 256], np.float64), size)
    covariance = covariance + patches.T @ patches
    count += len(patches)
  covariance = covariance / count
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
  scaled = eigenvectors / np.sqrt(eigenvalues + eps)  # columns: filters, rows: (h, w, c)
  filters = np.concatenate([scaled, -scaled], axis=1)
  channels = images.shape[-1]
  return filters.reshape(size, size, channels, 2 * size * size * channels).astype(np.float32)


WHITEN_BIAS_INITS = ('zeros', 'pytorch_default')
HEAD_INITS = ('pytorch_default', 'unit_std')


class Airbench94(nn.Module):
  """airbench94's network (NHWC; widths configurable for tiny test models).

    whiten: conv 2x2 'VALID', 2 * 3 * 2 * 2 = 24 filters (frozen, set by
      `data_init`), bias -> GELU
    3 x conv group: conv 3x3 -> max-pool 2 -> BatchNorm -> GELU
                    -> conv 3x3 -> BatchNorm -> GELU   (widths 64, 256, 256)
    max-pool 3 -> linear (no bias) -> x head_multiplier

  Convolutions have no bias and start as the identity on their first
  in_channels outputs (`dirac_init`); GELU is the exact (erf) one, as
  PyTorch's `nn.GELU()`.
  """

  num_classes: int = 10
  widths: tuple[int, ...] = (64, 256, 256)
  whiten_patch_size: int = 2
  whiten_eps: float = 5e-4
  whiten_bias_init: str = 'zeros'  # WHITEN_BIAS_INITS: zeros (airbench94), pytorch_default (_muon)
  batch_norm_momentum: float = 0.6
  batch_norm_epsilon: float = 1e-12
  head_multiplier: float = 1.0 / 9.0  # airbench94: 1/9; airbench94_muon: 1/256
  head_init: str = 'pytorch_default'  # HEAD_INITS: pytorch_default, unit_std (airbench94_muon)
  axis_name: str | None = AXIS_NAME
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    bias_inits = {'zeros': nn.initializers.zeros,
                  'pytorch_default': _pytorch_default_bias(3 * self.whiten_patch_size**2)}
    head_inits = {'pytorch_default': pytorch_default_uniform(),
                  'unit_std': unit_std_init(pytorch_default_uniform())}
    gelu = functools.partial(nn.gelu, approximate=False)
    size = self.whiten_patch_size
    x = nn.Conv(2 * 3 * size * size, (size, size), padding='VALID', use_bias=True,
                bias_init=bias_inits[self.whiten_bias_init], dtype=self.dtype,
                name='whiten')(images.astype(self.dtype))
    x = gelu(x)
    norm = functools.partial(BatchNorm, momentum=self.batch_norm_momentum,
                             epsilon=self.batch_norm_epsilon, axis_name=self.axis_name)
    for i, width in enumerate(self.widths):
      conv = functools.partial(nn.Conv, width, (3, 3), padding='SAME', use_bias=False,
                               kernel_init=dirac_init(pytorch_default_uniform()),
                               dtype=self.dtype)
      x = conv(name=f'group{i + 1}_conv1')(x)
      x = max_pool_2x2(x)
      x = gelu(norm(name=f'group{i + 1}_norm1')(x, train))
      x = conv(name=f'group{i + 1}_conv2')(x)
      x = gelu(norm(name=f'group{i + 1}_norm2')(x, train))
    x = nn.max_pool(x, (3, 3), strides=(3, 3))
    x = x.reshape((x.shape[0], -1))
    logits = nn.Dense(self.num_classes, use_bias=False, kernel_init=head_inits[self.head_init],
                      dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32) * self.head_multiplier

  def data_init(self, params: Any, images: np.ndarray) -> Any:
    """`params` with the whitening filters computed from preprocessed training images."""
    kernel = whitening_kernel(images, self.whiten_patch_size, self.whiten_eps)
    return {**params, 'whiten': {**params['whiten'], 'kernel': jnp.asarray(kernel)}}


MODELS: dict[str, Callable[..., nn.Module]] = {
    'tutorial_cnn': TutorialCNN,
    'airbench94': Airbench94,
}


# config.model.dtype: what activations, convolutions and matmuls compute in.
# Parameters are created in float32 whatever it is (flax's param_dtype), and
# every model returns float32 logits, so the loss is computed in float32.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


# Module fields that are not options of the config's `model` group.
_NOT_OPTIONS = ('parent', 'name', 'num_classes', 'axis_name')


def model_class(name: str) -> Callable[..., nn.Module]:
  """`MODELS[name]`; an unregistered name is one sentence saying where models are registered."""
  if name not in MODELS:
    raise UserError(
        f'Unknown model {name!r} (config.model.name): the registered models are '
        f'{sorted(MODELS)}; register it in cifar_jax.models.MODELS (cifar_jax/models.py) '
        'before the config, or a checkpoint trained with it, is used.')
  return MODELS[name]


def model_fields(name: str) -> dict[str, Any]:
  """{field: default} of `MODELS[name]` that `config.model` may set."""
  return {f.name: f.default for f in dataclasses.fields(model_class(name))
          if f.name not in _NOT_OPTIONS}


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds `MODELS[model_config.name]` with the other fields as arguments (a valid config)."""
  options = dict(model_config)
  name = options.pop('name')
  if 'dtype' in options:
    options['dtype'] = DTYPES[options['dtype']]
  for key, value in options.items():
    if isinstance(value, list):  # tuples come back from JSON (saved configs) as lists
      options[key] = tuple(value)
  return model_class(name)(num_classes=num_classes, **options)


def parameter_paths(params: Any) -> list[str]:
  """'module/param' path of every leaf, in tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat]


def count_parameters(params: Any) -> int:
  """Total number of scalars in a parameter tree."""
  return sum(x.size for x in jax.tree.leaves(params))
