"""airbench94_muon on the image-folder CIFAR-10 (train 0-4499 of each class, score 4500-4999).

  python -m cifar_jax.main --workdir=/tmp/airbench94_muon_jpeg \
      --config=experiments/airbench94_muon_jpeg.py \
      --config.dataset.path=../shared/data/cifar10-jpeg-train.tar.gz

45,000 training images: 22 steps of 2000 per epoch, 8 epochs = 176 steps.
"""

import ml_collections

from experiments import airbench94_jpeg, airbench94_muon


def get_config() -> ml_collections.ConfigDict:
  config = airbench94_jpeg.image_folder(airbench94_muon.get_config())
  config.num_train_steps = 45_000 // 2000 * 8
  return config
