"""Pre-activation ResNet-18 on tfds CIFAR-10, with ResNet-18's recipe (experiments/resnet18.py).

  python -m cifar_jax.main --workdir=/tmp/preact_resnet18 \
      --config=experiments/preact_resnet18.py

kuangliu's table: 95.11% for PreActResNet18. The network is
`cifar_jax.models.resnet.PreActResNet` (11,171,146 parameters) as kuangliu
builds it: no BN-ReLU before the pooling (`--config.model.final_activation=True`
adds He et al.'s).
"""

import ml_collections

from experiments import base, resnet18


def get_config() -> ml_collections.ConfigDict:
  config = resnet18.resnet_recipe(base.get_config())
  config.model = ml_collections.ConfigDict()
  config.model.name = 'preact_resnet'
  config.model.depth = 18
  config.model.width = 64
  config.model.stem = 'cifar'
  config.model.final_activation = False
  config.model.batch_norm_momentum = 0.9
  config.model.batch_norm_epsilon = 1e-5
  # fast | reference: the same function and gradients; 'reference' is BatchNorm differentiated
  # by JAX, the formulation before the fast one, bit for bit (docs/performance.md).
  config.model.formulation = 'fast'
  config.model.dtype = 'float32'
  return config
