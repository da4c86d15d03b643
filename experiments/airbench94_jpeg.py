"""airbench94 on the image-folder CIFAR-10: train on files 0-4499 of each class, score 4500-4999.

  python -m cifar_jax.main --workdir=/tmp/airbench94_jpeg \
      --config=experiments/airbench94_jpeg.py \
      --config.dataset.path=../shared/data/cifar10-jpeg-train.tar.gz

45,000 training images: 43 steps of 1024 per epoch, ceil(43 * 9.9) = 426 steps.
"""

import math

import ml_collections

from experiments import airbench94


def image_folder(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` on the image folder's 45,000 / 5,000 split (shared with airbench94_muon_jpeg)."""
  config.dataset.source = 'image_folder'
  config.dataset.path = '../shared/data/cifar10-jpeg-train.tar.gz'
  config.dataset.train_split = 'train[:4500]'
  config.dataset.eval_split = 'train[4500:]'
  return config


def get_config() -> ml_collections.ConfigDict:
  config = image_folder(airbench94.get_config())
  config.num_train_steps = math.ceil(45_000 // 1024 * 9.9)
  return config
