"""The terminal shows the tutorial's lines, warnings and errors; INFO goes to WORKDIR/logs."""

import logging
import os
import re
import subprocess
import sys

import pytest

from cifar_jax.core import terminal
from tests.conftest import REPO_ROOT
from tests.test_main import TINY_FLAGS

TUTORIAL_LINE = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (step \d+, (loss|precision) |'
                           r'resuming from step )')


def _main(*flags):
  return subprocess.run([sys.executable, '-m', 'cifar_jax.main', *TINY_FLAGS, *flags],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_run_shows_only_the_tutorials_lines_and_logs_the_rest(tmp_path):
  workdir = str(tmp_path / 'run')
  result = _main(f'--workdir={workdir}', '--mode=train_and_eval', '--config.num_train_steps=20',
                 '--config.eval_every_steps=10')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) >= 4 and all(TUTORIAL_LINE.match(line) for line in lines), lines
  assert result.stderr == '', result.stderr[-2000:]
  with open(os.path.join(workdir, 'logs', 'train.log')) as f:
    log = f.read()
  assert 'Config:' in log and 'First step (compilation included)' in log
  assert 'logits/kernel' in log  # the parameter table


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_verbose_brings_the_info_lines_back(tmp_path):
  result = _main(f'--workdir={tmp_path}', '--config.num_train_steps=5', '--verbose')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Config:' in result.stderr and 'First step (compilation included)' in result.stderr


def test_data_mode_prints_the_description_alone():
  result = _main('--mode=data')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith('train: 512 images of shape (32, 32, 3)')
  assert 'Config:' not in result.stdout + result.stderr and result.stderr == ''


def test_records_wait_for_the_workdir_to_exist(tmp_path):
  workdir = tmp_path / 'later'
  handler = terminal.WorkdirLogFile(str(workdir), 'eval.log')
  record = lambda message: logging.LogRecord('x', logging.INFO, __file__, 1, message, (), None)  # noqa: E731
  handler.emit(record('before the trainer created it'))
  assert not workdir.exists()  # the evaluator must not create the WORKDIR
  workdir.mkdir()
  handler.emit(record('after'))
  handler.close()
  text = (workdir / 'logs' / 'eval.log').read_text()
  assert text.index('before the trainer created it') < text.index('after')
