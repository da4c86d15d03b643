"""The TensorFlow CIFAR-10 tutorial's recipe (cifar10.py / cifar10_train.py).

  python -m cifar_jax.main --workdir=/tmp/cifar10 --config=experiments/cifar10.py

The tutorial reports ~86% precision@1 after 100K steps of batch 128 (about
256 epochs); its own max_steps default was 1M. On top of the neutral base:
random 24x24 crops, flips, brightness and contrast; plain SGD at 0.1 decayed
x0.1 every 350 epochs; an L2 penalty of 0.004 on local3 and local4; the
parameters' moving average (TensorFlow's, decay 0.9999) is what is scored.
"""

import ml_collections

from experiments import base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.crop_size = 24
  config.preprocess = 'per_image_standardization'
  config.augment.flip_left_right = True
  config.augment.max_brightness_delta = 63.0
  config.augment.random_contrast = True
  config.augment.contrast_lower = 0.2
  config.augment.contrast_upper = 1.8

  config.per_device_batch_size = 128
  config.num_train_steps = 100_000

  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.schedule = ml_collections.ConfigDict({
      'name': 'staircase_exponential', 'decay_factor': 0.1, 'epochs_per_decay': 350.0})
  config.l2_penalty = 0.004
  config.l2_penalty_modules = ('local3', 'local4')
  config.ema.kind = 'tensorflow'
  config.ema.decay = 0.9999

  config.log_every_steps = 10
  config.eval.headline = 'ema'
  return config
