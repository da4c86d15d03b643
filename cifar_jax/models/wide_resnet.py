"""Wide ResNets, WRN-d-k (Zagoruyko and Komodakis 2016), as the common PyTorch port builds them.

The network of the paper's CIFAR table (WRN-28-10: 3.89% error on CIFAR-10
without dropout; uncertainty-baselines' deterministic WRN-28-10: 96.0%), as
xternalz/WideResNet-pytorch writes it, NHWC:

  conv 3x3 16
  3 groups of n = (d - 4) / 6 pre-activation blocks, widths 16k, 32k, 64k,
  strides 1, 2, 2:
    BN ReLU -> conv3x3(s) BN ReLU conv3x3, + shortcut
    (the shortcut: the block's input, or where the width changes a 1x1
    convolution of stride s of its activated input)
  BN ReLU -> global average pool -> linear with bias

Initialisers as the port's: convolutions N(0, 2 / (9 * out_channels))
(Kaiming, fan-out), BatchNorm scale 1 and bias 0, the linear layer's weight
PyTorch's default and its bias 0. Convolutions have no bias and pad like
PyTorch. BatchNorm is PyTorch's over the global batch (momentum 0.1 in
PyTorch's convention = 0.9 here, eps 1e-5). No dropout (the port's dropRate
0, the paper's no-dropout rows).

WRN-28-10 has 36,479,194 parameters, WRN-16-4 2,748,890 and WRN-16-8
10,961,370 (10 classes), as the PyTorch models
(benchmarks/resnet_reference.py checks them, their logits and gradients).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax.core import fields as spec
from cifar_jax.core.errors import UserError
from cifar_jax.core.parallel import AXIS_NAME
from cifar_jax.models.layers import (
  FORMULATIONS,
  BatchNorm,
  at_least_float32,
  global_average_pool,
  kaiming_normal_fan_out,
  pytorch_conv,
  pytorch_default_uniform,
)


def blocks_per_group(depth: int) -> int:
  """n of WRN-d-k: d = 6n + 4 (two convolutions per block, three groups, stem and head)."""
  return (depth - 4) // 6


def _check_depth(c: spec.Checker, path: str) -> int:
  depth = c.integer(path, 10)
  if (depth - 4) % 6:
    raise UserError(f'config.{path} is {depth}; a Wide ResNet has depth 6n + 4 (16, 22, 28, '
                    '40, ...): two convolutions per block, three groups of n blocks.')
  return depth


class WideResNet(nn.Module):
  """WRN-depth-width_factor."""

  # Range checks of config.model's fields (models.check_model_fields; the rest by type).
  FIELD_CHECKS: ClassVar[dict] = {
      'depth': _check_depth, 'width_factor': spec.integer(1), 'stem_width': spec.integer(1),
      'formulation': spec.choice(FORMULATIONS)}

  num_classes: int = 10
  depth: int = 28  # 6n + 4
  width_factor: int = 10  # k
  stem_width: int = 16  # the first convolution's; the groups are 16k, 32k, 64k
  batch_norm_momentum: float = 0.9  # weight of the old value (PyTorch's momentum 0.1)
  batch_norm_epsilon: float = 1e-5
  formulation: str = 'fast'  # layers.FORMULATIONS: 'reference' is the plain BatchNorm
  axis_name: str | None = AXIS_NAME
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    def conv(features, kernel_size, stride, name):
      return pytorch_conv(features, kernel_size, stride, dtype=self.dtype, name=name,
                          kernel_init=kaiming_normal_fan_out(), formulation=self.formulation)

    def bn_relu(name, x):
      return nn.relu(BatchNorm(momentum=self.batch_norm_momentum,
                               epsilon=self.batch_norm_epsilon, use_scale=True,
                               axis_name=self.axis_name, formulation=self.formulation,
                               name=name)(x, train))

    x = conv(self.stem_width, 3, 1, 'conv1')(images.astype(self.dtype))
    for group in range(3):
      width = self.stem_width * 2**group * self.width_factor
      for index in range(blocks_per_group(self.depth)):
        name = f'block{group + 1}_{index}'
        stride = 2 if group > 0 and index == 0 else 1
        activated = bn_relu(f'{name}_bn1', x)
        shortcut = x
        if x.shape[-1] != width:
          shortcut = conv(width, 1, stride, f'{name}_shortcut_conv')(activated)
        y = conv(width, 3, stride, f'{name}_conv1')(activated)
        y = conv(width, 3, 1, f'{name}_conv2')(bn_relu(f'{name}_bn2', y))
        x = y + shortcut
    x = global_average_pool(bn_relu('bn', x))
    logits = nn.Dense(self.num_classes, kernel_init=pytorch_default_uniform(),
                      bias_init=nn.initializers.zeros, dtype=self.dtype, name='fc')(x)
    return logits.astype(at_least_float32(logits.dtype))
