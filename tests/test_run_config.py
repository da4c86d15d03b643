"""The run remembers its config (cifar_jax/workdir/run_config.py), and a fork's newcomer tasks done
from the command line alone: one file per extension, no recipe file, the evaluator, a resume and
`compare` given no --config."""

import json
import os
import sys

import pytest

from cifar_jax.core import layout
from cifar_jax.core.errors import UserError
from cifar_jax.run import train
from cifar_jax.workdir import checkpoints, run_config
from tests import command_runner
from tests.conftest import tiny_config
from tests.test_extensions import FORK_FILES
from tests.test_main import TINY_FLAGS

MAIN, COMPARE = 'cifar_jax.main', 'cifar_jax.compare'
TINY_OTHER_THAN_MODEL = [flag for flag in TINY_FLAGS if not flag.startswith('--config.model.')]
NNX_FILE = '''
"""A small NNX network whose width is a field."""
from flax import nnx
import jax.numpy as jnp


class SmallCNN(nnx.Module):
  def __init__(self, num_classes: int, in_channels: int, *, width: int = 16,
               axis_name: str | None = None, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, width, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(width, axis_name=axis_name, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, images, train: bool = False):
    x = self.norm(self.conv(images), use_running_average=not train)
    return self.head(jnp.mean(nnx.relu(x), axis=(1, 2)))
'''


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run') / 'run')
  train.train_and_evaluate(tiny_config(num_train_steps=4, checkpoint_every_steps=2), workdir,
                           evaluate_in_process=False)
  return workdir


def test_the_trainer_writes_the_config_it_trained_with(trained):
  with open(os.path.join(trained, layout.CONFIG)) as f:
    saved = json.load(f)
  assert saved['num_train_steps'] == 4 and saved['model']['conv_features'] == 8
  assert json.loads(run_config.read(trained).to_json()) == saved


def test_the_evaluator_takes_evaluation_fields_on_top_and_refuses_the_others(trained):
  config = run_config.for_evaluation(trained, {'eval.run_once': True, 'eval.metrics': ('nll',),
                                               'eval.sets.fog.corruptions': 'fog'})
  assert config.eval.run_once and config.eval.metrics == ('nll',)
  assert config.eval.sets.fog.corruptions == 'fog' and config.model.conv_features == 8
  with pytest.raises(UserError, match=r'--config.model.conv_features would change the trained '
                                      r'network.*config.json'):
    run_config.for_evaluation(trained, {'eval.run_once': True, 'model.conv_features': 16})


def test_a_run_from_before_config_json_is_read_from_its_checkpoint(trained, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  old = str(tmp_path / 'old')
  shutil.copytree(trained, old)
  os.remove(os.path.join(old, layout.CONFIG))
  assert run_config.read(old).to_dict() == run_config.read(trained).to_dict()
  shutil.rmtree(checkpoints.checkpoint_dir(old))
  assert run_config.read(old) is None


def test_the_evaluator_waits_for_a_run_then_says_so_in_one_sentence(tmp_path):
  with pytest.raises(UserError, match=r'holds no run \(no config.json and no checkpoint after '
                                      r'\d s\); start the trainer there first'):
    run_config.for_evaluation(str(tmp_path / 'later'), {'eval.timeout_secs': '0.2',
                                                         'eval.poll_secs': '0.1'})


@pytest.fixture
def fork_path(tmp_path, monkeypatch):
  """The fork's files (one per extension) in a folder on the commands' PYTHONPATH."""
  folder = tmp_path / 'fork'
  folder.mkdir()
  for name, text in {**FORK_FILES, 'my_nnx.py': NNX_FILE}.items():
    (folder / name).write_text(text)
  monkeypatch.setenv('PYTHONPATH', str(folder))
  yield folder
  for name in (*FORK_FILES, 'my_nnx.py'):
    sys.modules.pop(name[:-3], None)


def _succeeded(result):
  assert result['returncode'] == 0, result['stderr'][-3000:]
  assert 'Traceback' not in result['stderr']
  return result


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_forks_extensions_from_the_command_line_alone(fork_path, tmp_path):
  """Each of the fork's extensions named and set on the command line, no recipe file: trained,
  scored with an outside metric and sets created there, resumed, all without --config again."""
  run = str(tmp_path / 'run')
  fork_flags = [  # fields before the names that bring them: any order
      '--config.augment.cutout_size=12', "--config.augment.extra=('fork_cutout:Cutout',)",
      '--config.schedule.name=fork_schedule:one_cycle', '--config.schedule.peak_fraction=0.5',
      '--config.model.name=my_nnx:SmallCNN', '--config.model.width=8',
      '--config.num_train_steps=4', '--config.checkpoint_every_steps=2']
  evaluator = [f'--workdir={run}', '--mode=eval', '--config.eval.run_once=true',
               '--config.eval.metrics=fork_metric:confidence,nll',
               '--config.eval.sets.fog.corruptions=fog', '--config.eval.sets.fog.severities=(2,)',
               '--config.eval.sets.far.ood=true', '--config.eval.sets.far.source=synthetic',
               '--config.eval.sets.far.seed=5']
  trained, scored, refused, resumed = command_runner.run_many(MAIN, [
      [f'--workdir={run}', *TINY_OTHER_THAN_MODEL, *fork_flags], evaluator,
      [f'--workdir={run}', '--mode=eval', '--config.model.width=16'],
      [f'--workdir={run}', '--config.num_train_steps=6']])
  _succeeded(trained)
  with open(os.path.join(run, layout.CONFIG)) as f:
    saved = json.load(f)
  assert saved['augment']['cutout_size'] == 12 and saved['model'] == {'name': 'my_nnx:SmallCNN',
                                                                      'width': 8}
  assert saved['schedule'] == {'name': 'fork_schedule:one_cycle', 'peak_fraction': 0.5}
  assert saved['l2_penalty_modules'] == []  # the recipe's tutorial modules left with its model
  assert 'precision @ 1' in _succeeded(scored)['stdout'] and 'far: step 4' in scored['stdout']
  assert refused['returncode'] == 1
  assert '--config.model.width would change the trained network' in refused['stderr']
  assert 'resuming from step 4' in _succeeded(resumed)['stdout']
  with open(os.path.join(run, 'eval', 'metrics.jsonl')) as f:
    record = [json.loads(line) for line in f][-1]
  assert {'confidence', 'nll', 'fog/precision', 'far/auroc'} <= set(record)
  assert 0 <= record['far/auroc'] <= 1 and record['far/auroc'] != 0.5


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_compare_ranks_a_sweep_and_runs_by_any_recorded_figure(fork_path, tmp_path):
  sweep, first, second = (str(tmp_path / name) for name in ('sweep', 'a', 'b'))
  common = [*TINY_FLAGS, '--config.num_train_steps=4', '--config.checkpoint_every_steps=4',
            '--config.eval.metrics=fork_metric:confidence,nll']
  trained = command_runner.run_many(MAIN, [
      [f'--workdir={sweep}', *common, '--config.sweep.learning_rate=(0.02, 0.1)'],
      [f'--workdir={first}', *common], [f'--workdir={second}', *common, '--config.seed=1'],
      *[[f'--workdir={run}', '--mode=eval', '--config.eval.run_once=true']
        for run in (sweep, first, second)]])
  for result in trained:
    _succeeded(result)
  by_nll, by_confidence = command_runner.run_many(COMPARE, [
      [sweep, '--metric=nll'], [first, second, '--metric=confidence', '--direction=higher']])
  assert 'learning_rate=0.02' in _succeeded(by_nll)['stdout'] and 'nll' in by_nll['stdout']
  assert 'confidence' in _succeeded(by_confidence)['stdout']
