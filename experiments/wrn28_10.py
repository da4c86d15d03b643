"""WRN-28-10 on tfds CIFAR-10: the Wide ResNet paper's recipe (Zagoruyko and Komodakis 2016).

  python -m cifar_jax.main --workdir=/tmp/wrn28_10 --config=experiments/wrn28_10.py

The paper: 3.89% test error without dropout (96.1%); uncertainty-baselines'
deterministic WRN-28-10: 96.0% on CIFAR-10, 79.8% on CIFAR-100. The network
is `cifar_jax.models.wide_resnet.WideResNet` (36,479,194 parameters) and the
paper's recipe:

* random 32x32 crops of the image padded by 4 reflected pixels, random flip;
  per-channel mean/std normalisation;
* SGD with Nesterov momentum 0.9, learning rate 0.1 at batch 128, weight
  decay 5e-4 as PyTorch means it, x0.2 at epochs 60, 120 and 160 of 200;
* no dropout (the paper's no-dropout rows); BatchNorm over the global batch,
  PyTorch's momentum 0.1 and eps 1e-5.

About 5.2 GFLOPs per image forward: a GPU recipe (docs/gpus.md).
"""

import ml_collections

from experiments import base, resnet18


def get_config() -> ml_collections.ConfigDict:
  config = resnet18.resnet_recipe(base.get_config())
  config.channel_mean = (0.4914, 0.4822, 0.4465)  # CIFAR-10's own statistics
  config.channel_std = (0.2470, 0.2435, 0.2616)
  config.augment.padding_mode = 'reflect'
  config.schedule = ml_collections.ConfigDict({
      'name': 'piecewise_constant', 'boundaries_epochs': (60.0, 120.0, 160.0),
      'decay_factor': 0.2})
  config.model = ml_collections.ConfigDict()
  config.model.name = 'wide_resnet'
  config.model.depth = 28
  config.model.width_factor = 10
  config.model.stem_width = 16
  config.model.batch_norm_momentum = 0.9
  config.model.batch_norm_epsilon = 1e-5
  # fast | reference: the same function and gradients; 'reference' is BatchNorm differentiated
  # by JAX, the formulation before the fast one, bit for bit (docs/performance.md).
  config.model.formulation = 'fast'
  config.model.dtype = 'float32'
  return config
