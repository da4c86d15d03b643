"""ResNet-18 on tfds CIFAR-10: the common 200-epoch recipe (kuangliu/pytorch-cifar's).

  python -m cifar_jax.main --workdir=/tmp/resnet18 --config=experiments/resnet18.py

kuangliu's table: 93.02% for ResNet18 (his recipe, plain momentum); airbench's
README: a standard ResNet-18 reaches 96.0% with a tuned schedule. The
network is `cifar_jax.models.resnet.ResNet` (11,173,962 parameters) and the
recipe the one most CIFAR papers start from, in PyTorch's own units:

* random 32x32 crops of the image padded by 4 black pixels, random flip;
  per-channel normalisation with kuangliu's constants;
* SGD with Nesterov momentum 0.9, learning rate 0.1 at batch 128, weight
  decay 5e-4 as PyTorch means it (g += 5e-4 * p, on every parameter:
  `hyperparameter_form='pytorch'`), cosine to 0 over 200 epochs (per step;
  kuangliu's CosineAnnealingLR steps per epoch and uses plain momentum:
  `--config.nesterov=False` for his);
* the mean cross-entropy, no label smoothing, no EMA; BatchNorm over the
  global batch with PyTorch's momentum 0.1 and eps 1e-5.

200 epochs of 390 batches (drop-last) = 78,000 steps, resolved when the
split is loaded. The batch is global (`config.batch_size`): 128 on any
number of devices, divided across them.
"""

import ml_collections

from experiments import base

# kuangliu's normalisation constants (his main.py).
CHANNEL_MEAN = (0.4914, 0.4822, 0.4465)
CHANNEL_STD = (0.2023, 0.1994, 0.2010)


def resnet_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data, optimizer and cadences shared by the ResNet recipes (all but the model)."""
  config.crop_size = 32
  config.preprocess = 'channel_normalization'
  config.channel_mean = CHANNEL_MEAN
  config.channel_std = CHANNEL_STD
  config.augment.translate = 4
  config.augment.padding_mode = 'constant'
  config.augment.flip_left_right = True

  config.per_device_batch_size = 0
  config.batch_size = 128  # global: the same on any number of devices
  config.num_train_epochs = 200.0
  config.optimizer = 'momentum'
  config.momentum = 0.9
  config.nesterov = True
  config.learning_rate = 0.1
  config.hyperparameter_form = 'pytorch'
  config.weight_decay = 5e-4
  config.schedule = ml_collections.ConfigDict({'name': 'warmup_cosine', 'warmup_epochs': 0.0})
  config.loss_reduction = 'mean'

  config.log_every_steps = 100
  config.checkpoint_every_steps = 3900  # every 10 epochs
  config.histogram_every_steps = 3900
  config.eval_every_steps = 0  # the final step only; --mode=eval watches every checkpoint
  config.eval.headline = 'raw'
  return config


def get_config() -> ml_collections.ConfigDict:
  config = resnet_recipe(base.get_config())
  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet'
  config.model.depth = 18
  config.model.width = 64
  config.model.stem = 'cifar'
  config.model.batch_norm_momentum = 0.9  # PyTorch's momentum 0.1
  config.model.batch_norm_epsilon = 1e-5
  # fast | reference: the same function and gradients; 'reference' is BatchNorm differentiated
  # by JAX, the formulation before the fast one, bit for bit (docs/performance.md).
  config.model.formulation = 'fast'
  config.model.dtype = 'float32'  # or bfloat16 (see cifar10.py)
  return config
