"""experiments/resnet18.py on the image-folder CIFAR-10: files 0-4499 of each class, then 4500-4999.

  python -m cifar_jax.main --workdir=/tmp/resnet18_jpeg \
      --config=experiments/resnet18_jpeg.py \
      --config.dataset.path=../shared/data/cifar10-jpeg-train.tar.gz

45,000 training images: 351 steps of 128 per epoch, 70,200 steps in 200 epochs.
"""

import ml_collections

from experiments import airbench94_jpeg, resnet18


def get_config() -> ml_collections.ConfigDict:
  return airbench94_jpeg.image_folder(resnet18.get_config())
