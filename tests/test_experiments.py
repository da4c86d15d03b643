"""Every config in experiments/ loads and builds; SVHN trains and evaluates (mock tfds)."""

import glob
import importlib
import os

import pytest

from cifar_jax import builder, datasets, sweeps, train, validation
from tests.conftest import REPO_ROOT, tiny_config

CONFIGS = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(os.path.join(REPO_ROOT, 'experiments', '*.py'))
                 if not p.endswith('__init__.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_valid_and_builds_a_model_and_optimizer(name):
  config = importlib.import_module(f'experiments.{name}').get_config()
  validation.validate(config)
  setup = builder.build(config, num_classes=10)
  # One step counter per run: a sweep's points x seeds, or the replicas.
  assert int(setup.state.step.size) == sweeps.num_runs(config) and setup.model is not None


def test_svhn_trains_and_evaluates_on_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(datasets, '_download_server_reachable', lambda: True)
  config = tiny_config(importlib.import_module('experiments.svhn').get_config(),
                       num_train_steps=6, checkpoint_every_steps=6, **{'eval.batch_size': 16})
  with tfds.testing.mock_data(num_examples=40):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  assert state.params['local3']['kernel'].shape[0] == 7 * 7 * 8  # 28x28 crops
  assert os.path.exists(tmp_path / 'eval' / 'metrics.jsonl')
