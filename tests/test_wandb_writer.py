"""wandb_writer: W&B runs written offline (WANDB_MODE=offline) and read back from their files."""

import glob
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from cifar_jax.config import extensions, validation
from cifar_jax.core import layout, metric_writers, summaries, sweeps, wandb_writer
from cifar_jax.run import train
from cifar_jax.workdir import checkpoints
from tests.conftest import REPO_ROOT, tiny_config
from tests.test_main import TINY_FLAGS


def _with_wandb(config, *writers):
  with config.unlocked():
    config.summaries.writers = writers or ('jsonl', 'wandb')
  extensions.complete(config)
  validation.validate(config)
  return config


@pytest.fixture
def fresh_warnings(monkeypatch):
  monkeypatch.setattr(wandb_writer, '_warned', set())


@pytest.fixture
def offline(monkeypatch):
  pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')


def _writer_kinds(writer):
  return [type(w).__name__ for w in writer.writers]


def test_without_the_package_the_run_writes_the_rest_with_one_warning(
    tmp_path, monkeypatch, caplog, fresh_warnings):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # as where it is not installed
  config = _with_wandb(tiny_config(), 'jsonl', 'tensorboard', 'wandb')
  with caplog.at_level(logging.WARNING):
    for logdir in ('run', 'run/eval'):
      writer = summaries.create_writer(str(tmp_path / logdir), True, config, str(tmp_path / 'run'))
      assert _writer_kinds(writer) == ['JsonLinesWriter', 'TensorBoardWriter']
      writer.close()
  (warning,) = [r.getMessage() for r in caplog.records if 'W&B' in r.getMessage()]
  assert warning == ("No W&B summaries: the wandb package is not installed (pip install "
                     "'cifar_jax[wandb]'); the run trains without them.")


def test_without_a_login_the_run_writes_the_rest_with_one_warning(
    tmp_path, monkeypatch, caplog, fresh_warnings):
  pytest.importorskip('wandb')
  for name in ('WANDB_MODE', 'WANDB_API_KEY', 'WANDB_DISABLED', 'WANDB_IDENTITY_TOKEN_FILE'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('HOME', str(tmp_path))  # no ~/.netrc, no W&B settings
  monkeypatch.setenv('NETRC', str(tmp_path / 'netrc'))
  monkeypatch.setenv('WANDB_CONFIG_DIR', str(tmp_path / 'wandb_config'))
  config = _with_wandb(tiny_config())
  with caplog.at_level(logging.WARNING):
    writer = summaries.create_writer(str(tmp_path / 'run'), True, config)
  assert _writer_kinds(writer) == ['JsonLinesWriter']
  (warning,) = [r.getMessage() for r in caplog.records if 'W&B' in r.getMessage()]
  assert warning.startswith('No W&B summaries: not logged in to W&B (run `wandb login`')
  assert not os.path.exists(tmp_path / 'run' / 'wandb')


def test_each_run_of_a_sweep_has_its_own_config_and_figures():
  config = tiny_config(num_replicas=2)
  with config.unlocked():
    config.sweep = ml_collections.ConfigDict({'learning_rate': (0.1, 0.2)})
    config.sweep_mode = 'cross'
  configs = wandb_writer.run_configs(config)
  assert [(c['learning_rate'], c['seed'], c['run'], c['sweep_point'], c['replica'])
          for c in configs] == [(0.1, 0, 0, 0, 0), (0.1, 1, 1, 0, 1), (0.2, 0, 2, 1, 0),
                                (0.2, 1, 3, 1, 1)]
  assert not any(key.startswith('sweep.') for c in configs for key in c)  # each its point's

  class Run:
    def __init__(self):
      self.logged = []

    def log(self, values):
      self.logged.append(values)

  runs = [Run(), Run()]
  wandb_writer.WandbWriter(runs).write_scalars(
      3, {'precision': 0.5, 'precision/replica_0': 0.4, 'precision/replica_1': 0.6})
  assert [r.logged for r in runs] == [
      [{'step': 3, 'precision': 0.4, 'group/precision': 0.5}],
      [{'step': 3, 'precision': 0.6, 'group/precision': 0.5}]]


def test_wandb_failing_in_the_middle_of_a_run_is_one_warning_and_the_run_goes_on(
    caplog, fresh_warnings):
  pytest.importorskip('wandb')

  class Gone:
    def log(self, values):
      raise ConnectionError('the W&B process is gone')

  writer = wandb_writer.WandbWriter([Gone(), Gone()])
  with caplog.at_level(logging.WARNING):
    for step in range(3):
      writer.write_scalars(step, {'loss': 1.0, 'loss/replica_0': 1.0, 'loss/replica_1': 1.0})
      writer.write_images(step, {'grid': np.zeros((4, 4, 3))})
  writer.close()
  (warning,) = [r.getMessage() for r in caplog.records]
  assert warning.startswith('W&B stopped taking summaries (ConnectionError: the W&B process is '
                            'gone); the run goes on without them')


def _scalars_of(records):
  """(step, key) -> value of every scalar in metrics.jsonl records (not the record fields)."""
  return {(r['step'], k): v for r in records for k, v in r.items()
          if k not in ('step', 'wall_time') and isinstance(v, (int, float))}


def _found_in_wandb(logdir, num_runs):
  """(step, key) -> value as the W&B runs of `logdir` hold them, in metrics.jsonl's names."""
  from tests import wandb_records  # pylint: disable=g-import-not-at-top
  found = {}
  runs = {run.config['run']: run for run in wandb_records.offline_runs(logdir)
          if run.run_id}  # (a killed process's file may be empty)
  assert sorted(runs) == list(range(num_runs))
  for k, run in runs.items():
    for row in run.history:
      for key, value in row.items():
        if key.startswith('_') or key == 'step' or not isinstance(value, (int, float)):
          continue
        if num_runs == 1:
          found[(row['step'], key)] = value
        elif key.startswith(wandb_writer.GROUP_PREFIX):
          found[(row['step'], key[len(wandb_writer.GROUP_PREFIX):])] = value
        else:
          found[(row['step'], sweeps.replica_key(key, k))] = value
  return found, runs


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_sweep_of_two_points_by_two_seeds_logs_every_figure_as_runs_of_one_group(
    tmp_path, offline):
  config = tiny_config(num_replicas=2, num_train_steps=10)
  with config.unlocked():
    config.sweep = ml_collections.ConfigDict({'learning_rate': (0.1, 0.2)})
    config.sweep_mode = 'cross'
  config = _with_wandb(config, 'jsonl', 'tensorboard', 'wandb')
  workdir = str(tmp_path / 'lr_sweep')
  train.train_and_evaluate(config, workdir)
  for logdir, job in ((workdir, 'train'), (layout.path(workdir, layout.EVAL), 'eval')):
    records = summaries.read_records(os.path.join(logdir, layout.METRICS))
    expected = _scalars_of(records)
    found, runs = _found_in_wandb(logdir, 4)
    assert {key: found.get(key) for key in expected} == expected, job
    for k, run in runs.items():
      assert (run.group, run.job_type) == ('lr_sweep', job)
      assert (run.config['learning_rate'], run.config['seed']) == ((0.1, 0.2)[k // 2], k % 2)
    image = 'augmented_inputs' if job == 'train' else 'confusion_matrix'
    assert any(f'{image}/_type' in row for row in runs[0].history)
  eval_steps = {s for s, _ in _scalars_of(summaries.read_records(
      layout.path(workdir, layout.EVAL, layout.METRICS)))}
  assert eval_steps == {10}


@pytest.mark.slow
def test_training_is_bit_identical_with_wandb_and_every_figure_is_in_it(tmp_path, offline):
  plain = train.train_and_evaluate(_with_wandb(tiny_config(), 'jsonl'), str(tmp_path / 'plain'))
  workdir = str(tmp_path / 'logged')
  logged = train.train_and_evaluate(_with_wandb(tiny_config()), workdir)
  jax.tree.map(np.testing.assert_array_equal, logged, plain)
  for logdir in (workdir, layout.path(workdir, layout.EVAL)):
    expected = _scalars_of(summaries.read_records(os.path.join(logdir, layout.METRICS)))
    found, (run,) = _found_in_wandb(logdir, 1)[0], _found_in_wandb(logdir, 1)[1].values()
    assert {key: found.get(key) for key in expected} == expected
    assert run.config['learning_rate'] == tiny_config().learning_rate
    assert run.config['model.name'] == 'tutorial_cnn'


@pytest.mark.slow
def test_a_killed_run_resumed_continues_its_wandb_runs(tmp_path):
  pytest.importorskip('wandb')
  from tests import wandb_records  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  # Each process its own W&B service, as from a shell (not this test process's, which earlier
  # tests started and would hold the killed process's runs open).
  env = {**{k: v for k, v in os.environ.items() if k != 'WANDB_SERVICE'}, 'WANDB_MODE': 'offline'}
  flags = [*TINY_FLAGS, '--config.summaries.writers=jsonl,wandb',
           '--config.checkpoint_every_steps=20', '--mode=train_and_eval',
           '--config.eval_every_steps=20']
  process = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *flags,
       '--config.num_train_steps=100000'],
      cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not os.path.isdir(os.path.join(workdir, 'checkpoints', '40')) and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = checkpoints.create_manager(workdir, read_only=True).latest_step()
  target = saved + 20
  resumed = subprocess.run(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *flags,
       f'--config.num_train_steps={target}'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'W&B' not in resumed.stderr  # no warning: it wrote
  for logdir in (workdir, layout.path(workdir, layout.EVAL)):
    # The killed process's W&B file may hold nothing (W&B writes it in 32 KiB blocks and
    # went down with it); its folder names the run it wrote.
    killed, resumed_run = sorted(glob.glob(os.path.join(logdir, 'wandb', 'offline-run-*')))
    second = wandb_records.read_run(glob.glob(os.path.join(resumed_run, 'run-*.wandb'))[0])
    assert killed.endswith('-' + second.run_id)  # the same W&B run, continued
    steps = [row['step'] for row in second.history if 'step' in row]
    assert steps and min(steps) > saved and max(steps) == target
  # The resumed run's last figures are those of its metrics.jsonl.
  records = summaries.read_records(layout.path(workdir, layout.EVAL, layout.METRICS))
  last = {k: v for k, v in _scalars_of(records).items() if k[0] == target}
  found, _ = _found_in_wandb(layout.path(workdir, layout.EVAL), 1)
  assert last and {key: found.get(key) for key in last} == last


def test_the_wandb_writer_has_the_whole_interface():
  assert not getattr(wandb_writer.WandbWriter, '__abstractmethods__', None)
  assert issubclass(wandb_writer.WandbWriter, metric_writers.MetricWriter)
