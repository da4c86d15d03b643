"""Checkpoint contents, the completion marker, and unreadable checkpoints."""

import os

import jax
import numpy as np
import pytest

from cifar_jax import checkpoints, train
from cifar_jax.errors import UserError
from tests.conftest import tiny_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  state = train.train_and_evaluate(tiny_config(num_train_steps=10), workdir,
      evaluate_in_process=False)
  return workdir, state


def test_checkpoint_holds_state_config_and_classes(trained):
  workdir, state = trained
  manager = checkpoints.create_manager(workdir, read_only=True)
  restored, dataset_info = checkpoints.restore(manager, 10, state, tiny_config())
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert int(restored.step) == 10
  assert dataset_info == {'class_names': [f'class_{i}' for i in range(10)],
                          'num_train_examples': 512}
  saved_config = checkpoints.read_saved_config(manager, 10)
  assert saved_config['model']['conv_features'] == 8
  assert checkpoints.final_step(workdir) == 10


def test_completion_marker_round_trip(tmp_path):
  assert checkpoints.final_step(str(tmp_path)) is None
  checkpoints.mark_train_complete(str(tmp_path), 123)
  assert checkpoints.final_step(str(tmp_path)) == 123
  checkpoints.clear_train_complete(str(tmp_path))
  assert checkpoints.final_step(str(tmp_path)) is None


def test_corrupt_checkpoint_is_reported_in_one_sentence(trained, tmp_path):
  workdir, state = trained
  copy = tmp_path / 'copy'
  os.system(f'cp -r {workdir} {copy}')
  for root, _, files in os.walk(copy / 'checkpoints' / '10' / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\0garbage')
  manager = checkpoints.create_manager(str(copy), read_only=True)
  with pytest.raises(UserError, match=r'checkpoints/10 cannot be .*delete that step folder'):
    checkpoints.restore(manager, 10, state, tiny_config())
