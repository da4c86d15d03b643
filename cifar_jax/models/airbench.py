"""airbench94's network (Keller Jordan's `cifar10-airbench`: legacy/airbench94.py, _muon.py).

A frozen 2x2 patch-whitening convolution (its filters computed from training
images by `data_init`), three conv groups and a scaled linear head, with
BatchNorm whose statistics live in the `batch_stats` collection.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core.parallel import AXIS_NAME
from cifar_jax.models.layers import (
  FORMULATIONS,
  BatchNorm,
  dirac_init,
  max_pool_2x2,
  pytorch_default_bias,
  pytorch_default_uniform,
  unit_std_init,
)


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

    whiten: conv 2x2 'VALID', 2 * C * 2 * 2 filters for C input channels (24 for
      colour, 8 for grey; frozen, set by `data_init`), bias -> GELU
    3 x conv group: conv 3x3 -> max-pool 2 -> BatchNorm -> GELU
                    -> conv 3x3 -> BatchNorm -> GELU   (widths 64, 256, 256)
    max-pool 3 -> linear (no bias) -> x head_multiplier

  Convolutions have no bias and start as the identity on their first
  in_channels outputs (`dirac_init`); GELU is the exact (erf) one, as
  PyTorch's `nn.GELU()`.
  """

  # Range checks of config.model's fields (models.check_model_fields; the rest by type).
  FIELD_CHECKS: ClassVar[dict] = {
      'widths': spec.positive_integers(), 'whiten_patch_size': spec.integer(1),
      'whiten_eps': spec.number(above=0.0), 'whiten_bias_init': spec.choice(WHITEN_BIAS_INITS),
      'head_multiplier': spec.number(above=0.0), 'head_init': spec.choice(HEAD_INITS),
      'formulation': spec.choice(FORMULATIONS)}

  num_classes: int = 10
  widths: tuple[int, ...] = (64, 256, 256)
  whiten_patch_size: int = 2
  whiten_eps: float = 5e-4
  whiten_bias_init: str = 'zeros'  # WHITEN_BIAS_INITS: zeros (airbench94), pytorch_default (_muon)
  batch_norm_momentum: float = 0.6
  batch_norm_epsilon: float = 1e-12
  formulation: str = 'fast'  # layers.FORMULATIONS: 'reference' is the plain BatchNorm
  head_multiplier: float = 1.0 / 9.0  # airbench94: 1/9; airbench94_muon: 1/256
  head_init: str = 'pytorch_default'  # HEAD_INITS: pytorch_default, unit_std (airbench94_muon)
  axis_name: str | None = AXIS_NAME
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    size, channels = self.whiten_patch_size, images.shape[-1]
    patch_values = channels * size * size  # the whitening filters: +/- one per patch value
    bias_inits = {'zeros': nn.initializers.zeros,
                  'pytorch_default': pytorch_default_bias(patch_values)}
    head_inits = {'pytorch_default': pytorch_default_uniform(),
                  'unit_std': unit_std_init(pytorch_default_uniform())}
    gelu = functools.partial(nn.gelu, approximate=False)
    x = nn.Conv(2 * patch_values, (size, size), padding='VALID', use_bias=True,
                bias_init=bias_inits[self.whiten_bias_init], dtype=self.dtype,
                name='whiten')(images.astype(self.dtype))
    x = gelu(x)
    norm = functools.partial(BatchNorm, momentum=self.batch_norm_momentum,
                             epsilon=self.batch_norm_epsilon, axis_name=self.axis_name,
                             formulation=self.formulation)
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
