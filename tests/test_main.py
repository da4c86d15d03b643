"""The command line as a user runs it, in real OS processes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from cifar_jax import checkpoints
from tests.conftest import REPO_ROOT, restore_latest

TINY_FLAGS = [
    '--config=experiments/smoke.py',
    '--config.dataset.synthetic_train_size=512',
    '--config.dataset.synthetic_test_size=200',
    '--config.model.conv_features=8',
    '--config.model.local3_features=16',
    '--config.model.local4_features=8',
    '--config.per_device_batch_size=8',
    '--config.num_devices=1',
    '--config.log_every_steps=10',
    '--config.histogram_every_steps=1000',
    '--config.eval.batch_size=64',
]
LOG_LINE = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: step (\d+), loss = \d+\.\d\d '
                      r'\(\d+\.\d examples/sec; \d+\.\d{3} sec/batch\)$', re.M)


def _main(workdir, *flags, **kwargs):
  return subprocess.run(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS, *flags],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def test_trains_logs_in_the_tutorial_format_and_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  first = _main(workdir, '--mode=train_and_eval', '--config.num_train_steps=30',
                '--config.checkpoint_every_steps=20')
  assert first.returncode == 0, first.stderr[-2000:]
  assert [int(s) for s in LOG_LINE.findall(first.stdout)] == [10, 20, 30]
  assert 'step 30, precision @ 1 = ' in first.stdout
  assert os.path.exists(os.path.join(workdir, 'train_complete'))
  again = _main(workdir, '--config.num_train_steps=40', '--config.checkpoint_every_steps=20')
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming from step 30' in again.stdout
  assert [int(s) for s in LOG_LINE.findall(again.stdout)] == [40]


def test_killed_trainer_resumes_with_identical_state(tmp_path):
  killed = str(tmp_path / 'killed')
  process = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={killed}', *TINY_FLAGS,
       '--config.num_train_steps=100000', '--config.checkpoint_every_steps=20'],
      cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  step_dir = os.path.join(killed, 'checkpoints', '40')
  deadline = time.time() + 240
  while not os.path.isdir(step_dir) and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = checkpoints.create_manager(killed, read_only=True).latest_step()
  assert saved is not None and saved >= 40
  target = saved + 20
  resumed = _main(killed, f'--config.num_train_steps={target}',
                  '--config.checkpoint_every_steps=20')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resuming from step {saved}' in resumed.stdout
  straight = str(tmp_path / 'straight')
  run = _main(straight, f'--config.num_train_steps={target}', '--config.checkpoint_every_steps=20')
  assert run.returncode == 0, run.stderr[-2000:]
  jax.tree.map(np.testing.assert_array_equal, restore_latest(killed), restore_latest(straight))


def test_unknown_config_field_is_one_line(tmp_path):
  result = _main(str(tmp_path), '--config.no_such_field=3')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert re.search(r'^error: a --config.\* override was rejected .*no_such_field', result.stderr,
                   re.M)


def test_unwritable_workdir_is_one_line(tmp_path):
  a_file = tmp_path / 'file'
  a_file.write_text('')
  result = _main(str(a_file / 'sub'))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert 'error: Cannot write to workdir' in result.stderr


def test_missing_workdir_flag_is_reported(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'cifar_jax.main', *TINY_FLAGS], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert '--workdir' in result.stderr


def test_trains_and_evaluates_without_tensorflow(tmp_path):
  # As on a machine with JAX only: importing tensorflow or tensorboard fails.
  workdir = str(tmp_path / 'run')
  script = (
      'import sys; sys.modules["tensorflow"] = None; sys.modules["tensorboard"] = None\n'
      'from absl import app\n'
      'from cifar_jax import main\n'
      'app.run(main.main, flags_parser=main.parse_flags)\n')
  flags = [f'--workdir={workdir}', '--mode=train_and_eval', *TINY_FLAGS,
           '--config.num_train_steps=20',
           '--config.checkpoint_every_steps=10']
  result = subprocess.run([sys.executable, '-c', script, *flags], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr.count('No TensorBoard summaries') == 1
  assert 'step 20, precision @ 1 = ' in result.stdout
  assert os.path.getsize(os.path.join(workdir, 'metrics.jsonl')) > 0
  assert os.path.getsize(os.path.join(workdir, 'eval', 'metrics.jsonl')) > 0
  assert not [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]


def _eval_records(workdir):
  path = os.path.join(workdir, 'eval', 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


EVALUATOR_FLAGS = ['--mode=eval', '--config.eval.poll_secs=0.3', '--config.eval.timeout_secs=120',
                   '--config.dataset.synthetic_test_size=3000']


def test_trainer_and_evaluator_processes_score_every_checkpoint_once(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  trainer_flags = ['--config.num_train_steps=120', '--config.checkpoint_every_steps=20',
                   '--config.keep_checkpoints=100']
  evaluator = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
       *EVALUATOR_FLAGS], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  trainer = _main(workdir, *trainer_flags)
  assert trainer.returncode == 0, trainer.stderr[-2000:]
  out, err = evaluator.communicate(timeout=300)
  assert evaluator.returncode == 0, err[-2000:]  # it stopped by itself after the final step
  records = _eval_records(workdir)
  assert [r['step'] for r in records] == [20, 40, 60, 80, 100, 120]
  assert {r['status'] for r in records} == {'scored'}
  assert len(re.findall(r'step \d+, precision @ 1 = [\d.]+ \(raw parameters: [\d.]+\)', out)) == 6


def test_killed_evaluator_restarts_without_rescoring_or_missing(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  command = [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
             *EVALUATOR_FLAGS]
  trainer = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
       '--config.num_train_steps=300', '--config.checkpoint_every_steps=20',
       '--config.keep_checkpoints=100'],
      cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  evaluator = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not _eval_records(workdir) and time.time() < deadline:
    time.sleep(0.1)
  evaluator.send_signal(signal.SIGKILL)
  evaluator.wait()
  scored_before_kill = [r['step'] for r in _eval_records(workdir)]
  assert scored_before_kill
  restarted = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=300)
  assert restarted.returncode == 0, restarted.stderr[-2000:]
  assert trainer.wait(timeout=300) == 0
  steps = [r['step'] for r in _eval_records(workdir)]
  assert steps == list(range(20, 301, 20))  # each once, in order, none missed
  for step in scored_before_kill:
    assert f'step {step}, precision' not in restarted.stdout  # not rescored
