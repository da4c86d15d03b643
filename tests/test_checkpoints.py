"""Checkpoint contents, the completion marker, and unreadable checkpoints."""

import os

import jax
import numpy as np
import pytest

from cifar_jax.core import layout
from cifar_jax.core.errors import UserError
from cifar_jax.run import train
from cifar_jax.workdir import checkpoints
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
  loaded = checkpoints.load(manager, 10, state, tiny_config())
  restored, dataset_info = loaded.state, loaded.dataset
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert int(restored.step) == 10 and loaded.step == 10
  assert loaded.config.model.conv_features == 8
  assert dataset_info == {'class_names': [f'class_{i}' for i in range(10)],
                          'num_train_examples': 512, 'image_shape': [32, 32, 3]}
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
  # Without its checksums (a step saved before they existed) the garbage is read, and refused.
  os.remove(copy / 'checkpoints' / '10' / checkpoints.CHECKSUM_FILE)
  manager = checkpoints.create_manager(str(copy), read_only=True)
  with pytest.raises(UserError, match=r'checkpoints/10 cannot be .*delete that step folder'):
    checkpoints.load(manager, 10, state, tiny_config())


def _corrupt(step_dir):
  """Overwrites 384 bytes in the middle of the largest file of the state (bit rot)."""
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, 'state'))
           for name in names]
  largest = max(files, key=os.path.getsize)
  size = os.path.getsize(largest)
  with open(largest, 'r+b') as f:
    f.seek(size // 2 - 192)
    f.write(np.random.default_rng(0).integers(0, 256, 384, np.uint8).tobytes())
  return largest


def test_every_file_of_a_checkpoint_is_checksummed_as_sha256sum_writes(trained):
  workdir, _ = trained
  step_dir = os.path.join(checkpoints.checkpoint_dir(workdir), '10')
  with open(os.path.join(step_dir, checkpoints.CHECKSUM_FILE)) as f:
    lines = f.read().splitlines()
  recorded = {line.split('  ', 1)[1] for line in lines}
  on_disk = {os.path.relpath(os.path.join(root, name), step_dir)
             for root, _, names in os.walk(step_dir) for name in names} - {
                 checkpoints.CHECKSUM_FILE}
  assert recorded == on_disk and any(path.startswith('state/') for path in recorded)
  assert checkpoints.verify(step_dir)


def test_a_corrupt_checkpoint_is_refused_skipped_and_resumed_around(tmp_path, caplog):
  from cifar_jax import experiment  # pylint: disable=g-import-not-at-top
  from cifar_jax.run import evaluate  # pylint: disable=g-import-not-at-top

  workdir, straight = str(tmp_path / 'run'), str(tmp_path / 'straight')
  config = tiny_config(num_train_steps=20, checkpoint_every_steps=10)
  train.train_and_evaluate(config, workdir, evaluate_in_process=False)
  step_dir = os.path.join(checkpoints.checkpoint_dir(workdir), '20')
  corrupted = _corrupt(step_dir)
  relative = os.path.relpath(corrupted, step_dir)
  # Orbax alone restores it without a word (the arrays differ).
  with pytest.raises(UserError, match=rf'Checkpoint {step_dir} is corrupt: {relative} differs '
                                      'from its recorded checksum'):
    experiment.load_checkpoint(workdir)
  experiment.load_checkpoint(workdir, step=10)  # the intact one loads
  results = evaluate.evaluate(tiny_config(**{'eval.run_once': True}), workdir)
  assert results == {}
  records = [r for r in evaluate.summaries.read_records(
      os.path.join(workdir, 'eval', 'metrics.jsonl')) if r['step'] == 20]
  assert records[0]['status'] == 'corrupt' and 'is corrupt' in records[0]['reason']
  # The trainer moves it aside with one warning line and resumes from step 10.
  caplog.clear()
  with caplog.at_level('WARNING'):
    resumed = train.train_and_evaluate(tiny_config(num_train_steps=30, checkpoint_every_steps=10),
                                       workdir, evaluate_in_process=False)
  warnings = [r.getMessage() for r in caplog.records if 'is corrupt' in r.getMessage()]
  assert len(warnings) == 1 and '\n' not in warnings[0], warnings
  assert 'resuming from step 10' in warnings[0]
  moved = os.listdir(os.path.join(workdir, layout.CORRUPT_CHECKPOINTS))
  assert len(moved) == 1 and moved[0].startswith('20-')
  # Resumed from step 10, the run is the same as one never disturbed.
  reference = train.train_and_evaluate(tiny_config(num_train_steps=30, checkpoint_every_steps=10),
                                       straight, evaluate_in_process=False)
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)


@pytest.mark.parametrize('keep, kept', [(2, [6, 8]), (None, [2, 4, 6, 8])])
def test_the_newest_keep_checkpoints_are_kept_and_none_keeps_every_one(trained, tmp_path, keep,
                                                                       kept):
  """Orbax's preservation policy (LatestN) in place of its deprecated max_to_keep."""
  _, state = trained
  workdir = str(tmp_path)
  manager = checkpoints.create_manager(workdir, keep=keep)
  for step in (2, 4, 6, 8):
    checkpoints.save(manager, state.replace(step=np.asarray(step, np.int32)), tiny_config(),
                     {'class_names': ['a']}, [])
    checkpoints.wait_until_finished(manager, step)
  manager.close()
  assert checkpoints.create_manager(workdir, read_only=True).all_steps() == kept
