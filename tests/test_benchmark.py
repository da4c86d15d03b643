"""The benchmark command: it runs end to end on a tiny config and reports sane figures."""

import math
import subprocess
import sys

import pytest

from cifar_jax import benchmark
from cifar_jax.core.errors import UserError
from tests.conftest import REPO_ROOT, tiny_airbench_config, tiny_config


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_run_reports_every_figure_and_a_parseable_last_line():
  figures = benchmark.run(tiny_config(), steps=2, repeats=2, warmup_steps=1, synthetic=True,
                          synthetic_train_size=64, synthetic_eval_size=40, matmul_size=128,
                          breakdown=True)
  for rate in (figures['train_step'], figures['end_to_end'], figures['eval'],
               *figures['parts'].values()):
    assert 0 < rate['min'] <= rate['median'] <= rate['max'] < math.inf
  assert set(figures['parts']) == {'forward', 'gradient'}
  assert figures['global_batch'] == 8
  assert figures['compile_s'] > 0 and figures['matmul_gflops'] > 0
  assert figures['gflop_per_example'] > 0 and figures['peak_host_mib'] > 0
  line = benchmark.machine_line(figures, {'train_step_img_per_s': 1.0})
  values = dict(item.split('=') for item in line.split())
  assert float(values['train_step_img_per_s']) == pytest.approx(figures['train_step']['median'],
                                                                 abs=0.1)
  assert set(values) >= {'end_to_end_img_per_s', 'eval_img_per_s', 'compile_s', 'matmul_gflops',
                         'pytorch_train_step_img_per_s', 'forward_img_per_s',
                         'gradient_img_per_s'}
  table = benchmark.format_figures(figures)
  assert 'train step' in table and '% of a train step' in table
  assert 'loss gradient alone' in table


@pytest.mark.slow
def test_airbench_configs_are_measured_and_matched_with_their_pytorch_recipe():
  figures = benchmark.run(tiny_airbench_config(), steps=1, repeats=1, warmup_steps=1,
                          synthetic=True, synthetic_train_size=64, synthetic_eval_size=40,
                          matmul_size=128)
  assert figures['gflop_per_example'] > 0 and figures['eval']['median'] > 0
  command = benchmark._pytorch_command(tiny_airbench_config(muon=True), 3, 2)
  assert command[0].endswith('airbench_reference.py')
  assert '--recipe=airbench94_muon' in command and '--batch=8' in command
  assert '--recipe=airbench94' in benchmark._pytorch_command(tiny_airbench_config(), 3, 2)
  assert benchmark._pytorch_command(tiny_config(), 3, 2)[0].endswith('pytorch_reference.py')


def test_bad_arguments_are_user_errors():
  with pytest.raises(UserError, match='at least 1'):
    benchmark.run(tiny_config(), steps=0, synthetic=True)


@pytest.mark.slow
def test_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'cifar_jax.benchmark', '--config=experiments/smoke.py',
       '--config.model.conv_features=8', '--config.model.local3_features=16',
       '--config.model.local4_features=8', '--config.per_device_batch_size=8',
       '--config.dataset.cache_dir=', '--synthetic', '--synthetic_train_size=64',
       '--synthetic_eval_size=40', '--steps=2', '--repeats=1', '--warmup_steps=1',
       '--matmul_size=128'],
      cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1].startswith('train_step_img_per_s=')


@pytest.mark.slow
def test_replicas_are_counted_in_every_figure():
  one = benchmark.run(tiny_config(), steps=2, repeats=1, warmup_steps=1, synthetic=True,
                      synthetic_train_size=64, synthetic_eval_size=40, matmul_size=128)
  three = benchmark.run(tiny_config(num_replicas=3), steps=2, repeats=1, warmup_steps=1,
                        synthetic=True, synthetic_train_size=64, synthetic_eval_size=40,
                        matmul_size=128)
  assert (one['num_replicas'], three['num_replicas']) == (1, 3)
  # Images of all runs per second; a run's share of the time of num_train_steps steps.
  for figures in (one, three):  # one window: rate = R * 8 images / seconds per step
    seconds_per_step = figures['num_replicas'] * 8 / figures['end_to_end']['median']
    assert figures['run_s'] == pytest.approx(20 * seconds_per_step / figures['num_replicas'])
  assert '3 runs at once (loop; images/s summed over them)' in benchmark.format_figures(three)
  assert 'num_replicas=3.0' in benchmark.machine_line(three, None)
