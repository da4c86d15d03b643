"""airbench94 on the image folder, a sweep: 3 learning rates x 2 seeds trained in one program.

  python -m cifar_jax.main --workdir=/tmp/airbench94_lr_sweep \
      --config=experiments/airbench94_lr_sweep_jpeg.py
  python -m cifar_jax.compare /tmp/airbench94_lr_sweep

The recipe's 11.5 (per 1024 examples), half and double it, each with seeds 0
and 1: six runs on the replica axis (docs/replicas.md). Shortened so that the
six fit ~30 minutes on a 2-core CPU: 1 of the recipe's 9.9 epochs (43 steps;
the schedule and lookahead follow the shorter run) and scored without
test-time augmentation. --config.num_train_steps=426
--config.eval.tta=mirror_translate is the full recipe.
"""

import ml_collections

from experiments import airbench94_jpeg


def get_config() -> ml_collections.ConfigDict:
  config = airbench94_jpeg.get_config()
  config.sweep.learning_rate = (5.75, 11.5, 23.0)
  config.num_replicas = 2
  config.num_train_steps = 45_000 // 1024
  config.eval.tta = 'none'
  return config
