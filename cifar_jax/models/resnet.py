"""ResNets for CIFAR: post-activation (He et al. 2015) and pre-activation (He et al. 2016).

Built as kuangliu/pytorch-cifar's `models/resnet.py` and
`models/preact_resnet.py` build them, the networks of its table (ResNet18
93.02%, PreActResNet18 95.11%), NHWC:

  stem      'cifar': conv 3x3/1 (width) [-> BN -> ReLU: post-activation only]
            'imagenet': conv 7x7/2 -> BN -> ReLU -> max-pool 3x3/2 (torchvision's,
            for larger images; pre-activation: conv 7x7/2 -> max-pool)
  4 stages  widths w, 2w, 4w, 8w (x4 out for bottlenecks), strides 1, 2, 2, 2
  head      [BN -> ReLU: pre-activation with final_activation] -> global
            average pool -> linear with bias

Blocks (`depth` picks them and their counts from `DEPTHS`):

  basic        conv3x3(s) BN ReLU conv3x3 BN, + shortcut, ReLU
  bottleneck   conv1x1 BN ReLU conv3x3(s) BN ReLU conv1x1(4x) BN, + shortcut, ReLU
  pre-act      BN ReLU -> (shortcut taken here) conv3x3(s) BN ReLU conv3x3, + shortcut
  pre-act bottleneck   BN ReLU -> conv1x1 BN ReLU conv3x3(s) BN ReLU conv1x1(4x), + shortcut

The shortcut is the identity, or where the shape changes a 1x1 convolution of
the block's stride (+ BN in the post-activation network). Convolutions have
no bias and pad like PyTorch (`layers.pytorch_conv`); every initialiser is
PyTorch's default, as kuangliu's leaves them; BatchNorm is PyTorch's over the
global batch (momentum 0.1 in PyTorch's convention = 0.9 here, eps 1e-5,
scale and bias). kuangliu's pre-activation network ends without a BN-ReLU
before the pooling (`final_activation=False`, the default); the paper's has
one.

With the defaults (depth 18, width 64, 10 classes) `ResNet` has 11,173,962
parameters and `PreActResNet` 11,171,146, as the PyTorch models
(benchmarks/resnet_reference.py checks them, their logits and gradients).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax.core import fields as spec
from cifar_jax.core.parallel import AXIS_NAME
from cifar_jax.models.layers import (
  FORMULATIONS,
  BatchNorm,
  at_least_float32,
  global_average_pool,
  pytorch_conv,
  pytorch_default_bias,
  pytorch_default_uniform,
)

# depth -> (block, blocks per stage).
DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
STEMS = ('cifar', 'imagenet')
_EXPANSION = {'basic': 1, 'bottleneck': 4}


class _Family(nn.Module):
  """The fields and the pieces both ResNets share."""

  # Range checks of config.model's fields (models.check_model_fields; the rest by type).
  FIELD_CHECKS: ClassVar[dict] = {
      'depth': spec.choice(sorted(DEPTHS)), 'width': spec.integer(1), 'stem': spec.choice(STEMS),
      'formulation': spec.choice(FORMULATIONS)}
  # PyTorch module names that differ from these beyond '.' -> '_': regex substitutions on a
  # PyTorch module's name (`torch_weights.to_variables`). kuangliu/pytorch-cifar's shortcut is
  # an nn.Sequential of the convolution and, in ResNet, the BatchNorm; torchvision's is
  # `downsample`, and its head `fc`.
  TORCH_NAMES: ClassVar[dict] = {
      r'_shortcut_0$': '_shortcut_conv', r'_shortcut_1$': '_shortcut_bn',
      r'_downsample_0$': '_shortcut_conv', r'_downsample_1$': '_shortcut_bn', r'^fc$': 'linear'}

  num_classes: int = 10
  depth: int = 18  # a key of DEPTHS
  width: int = 64  # the first stage's; stages double it
  stem: str = 'cifar'  # STEMS
  batch_norm_momentum: float = 0.9  # weight of the old value (PyTorch's momentum 0.1)
  batch_norm_epsilon: float = 1e-5
  formulation: str = 'fast'  # layers.FORMULATIONS: 'reference' is the plain BatchNorm
  axis_name: str | None = AXIS_NAME
  dtype: Any = jnp.float32

  def _norm(self, name: str):
    return BatchNorm(momentum=self.batch_norm_momentum, epsilon=self.batch_norm_epsilon,
                     use_scale=True, axis_name=self.axis_name, formulation=self.formulation,
                     name=name)

  def _conv(self, features: int, kernel_size: int, stride: int, name: str):
    return pytorch_conv(features, kernel_size, stride, dtype=self.dtype, name=name,
                        formulation=self.formulation)

  def _stages(self):
    """(stage, block index, block kind, width, stride) of every block, in order."""
    kind, counts = DEPTHS[self.depth]
    for stage, count in enumerate(counts):
      for index in range(count):
        stride = 2 if stage > 0 and index == 0 else 1
        yield stage, index, kind, self.width * 2**stage, stride

  def _head(self, x: jax.Array) -> jax.Array:
    x = global_average_pool(x)
    logits = nn.Dense(self.num_classes, kernel_init=pytorch_default_uniform(),
                      bias_init=pytorch_default_bias(x.shape[-1]), dtype=self.dtype,
                      name='linear')(x)
    return logits.astype(at_least_float32(logits.dtype))

  def _imagenet_pool(self, x: jax.Array) -> jax.Array:
    # torchvision's MaxPool2d(3, 2, padding=1): -inf padding, one pixel each side.
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet(_Family):
  """The post-activation ResNet (kuangliu's `ResNet18()` ... `ResNet152()`)."""

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.astype(self.dtype)
    relu = nn.relu
    if self.stem == 'cifar':
      x = relu(self._norm('bn1')(self._conv(self.width, 3, 1, 'conv1')(x), train))
    else:
      x = relu(self._norm('bn1')(self._conv(self.width, 7, 2, 'conv1')(x), train))
      x = self._imagenet_pool(x)
    for stage, index, kind, width, stride in self._stages():
      name = f'layer{stage + 1}_{index}'
      out_width = width * _EXPANSION[kind]
      shortcut = x
      if stride != 1 or x.shape[-1] != out_width:
        shortcut = self._norm(f'{name}_shortcut_bn')(
            self._conv(out_width, 1, stride, f'{name}_shortcut_conv')(x), train)
      if kind == 'basic':
        y = relu(self._norm(f'{name}_bn1')(self._conv(width, 3, stride, f'{name}_conv1')(x),
                                           train))
        y = self._norm(f'{name}_bn2')(self._conv(width, 3, 1, f'{name}_conv2')(y), train)
      else:
        y = relu(self._norm(f'{name}_bn1')(self._conv(width, 1, 1, f'{name}_conv1')(x), train))
        y = relu(self._norm(f'{name}_bn2')(self._conv(width, 3, stride, f'{name}_conv2')(y),
                                           train))
        y = self._norm(f'{name}_bn3')(self._conv(out_width, 1, 1, f'{name}_conv3')(y), train)
      x = relu(y + shortcut)
    return self._head(x)


class PreActResNet(_Family):
  """The pre-activation ResNet (kuangliu's `PreActResNet18()` ... `PreActResNet152()`)."""

  final_activation: bool = False  # kuangliu's: none; the paper's: BN -> ReLU before pooling

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.astype(self.dtype)
    if self.stem == 'cifar':
      x = self._conv(self.width, 3, 1, 'conv1')(x)
    else:
      x = self._imagenet_pool(self._conv(self.width, 7, 2, 'conv1')(x))
    for stage, index, kind, width, stride in self._stages():
      name = f'layer{stage + 1}_{index}'
      out_width = width * _EXPANSION[kind]
      activated = nn.relu(self._norm(f'{name}_bn1')(x, train))
      shortcut = x
      if stride != 1 or x.shape[-1] != out_width:
        shortcut = self._conv(out_width, 1, stride, f'{name}_shortcut_conv')(activated)
      bn_relu = lambda norm, y: nn.relu(norm(y, train))  # noqa: E731
      if kind == 'basic':
        y = self._conv(width, 3, stride, f'{name}_conv1')(activated)
        y = self._conv(width, 3, 1, f'{name}_conv2')(bn_relu(self._norm(f'{name}_bn2'), y))
      else:
        y = self._conv(width, 1, 1, f'{name}_conv1')(activated)
        y = self._conv(width, 3, stride, f'{name}_conv2')(bn_relu(self._norm(f'{name}_bn2'), y))
        y = self._conv(out_width, 1, 1, f'{name}_conv3')(bn_relu(self._norm(f'{name}_bn3'), y))
      x = y + shortcut
    if self.final_activation:
      x = nn.relu(self._norm('bn')(x, train))
    return self._head(x)


class TorchvisionResNet18(ResNet):
  """torchvision's `resnet18` (ImageNet: the 7x7 stem and max pool), whose published weights
  load by torchvision's names (`config.init_from=resnet18-f37072fd.pth`)."""

  FIELD_CHECKS: ClassVar[dict] = {**ResNet.FIELD_CHECKS, 'depth': spec.choice([18]),
                                  'stem': spec.choice(['imagenet'])}
  stem: str = 'imagenet'


class TorchvisionResNet50(ResNet):
  """torchvision's `resnet50` (bottlenecks, the stride on the 3x3 convolution: its v1.5), whose
  published weights load by torchvision's names."""

  FIELD_CHECKS: ClassVar[dict] = {**ResNet.FIELD_CHECKS, 'depth': spec.choice([50]),
                                  'stem': spec.choice(['imagenet'])}
  depth: int = 50
  stem: str = 'imagenet'
