"""`cifar10_jpeg` with a modern recipe: Nesterov momentum, warm-up + cosine, label smoothing.

Same network, data split and number of steps as `cifar10_jpeg`; only the
optimisation changes.
"""

import ml_collections

from experiments import cifar10_jpeg


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_jpeg.get_config()
  config.optimizer = 'momentum'
  config.momentum = 0.9
  config.nesterov = True
  config.learning_rate = 0.05
  config.schedule = ml_collections.ConfigDict({'name': 'warmup_cosine', 'warmup_epochs': 0.5})
  config.label_smoothing = 0.1
  return config
