"""One trainer per WORKDIR: a second is refused at once; a killed one does not block its restart."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cifar_jax.core import layout
from cifar_jax.core.errors import UserError
from cifar_jax.workdir import checkpoints, workdir_lock
from tests.conftest import REPO_ROOT
from tests.test_main import TINY_FLAGS


def test_a_second_lock_is_refused_naming_the_holder_and_freed_on_release(tmp_path):
  workdir = str(tmp_path)
  with workdir_lock.TrainerLock(workdir):
    held = workdir_lock.holder(workdir)
    assert held['host'] == socket.gethostname() and held['pid'] == os.getpid()
    with pytest.raises(UserError, match=rf'Workdir {workdir} is in use by another trainer '
                                        rf'\(host {socket.gethostname()}, process '
                                        rf'{os.getpid()}, since \d{{4}}-\d\d-\d\d '):
      with workdir_lock.TrainerLock(workdir):
        pass
  with workdir_lock.TrainerLock(workdir):  # released: the next one takes it
    pass


def test_a_stale_record_does_not_block(tmp_path):
  # What a trainer killed without warning leaves: its record, but no lock.
  (tmp_path / layout.TRAINER_LOCK).write_text(
      json.dumps({'host': 'gone', 'pid': 99999999, 'since': 0}))
  with workdir_lock.TrainerLock(str(tmp_path)):
    assert workdir_lock.holder(str(tmp_path))['pid'] == os.getpid()


def _trainer(workdir, *flags):
  return subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS, *flags],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_trainers_on_one_workdir(tmp_path):
  """The second refuses at once naming the first; after a SIGKILL of the first, a restart runs."""
  workdir = str(tmp_path / 'run')
  first = _trainer(workdir, '--config.num_train_steps=100000',
                   '--config.checkpoint_every_steps=20')
  step_dir = os.path.join(checkpoints.checkpoint_dir(workdir), '20')
  deadline = time.time() + 240
  while not os.path.isdir(step_dir) and time.time() < deadline and first.poll() is None:
    time.sleep(0.2)
  assert first.poll() is None, first.communicate()[1][-2000:]
  started = time.time()
  second = _trainer(workdir, '--config.num_train_steps=100000')
  _, stderr = second.communicate(timeout=120)
  assert second.returncode == 1
  assert stderr.strip().splitlines() == [
      line for line in stderr.strip().splitlines() if line.startswith('error: ')], stderr
  assert (f'error: Workdir {workdir} is in use by another trainer (host '
          f'{socket.gethostname()}, process {first.pid}, since ') in stderr
  assert 'Traceback' not in stderr and time.time() - started < 60
  assert first.poll() is None  # the first trains on
  first.send_signal(signal.SIGKILL)
  first.communicate()
  saved = checkpoints.create_manager(workdir, read_only=True).latest_step()
  restarted = _trainer(workdir, f'--config.num_train_steps={saved + 5}')
  stdout, stderr = restarted.communicate(timeout=300)
  assert restarted.returncode == 0, stderr[-2000:]
  assert f'resuming from step {saved}' in stdout
