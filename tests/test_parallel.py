"""Data parallelism: any number of local devices, and several processes, give one result."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from cifar_jax import parallel, train
from cifar_jax.errors import UserError
from tests.conftest import REPO_ROOT, restore_latest, run_steps, tiny_config

GLOBAL_BATCH = 16


def _assert_close(a, b, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=0), a, b)


@pytest.fixture(scope='module')
def one_device_run():
  state, _ = run_steps(tiny_config(num_devices=1, per_device_batch_size=GLOBAL_BATCH), 6)
  return state


@pytest.mark.parametrize('num_devices', [2, 4, 8])
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
    parallel.select_devices(0)


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


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  """6 steps by two OS processes with 2 CPU devices each (gloo collectives)."""
  workdir = str(tmp_path_factory.mktemp('two_processes'))
  port = _free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
       f'--config.per_device_batch_size={GLOBAL_BATCH // 4}', '--config.num_train_steps=6',
       '--config.checkpoint_every_steps=3', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, err) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, err[-3000:]
  return workdir, outputs


def test_two_processes_equal_one_process_with_four_devices(two_process_run):
  workdir, outputs = two_process_run
  multi_process = restore_latest(workdir)
  assert int(multi_process.step) == 6
  four_devices, _ = run_steps(tiny_config(num_devices=4, per_device_batch_size=GLOBAL_BATCH // 4),
                              6)
  _assert_close(multi_process.params, four_devices.params)
  _assert_close(multi_process.ema_params, four_devices.ema_params)
  # Only process 0 logs.
  assert 'step 6, loss = ' in outputs[0][0] and 'step 6, loss = ' not in outputs[1][0]


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
  workdir, _ = two_process_run
  resumed_dir = str(tmp_path / 'resumed')
  os.system(f'cp -r {workdir} {resumed_dir}')
  config = tiny_config(num_devices=1, per_device_batch_size=GLOBAL_BATCH, num_train_steps=12)
  resumed = train.train_and_evaluate(config, resumed_dir, evaluate_in_process=False)
  straight, _ = run_steps(tiny_config(num_devices=4, per_device_batch_size=GLOBAL_BATCH // 4), 12)
  assert int(resumed.step) == 12
  _assert_close(resumed.params, straight.params)


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
