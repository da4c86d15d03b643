"""The tutorial's last exercise: SVHN (tfds `svhn_cropped`) instead of CIFAR-10.

  python -m cifar_jax.main --workdir=/tmp/svhn --config=experiments/svhn.py

Street-view digits, 32x32: train 73,257 / test 26,032 images (and `extra`
531,131, which is 1.6 GB as uint8 on every device: add it with
`--config.dataset.train_split=train+extra` only on an accelerator with room).
The network is the tutorial's; what changes is what digits call for:

* no left-right flips (a flipped 2, 3, 5 or 7 is not that digit);
* a 28x28 crop instead of 24x24, since the digit fills most of the centre
  and a 24x24 window often cuts it;
* ~30 epochs at batch 128 (SVHN's train split is half as large again as
  CIFAR-10's and easier).
"""

import ml_collections

from experiments import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.dataset.name = 'svhn_cropped'
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'test'
  config.crop_size = 28
  config.augment.flip_left_right = False
  config.num_train_steps = 17_000  # ~30 epochs of 73,257 images
  return config
