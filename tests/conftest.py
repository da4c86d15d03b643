"""Shared test set-up: four fake CPU devices and tiny configs.

XLA_FLAGS must be set before jax is first imported, so it is set here.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

from experiments import smoke  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """The smoke config, smaller still: a few steps take well under a second."""
  config = smoke.get_config()
  config.dataset.cache_dir = ''
  config.dataset.synthetic_train_size = 512
  config.dataset.synthetic_test_size = 200
  config.model.conv_features = 8
  config.model.local3_features = 16
  config.model.local4_features = 8
  config.per_device_batch_size = 8
  config.num_devices = 1
  config.num_train_steps = 20
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.histogram_every_steps = 10
  config.histogram_sample_size = 4
  config.input_image_grid_size = 4
  config.eval.batch_size = 64
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


@pytest.fixture
def make_config():
  return tiny_config
