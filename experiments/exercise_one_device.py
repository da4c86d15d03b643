"""The tutorial's multi-GPU exercise, baseline: one device, batch 128.

cifar10_multi_gpu_train.py: "run on 2 GPUs with batch 64 and compare the
training speed" with one GPU at batch 128. `benchmarks/multi_device.py` runs
this config and `exercise_two_devices.py` and prints the comparison.
"""

import ml_collections

from experiments import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.num_devices = 1
  config.per_device_batch_size = 128
  return config
