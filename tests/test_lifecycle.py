"""Stopping on a signal and ending a run whose peers stopped answering."""

import os
import signal
import subprocess
import sys

import pytest

from cifar_jax.training import lifecycle
from tests.conftest import REPO_ROOT


def test_sigterm_is_noted_and_the_handlers_are_restored():
  before = signal.getsignal(signal.SIGTERM)
  with lifecycle.Preemption() as preemption:
    assert not preemption.reached(3)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)  # a second signal changes nothing
    assert preemption.reached(4)
    assert preemption.signal_number == signal.SIGTERM
    assert preemption.step_at_signal == 3  # the last step reported before the signal
  assert signal.getsignal(signal.SIGTERM) is before


def test_preempted_exit_status_is_128_plus_the_signal():
  stopped = lifecycle.Preempted(12, '/w/checkpoints/12', signal.SIGINT)
  assert stopped.exit_status == 130
  assert str(stopped) == 'preempted at step 12; checkpoint saved in /w/checkpoints/12'


def _run_watchdog(body):
  script = ('import time\n'
            'from cifar_jax.training import lifecycle\n'
            'with lifecycle.Watchdog(1.0, lambda: "the checkpoint of step 5 is intact") as w:\n'
            f'{body}\n'
            'print("finished")\n')
  return subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=60)


def test_watchdog_ends_a_stuck_process_with_one_error_line():
  result = _run_watchdog('  w.progress(7)\n  time.sleep(30)')
  assert result.returncode == 1
  assert 'finished' not in result.stdout
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: process 0 of 1 made no progress for ')
  assert 'after step 7' in result.stderr and 'the checkpoint of step 5 is intact' in result.stderr


@pytest.mark.slow  # (tier: docs/development.md#tests: waits on a clock)
def test_watchdog_lets_a_progressing_process_finish():
  result = _run_watchdog('  for step in range(12):\n    time.sleep(0.25)\n    w.progress(step)')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'finished' in result.stdout and 'error:' not in result.stderr
