"""airbench94 on a narrow network and synthetic data: a first run in a minute and the tests' base.

  python -m cifar_jax.main --workdir=/tmp/airbench94_smoke --config=experiments/airbench94_smoke.py

Everything airbench94 has (whitening, BatchNorm statistics, parameter groups,
lookahead, alternating flip, translation, TTA) at widths 16/32/32, batch 128,
60 steps. `--config.optimizer_groups...` overrides work as on airbench94; for
the Muon recipe start from experiments/airbench94_muon.py.
"""

import ml_collections

from experiments import airbench94


def get_config() -> ml_collections.ConfigDict:
  config = airbench94.get_config()
  config.dataset.source = 'synthetic'
  config.dataset.synthetic_train_size = 4096
  config.dataset.synthetic_test_size = 1000
  config.model.widths = (16, 32, 32)
  config.model_init_examples = 1000
  config.batch_size = 128  # global
  config.num_train_steps = 60
  config.log_every_steps = 10
  config.checkpoint_every_steps = 20
  config.histogram_every_steps = 20
  config.eval.batch_size = 250
  config.eval.poll_secs = 1.0
  config.eval.timeout_secs = 120.0
  return config
