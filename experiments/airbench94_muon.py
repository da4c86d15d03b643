"""airbench94_muon (`cifar10-airbench`, airbench94_muon.py) on tfds CIFAR-10.

  python -m cifar_jax.main --workdir=/tmp/airbench94_muon \
      --config=experiments/airbench94_muon.py

94.01% mean test accuracy (n=200) in the original. Differences from
airbench94: batch 2000 for 8 epochs (25 * 8 = 200 steps on 50,000 images);
Muon (momentum 0.6, Nesterov, lr 0.24, 3 Newton-Schulz iterations, weights
renormalised) for the conv filters; Nesterov SGD (momentum 0.85) with lr
0.053 for the BatchNorm and whitening biases and 0.67 for the head, weight
decay 2e-6 per example; every learning rate decays linearly to 0 (the
whitening bias over its 3 epochs of training); no lookahead; the head is
initialised to unit standard deviation and its output divided by 256; the
whitening bias starts at PyTorch's default initialisation.
"""

import ml_collections

from experiments import airbench94


def get_config() -> ml_collections.ConfigDict:
  config = airbench94.get_config()
  config.model.whiten_bias_init = 'pytorch_default'
  config.model.head_init = 'unit_std'
  config.model.head_multiplier = 1 / 256

  config.batch_size = 2000  # global
  config.num_train_steps = 50_000 // 2000 * 8

  config.hyperparameter_form = 'plain'
  config.optimizer = 'momentum'  # the head (the default group)
  config.momentum = 0.85
  config.nesterov = True
  config.learning_rate = 0.67
  config.weight_decay = 2e-6  # per example: 0.004 per step at batch 2000
  config.schedule = ml_collections.ConfigDict({
      'name': 'linear_warmup_decay', 'warmup_fraction': 0.0, 'start_scale': 1.0,
      'end_scale': 0.0})
  config.optimizer_groups = ml_collections.ConfigDict({
      'whiten_kernel': {'params': ('whiten/kernel',), 'optimizer': 'frozen'},
      'whiten_bias': {'params': ('whiten/bias',), 'learning_rate': 0.053, 'train_epochs': 3.0,
                      'schedule_over': 'train_epochs'},
      'norm_biases': {'params': ('*norm*/bias',), 'learning_rate': 0.053},
      'filters': {'params': ('group*_conv*/kernel',), 'optimizer': 'muon', 'learning_rate': 0.24,
                  'momentum': 0.6, 'nesterov': True, 'weight_decay': 0.0},
  })
  config.lookahead.every_steps = 0
  return config
