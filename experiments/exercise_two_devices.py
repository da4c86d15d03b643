"""The tutorial's multi-GPU exercise: two devices, batch 64 each (global 128)."""

import ml_collections

from experiments import exercise_one_device


def get_config() -> ml_collections.ConfigDict:
  config = exercise_one_device.get_config()
  config.num_devices = 2
  config.per_device_batch_size = 64
  return config
