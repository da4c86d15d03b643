"""The tutorial's recipe on an image-folder copy of CIFAR-10 (no TensorFlow needed).

Trains on files 0-4499 of every class of `cifar10-jpeg-train.tar.gz` and
scores files 4500-4999 (5,000 held-out images):

  python -m cifar_jax.main --workdir=/tmp/cifar10_jpeg \
      --config=experiments/cifar10_jpeg.py \
      --config.dataset.path=../shared/data/cifar10-jpeg-train.tar.gz
"""

import ml_collections

from experiments import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.dataset.source = 'image_folder'
  config.dataset.path = '../shared/data/cifar10-jpeg-train.tar.gz'
  config.dataset.train_split = 'train[:4500]'
  config.dataset.eval_split = 'train[4500:]'
  config.num_train_steps = 1760  # ~5 epochs of 45,000 images at batch 128
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.histogram_every_steps = 500
  config.eval_every_steps = 500
  return config
