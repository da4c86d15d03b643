"""Data parallelism: any number of local devices, and several processes, give one result."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cifar_jax.config import validation
from cifar_jax.core import parallel
from cifar_jax.core.errors import UserError
from cifar_jax.run import train
from tests.conftest import REPO_ROOT, restore_latest, run_steps, tiny_airbench_config, tiny_config

GLOBAL_BATCH = 16


def _assert_close(a, b, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=0), a, b)


@pytest.fixture(scope='module')
def one_device_run():
  state, _ = run_steps(tiny_config(num_devices=1, per_device_batch_size=GLOBAL_BATCH), 6)
  return state


@pytest.mark.parametrize('num_devices', [2, pytest.param(4, marks=pytest.mark.slow),
                                         pytest.param(8, marks=pytest.mark.slow)])
def test_local_devices_give_the_same_parameters(one_device_run, num_devices):
  assert len(jax.local_devices()) >= 8
  state, _ = run_steps(tiny_config(num_devices=num_devices,
                                   per_device_batch_size=GLOBAL_BATCH // num_devices), 6)
  _assert_close(state.params, one_device_run.params)
  _assert_close(state.ema_params, one_device_run.ema_params)
  assert int(state.step) == 6


def test_more_devices_than_exist_uses_all_with_a_warning(caplog):
  assert len(parallel.select_devices(64)) == len(jax.local_devices())
  assert 'only' in caplog.text
  with pytest.raises(UserError, match='num_devices'):
    validation.validate(tiny_config(num_devices=0))


def test_single_process_needs_no_distributed_setup():
  parallel.initialize_distributed()  # a no-op: nothing to join
  with pytest.raises(UserError, match='--process_id'):
    parallel.initialize_distributed('127.0.0.1:1234', 2, None)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


TINY_FLAGS = [
    '--config=experiments/smoke.py', '--config.dataset.cache_dir=',
    '--config.dataset.synthetic_train_size=512', '--config.dataset.synthetic_test_size=200',
    '--config.model.conv_features=8', '--config.model.local3_features=16',
    '--config.model.local4_features=8', '--config.log_every_steps=3',
    '--config.histogram_every_steps=1000', '--config.eval.batch_size=64',
]


def _start_processes(workdir, *flags, num_train_steps):
  """docs/multi_host.md's two-process command: 2 processes x 2 fake CPU devices, gloo."""
  port = _free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  return [subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
       f'--config.per_device_batch_size={GLOBAL_BATCH // 4}',
       f'--config.num_train_steps={num_train_steps}', *flags,
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _kill(processes):
  for p in processes:
    if p.poll() is None:
      p.kill()
    p.communicate()


def _outputs(processes, timeout):
  """(stdout, stderr) of each process; a hang fails the test (and the processes are killed)."""
  try:
    return [p.communicate(timeout=timeout) for p in processes]
  except subprocess.TimeoutExpired:
    pytest.fail(f'a multi-process run did not finish within {timeout} s (hung)')
  finally:
    _kill(processes)


# 119 steps without a sync (log, checkpoint) are far past XLA's 32 queued
# computations per device: without parallel.MAX_CALLS_IN_FLIGHT this
# deadlocked in every run (3 of 3; benchmarks/multiprocess_stress.py).
TWO_PROCESS_STEPS = 130


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  """130 steps by two OS processes with 2 CPU devices each (gloo collectives)."""
  workdir = str(tmp_path_factory.mktemp('two_processes'))
  processes = _start_processes(workdir, '--config.log_every_steps=120',
                               '--config.checkpoint_every_steps=120',
                               num_train_steps=TWO_PROCESS_STEPS)
  outputs = _outputs(processes, timeout=180)
  for process, (_, err) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, err[-3000:]
  return workdir, outputs


@pytest.mark.slow
def test_two_processes_equal_one_process_with_four_devices(two_process_run):
  workdir, outputs = two_process_run
  multi_process = restore_latest(workdir)
  assert int(multi_process.step) == TWO_PROCESS_STEPS
  four_devices, _ = run_steps(tiny_config(num_devices=4, per_device_batch_size=GLOBAL_BATCH // 4),
                              TWO_PROCESS_STEPS)
  # gloo sums across processes in another order than one process does: after
  # 130 steps the parameters differ by float rounding (~1e-5), not more.
  _assert_close(multi_process.params, four_devices.params, atol=1e-4)
  _assert_close(multi_process.ema_params, four_devices.ema_params, atol=1e-4)
  # Only process 0 logs.
  assert 'step 120, loss = ' in outputs[0][0] and 'step 120, loss = ' not in outputs[1][0]


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
  workdir, _ = two_process_run
  resumed_dir = str(tmp_path / 'resumed')
  os.system(f'cp -r {workdir} {resumed_dir}')
  config = tiny_config(num_devices=1, per_device_batch_size=GLOBAL_BATCH,
                       num_train_steps=TWO_PROCESS_STEPS + 6)
  resumed = train.train_and_evaluate(config, resumed_dir, evaluate_in_process=False)
  straight, _ = run_steps(tiny_config(num_devices=4, per_device_batch_size=GLOBAL_BATCH // 4),
                          TWO_PROCESS_STEPS + 6)
  assert int(resumed.step) == TWO_PROCESS_STEPS + 6
  _assert_close(resumed.params, straight.params, atol=1e-4)


def test_cpu_compiler_options_and_the_users_own_flag_wins(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  assert parallel.compiler_options('cpu') == parallel.CPU_COMPILER_OPTIONS
  assert parallel.compiler_options('gpu') == {}
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=individual_dot')
  assert parallel.compiler_options('cpu') == {}


def test_pmap_with_compiler_options_recompiles_per_shape():
  devices = parallel.select_devices(2, 'cpu')
  double = parallel.pmap(lambda x: 2 * x, devices)
  for shape in [(2, 3), (2, 5), (2, 3)]:
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(double(x), 2 * x)


def _wait_for_line(process, text, timeout):
  """Reads `process`'s stdout until a line contains `text`; returns what was read."""
  read = []
  deadline = time.time() + timeout
  while time.time() < deadline:
    line = process.stdout.readline()
    if not line:
      break
    read.append(line)
    if text in line:
      return ''.join(read)
  pytest.fail(f'{text!r} did not appear within {timeout} s: {"".join(read)[-2000:]}')


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_the_same_saved_step(tmp_path):
  workdir = str(tmp_path / 'run')
  processes = _start_processes(workdir, '--config.log_every_steps=20',
                               '--config.checkpoint_every_steps=1000', num_train_steps=100_000)
  try:
    _wait_for_line(processes[0], 'step 40, loss', timeout=180)
  except BaseException:
    _kill(processes)
    raise
  processes[1].send_signal(signal.SIGTERM)  # JAX's preemption service tells process 0
  outputs = _outputs(processes, timeout=120)
  assert [p.returncode for p in processes] == [143, 143], outputs[0][1][-2000:]
  stopped = re.search(r'preempted at step (\d+); checkpoint saved in (\S+)', outputs[0][0])
  assert stopped, outputs[0][0][-2000:]
  step = int(stopped.group(1))
  assert stopped.group(2) == os.path.join(workdir, 'checkpoints', str(step))
  assert int(restore_latest(workdir).step) == step > 40


@pytest.mark.slow
def test_a_peer_that_stops_answering_ends_the_run_with_one_error_line(tmp_path):
  workdir = str(tmp_path / 'run')
  processes = _start_processes(workdir, '--config.log_every_steps=20',
                               '--config.checkpoint_every_steps=20',
                               '--config.collective_timeout_secs=10', num_train_steps=100_000)
  try:
    _wait_for_line(processes[0], 'step 40, loss', timeout=180)
    processes[1].send_signal(signal.SIGSTOP)  # alive, but never answers again
    started = time.time()
    _, err = processes[0].communicate(timeout=60)
    waited = time.time() - started
  finally:
    _kill(processes)
  assert processes[0].returncode == 1
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in err, err[-2000:]
  idle = re.match(r'error: process 0 of 2 made no progress for (\d+) s after step \d+ ', errors[0])
  assert idle and int(idle.group(1)) >= 10, errors[0]
  assert waited < 40  # counted from the last step before the stop, so it can be under 10 s
  # What was saved before is intact and is what a restart resumes from.
  assert int(restore_latest(workdir).step) % 20 == 0


def test_mapped_calls_wait_for_the_oldest_beyond_the_limit():
  devices = parallel.select_devices(2, 'cpu')
  step = parallel.pmap(lambda x: (x + 1, jax.lax.psum(x, parallel.AXIS_NAME)), devices,
                       donate_argnums=(0,))
  x = np.zeros((2, 3), np.float32)
  for _ in range(3 * parallel.MAX_CALLS_IN_FLIGHT):
    x, total = step(x)  # x is donated to the next call: its wait uses `total`
    assert len(step._in_flight) <= parallel.MAX_CALLS_IN_FLIGHT
  np.testing.assert_array_equal(x, np.full((2, 3), 3 * parallel.MAX_CALLS_IN_FLIGHT))
  np.testing.assert_array_equal(total, np.full((2, 3), 2 * (3 * parallel.MAX_CALLS_IN_FLIGHT - 1)))


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_airbench_on_four_devices_equals_one_device():
  """BatchNorm statistics and the summed loss are those of the global batch on any layout."""
  one, one_losses = run_steps(tiny_airbench_config(num_devices=1,
                                                   per_device_batch_size=GLOBAL_BATCH), 6)
  four, four_losses = run_steps(tiny_airbench_config(num_devices=4,
                                                     per_device_batch_size=GLOBAL_BATCH // 4), 6)
  np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5)
  _assert_close(four.params, one.params, atol=2e-5)
  _assert_close(four.batch_stats, one.batch_stats, atol=2e-5)
  _assert_close(four.lookahead, one.lookahead, atol=2e-5)
