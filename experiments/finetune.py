"""Your own small image folder, starting from a trained network instead of random weights.

  # once: the tutorial network on the CIFAR-10 copy (or on any larger folder of your own)
  python -m cifar_jax.main --workdir=/tmp/base --config=experiments/cifar10_jpeg.py
  # then: your folder, from that run's weights
  python -m cifar_jax.main --workdir=/tmp/mine --config=experiments/finetune.py \
      --config.dataset.path=/data/my_images --config.init_from=/tmp/base

What changes from training from scratch (docs/your_data.md, "Starting from trained weights",
measured on 300 photos):

* every layer but the head starts from the source run's EMA weights (`init_from`; `WORKDIR@STEP`
  for another step, `init_parameters='raw'` for the raw ones); the head (`init_exclude`:
  'logits') starts fresh, so a folder of as many classes as the source does not inherit the
  source's classes;
* a tenth of the tutorial's learning rate, decayed by a cosine over 30 epochs after one of
  warm-up, on a global batch of 32 (a folder too small for 10 batches per epoch trains on
  batches of images // 10);
* the images are resized to the source's 32x32 once, when loaded (the network was trained on
  24x24 crops of them), and split 90% / 10% as the folder recipe does;
* `freeze` (empty here) keeps layers as they were loaded: ('conv1', 'conv2') trains only the
  dense layers, the common choice for very few images.

The network is the source run's: `init_from` loads by name and shape, so the model fields must
be its (`--config.model.*`, or start from that run's own recipe and add `--config.init_from`).
"""

import ml_collections

from experiments import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.init_from = ''  # set --config.init_from: a run's WORKDIR[@STEP] (or a .pt / .pth)
  config.init_exclude = ('logits',)  # a new head for the folder's classes
  config.freeze = ()

  config.dataset.source = 'image_folder'
  config.dataset.path = ''  # set --config.dataset.path
  config.dataset.train_split = 'train[:90%]'
  config.dataset.eval_split = 'train[90%:]'
  config.dataset.image_size = 32  # the source's images, resized once when loaded

  config.per_device_batch_size = 0
  config.batch_size = 32
  config.min_steps_per_epoch = 10
  config.num_train_epochs = 30.0
  config.learning_rate = 0.01
  config.schedule = ml_collections.ConfigDict({'name': 'warmup_cosine', 'warmup_epochs': 1.0})
  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  config.histogram_every_steps = 200
  config.eval_every_steps = 0
  return config
