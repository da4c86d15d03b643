"""experiments/wrn28_10.py on the image-folder CIFAR-10: files 0-4499 of each class, then 4500-4999.

  python -m cifar_jax.main --workdir=/tmp/wrn28_10_jpeg \
      --config=experiments/wrn28_10_jpeg.py \
      --config.dataset.path=../shared/data/cifar10-jpeg-train.tar.gz

45,000 training images: 351 steps of 128 per epoch, 70,200 steps in 200 epochs.
"""

import ml_collections

from experiments import airbench94_jpeg, wrn28_10


def get_config() -> ml_collections.ConfigDict:
  return airbench94_jpeg.image_folder(wrn28_10.get_config())
