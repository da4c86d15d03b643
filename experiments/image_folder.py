"""Your own image folder: airbench94's network and optimizer, sized by the data.

  python -m cifar_jax.main --workdir=/tmp/my_images --config=experiments/image_folder.py \
      --config.dataset.path=/data/my_images      # ROOT/train/<class>/*.jpg|png (or a .tar.gz)

Nothing else needs an edit (docs/your_data.md says what to change and why):

* the held-out part is carved out of the folder: files 0-89% of each class
  train, the last 10% score (`train[:90%]` / `train[90%:]`);
* the images keep their size and channels (grey folders train grey); a folder
  of mixed sizes needs `--config.dataset.image_size=N` (resized once, when
  loaded and cached);
* training sees random resized crops (36-100% of the area, aspect 3/4-4/3)
  at the images' own size, flipped; evaluation scores the whole image, with
  the mirror and one-pixel translations averaged;
* 30 epochs, whatever the folder's size (`num_train_epochs`), of a global
  batch of 256 on any number of devices; a folder too small for 10 such
  batches per epoch (`min_steps_per_epoch`) trains on batches of
  images // 10, said in one line;
* the learning rate and weight decay are airbench's, per 1024 examples
  (`hyperparameter_form='decoupled'`): the step's rate follows the global
  batch linearly, so other devices or batch sizes keep the recipe;
* per-image standardisation, which fits any channel count and needs no
  statistics of your data.
"""

import ml_collections

from experiments import airbench94


def get_config() -> ml_collections.ConfigDict:
  config = airbench94.get_config()
  config.dataset.source = 'image_folder'
  config.dataset.path = ''  # set --config.dataset.path
  config.dataset.train_split = 'train[:90%]'
  config.dataset.eval_split = 'train[90%:]'
  config.dataset.image_size = 0  # the data's own; N or (height, width) resizes when loaded

  config.crop_size = 0  # the images' own size
  config.preprocess = 'per_image_standardization'
  config.augment.translate = 0
  config.augment.random_resized_crop = True
  config.augment.crop_scale = (0.36, 1.0)
  config.augment.crop_ratio = (3 / 4, 4 / 3)
  config.augment.flip_left_right = True
  config.augment.alternating_flip = False

  # A global batch of 256 on any number of devices; a folder of fewer images trains on batches
  # that leave an epoch at least config.min_steps_per_epoch steps (the learning rate follows
  # the batch: decoupled form).
  config.batch_size = 256
  config.min_steps_per_epoch = 10
  config.num_train_epochs = 30.0
  config.checkpoint_every_steps = 200
  config.histogram_every_steps = 200
  config.log_every_steps = 20
  return config
