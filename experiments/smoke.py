"""A newcomer's first run and the tests' config: synthetic data, a tiny net.

  python -m cifar_jax.main --workdir=/tmp/smoke --config=experiments/smoke.py

Trains 300 steps in well under a minute on a 2-core CPU, with no network.
"""

import ml_collections

from experiments import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.dataset.source = 'synthetic'
  config.dataset.synthetic_train_size = 4096
  config.dataset.synthetic_test_size = 1000
  config.model.conv_features = 16
  config.model.local3_features = 64
  config.model.local4_features = 32
  config.per_device_batch_size = 32
  config.num_train_steps = 300
  config.learning_rate = 0.05
  config.log_every_steps = 50
  config.checkpoint_every_steps = 100
  config.histogram_every_steps = 100
  config.ema.decay = 0.99
  config.eval.batch_size = 256
  config.eval_every_steps = 100
  config.eval.poll_secs = 1.0
  config.eval.timeout_secs = 120.0
  return config
