"""Every script under benchmarks/ runs: its arguments, a tiny run, and the PyTorch comparisons.

A script no test reaches breaks unseen when a signature it calls changes (the
faithfulness script did). Each script here answers --help and runs a tiny
case; the PyTorch halves (faithfulness, speed, the original's training run)
run with the interpreter CIFAR_JAX_TORCH_PYTHON names -- a side venv with
torch that .ci/run builds (torch is never a dependency of cifar_jax) -- and
skip where it is unset.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from cifar_jax import compare
from tests.conftest import REPO_ROOT

# Modules the scripts import (no command line of their own), each tested here directly.
HELPERS = ('relu_branches.py',)
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO_ROOT, 'benchmarks',
                                                                     '*.py'))
                 if os.path.basename(p) not in HELPERS)
TORCH_PYTHON = os.environ.get('CIFAR_JAX_TORCH_PYTHON', '')
needs_torch = pytest.mark.skipif(
    not TORCH_PYTHON, reason='CIFAR_JAX_TORCH_PYTHON (a Python with torch) is not set')
CHECKED_RESNETS = ('resnet18', 'preact_resnet18', 'wrn16_4')
# Scripts that import torch at the top: their --help needs the torch interpreter.
TORCH_SCRIPTS = ('pytorch_reference.py',)


def _script(name: str) -> str:
  return os.path.join(REPO_ROOT, 'benchmarks', name)


def _run(command, timeout=600, **kwargs):
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)
  assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
  return result


def test_the_scripts_are_all_known():
  assert set(SCRIPTS) == {
      'airbench_reference.py', 'bit_identity.py', 'conv_passes.py', 'faults.py', 'gpu_run.py',
      'gpu_wheelhouse.py',
      'host_placement.py', 'input_pipeline.py', 'make_image_folder.py', 'multi_device.py',
      'multiprocess_stress.py', 'pytorch_reference.py', 'resnet_reference.py', 'startup.py',
      'writer_cost.py'}, (
          'a new script needs a tiny run here (and in the list)')
  assert all(os.path.exists(_script(name)) for name in HELPERS)


@pytest.fixture
def relu_branches():
  sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
  try:
    import relu_branches  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return relu_branches


def test_relu_branches_records_and_imposes_the_kinks_side(relu_branches):
  """Recorded in one run, imposed in another: the gradient follows the imposed 0/1 pattern."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  branches = relu_branches.ReluBranches(nn, 'relu', lambda mask, x: jnp.where(mask, x, 0.0))
  weights = jnp.array([3.0, -2.0, 1.0])
  network = lambda x: jnp.sum(nn.relu(x) * weights)  # noqa: E731
  exact = jnp.array([-1e-9, 0.5, -0.5])
  rounded = jnp.array([1e-9, 0.5, -0.5])  # the first on the other side of zero
  recorded, rounded_recorded = [], []
  with branches.record(recorded):
    network(exact)
  with branches.record(rounded_recorded):
    network(rounded)
  assert nn.relu is jax.nn.relu  # restored
  truth = relu_branches.signs(recorded, np.asarray)
  np.testing.assert_array_equal(truth, [[False, True, False]])
  assert relu_branches.flips(relu_branches.signs(rounded_recorded, np.asarray), truth) == 1
  np.testing.assert_array_equal(jax.grad(network)(rounded), [3.0, -2.0, 0.0])  # its own branch
  with branches.impose(truth):  # one network call per imposition: the masks are used up
    np.testing.assert_array_equal(jax.grad(network)(rounded), [0.0, -2.0, 0.0])  # float64's
  with branches.impose(truth):
    np.testing.assert_allclose(network(rounded), -1.0)
  with pytest.raises(RuntimeError, match='not used'), branches.impose(truth + truth):
    network(rounded)
  with pytest.raises(RuntimeError, match='more ReLUs'), branches.impose([]):
    network(rounded)


@pytest.mark.parametrize('name', SCRIPTS)
def test_every_script_parses_its_arguments(name):
  python = TORCH_PYTHON if name in TORCH_SCRIPTS else sys.executable
  if not python:
    pytest.skip('imports torch at the top; CIFAR_JAX_TORCH_PYTHON is not set')
  result = _run([python, _script(name), '--help'], timeout=120)
  assert result.stdout.startswith('usage:')


@pytest.mark.slow
def test_the_tiny_runs_of_the_speed_scripts():
  """input_pipeline, multi_device, startup and writer_cost, started together (each a few
  seconds)."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'WANDB_MODE': 'offline'}
  commands = {
      'input_pipeline': [sys.executable, _script('input_pipeline.py'), '--num_examples=256',
                         '--steps=2', '--repeats=1', '--batch_size=8'],
      'multi_device': [sys.executable, _script('multi_device.py'),
                       '--configs=experiments/smoke.py', '--steps=2', '--repeats=1'],
      'startup': [sys.executable, _script('startup.py'), '--config=experiments/smoke.py',
                  '--steps=2', '--repeats=1'],
      'writer_cost': [sys.executable, _script('writer_cost.py'), '--config=experiments/smoke.py',
                      '--steps=4', '--writes=5'],
  }
  running = {name: subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, command in commands.items()}
  outputs = {}
  for name, process in running.items():
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, (name, stderr[-3000:])
    outputs[name] = stdout.strip().splitlines()
  assert outputs['input_pipeline'][-1].startswith('train_img_per_s=')
  assert any(line.startswith('smoke.py') for line in outputs['multi_device'])
  seconds = json.loads(outputs['startup'][-1])['seconds']
  assert 0 < seconds['trainer, cold']['first'] <= seconds['trainer, cold']['exit']
  assert outputs['writer_cost'][-1] == 'bit-identical: True'
  assert any(line.startswith('jsonl,tensorboard ') for line in outputs['writer_cost'])


def test_the_wheelhouse_asks_pip_for_every_wheel(tmp_path):
  """gpu_wheelhouse's pip commands, recorded by a stand-in Python (no registry needed)."""
  sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
  try:
    import gpu_wheelhouse  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  log = tmp_path / 'calls'
  python = tmp_path / 'python'
  python.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
  python.chmod(0o755)
  gpu_wheelhouse.download(str(tmp_path / 'wheels'), ['3.12', '3.13'], python=str(python))
  calls = log.read_text().splitlines()
  assert len(calls) == 1 + 2 * len(gpu_wheelhouse.COMPILED)
  assert all(call.startswith('-m pip download --no-deps --only-binary=:all:') for call in calls)
  assert all(package in calls[0].split() for package in gpu_wheelhouse.PURE)
  assert sum('--python-version 3.13' in call for call in calls) == len(gpu_wheelhouse.COMPILED)


@pytest.mark.slow
@needs_torch
def test_airbench94_is_faithful_to_the_pytorch_original():
  """The port-vs-PyTorch check of both recipes at full widths (the project's main claim)."""
  result = _run([sys.executable, _script('airbench_reference.py'),
                 f'--torch_python={TORCH_PYTHON}'])
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['agree'], result.stdout[-4000:]
  assert set(summary) == {'agree', 'airbench94', 'airbench94_muon'}


@pytest.mark.slow
@needs_torch
def test_the_resnet_families_are_faithful_to_pytorch():
  """ResNet-18, PreAct-ResNet-18, WRN-16-4 at full widths: counts, float64 forward/backward/step."""
  result = _run([sys.executable, _script('resnet_reference.py'), f'--torch_python={TORCH_PYTHON}',
                 '--batch=4'])
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['agree'], result.stdout[-4000:]
  assert set(summary) == {'agree', *CHECKED_RESNETS}
  assert summary['resnet18']['parameter_count'] == 11_173_962
  assert max(summary['wrn16_4']['float64'].values()) < 1e-10
  # float32 on float64's ReLU branches, compiled as the trainer compiles: no tensor less
  # accurate than the script's rule allows against PyTorch's float32 (it prints the rule).
  assert all(summary[n]['float32_within_noise_rule'] for n in CHECKED_RESNETS), (
      result.stdout[-4000:])
  assert 'rule: a tensor passes when' in result.stdout
  assert all(set(summary[n]['relu_flips']) == {'cifar_jax', 'pytorch_float32'}
             for n in CHECKED_RESNETS)


@pytest.mark.slow
@needs_torch
def test_the_pytorch_speed_references_run():
  from cifar_jax import benchmark  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_family_config  # pylint: disable=g-import-not-at-top
  resnet = benchmark._pytorch_command(tiny_family_config('wrn28_10'), steps=1, repeats=1)
  assert resnet[0].endswith('resnet_reference.py')
  for command in ([_script('pytorch_reference.py'), '--batch=8', '--steps=1', '--repeats=1'],
                  [_script('airbench_reference.py'), '--speed', '--recipe=airbench94',
                   '--batch=8', '--steps=1', '--repeats=1'], resnet):
    last = _run([TORCH_PYTHON, *command], timeout=300).stdout.strip().splitlines()[-1]
    assert float(dict(item.split('=') for item in last.split())['train_step_img_per_s']) > 0


@pytest.mark.slow
@needs_torch
def test_torchvision_resnet18_is_faithful_to_pytorch():
  """torchvision's ResNet-18 (the ImageNet stem) at full width, batch 16: its parameter count,
  float64 forward/backward/step, the float32 rule. (At batch 4 on 32x32 images layer4's
  BatchNorm normalises 4 values per channel, and float32's error there exceeds the rule on
  both sides' measure: docs/resnets.md.)"""
  result = _run([sys.executable, _script('resnet_reference.py'), f'--torch_python={TORCH_PYTHON}',
                 '--batch=16', '--network=torchvision_resnet18'])
  summary = json.loads(result.stdout.strip().splitlines()[-1])['torchvision_resnet18']
  assert summary['parameter_count'] == 11_181_642
  assert max(summary['float64'].values()) < 1e-10
  assert summary['float32_within_noise_rule'], result.stdout[-4000:]


@pytest.mark.slow
@needs_torch
def test_the_originals_training_run_is_a_group_compare_reads(tmp_path):
  out = tmp_path / 'original'
  _run([sys.executable, _script('airbench_reference.py'), '--train', '--seeds=2',
        '--train_epochs=1', '--widths=8,16,16', '--batch=256',
        '--config=experiments/airbench94_smoke.py', f'--out={out}',
        f'--torch_python={TORCH_PYTHON}'])
  group = compare.read_group(str(out), tta='none')
  assert len(group.values) == 2 and all(0 <= v <= 1 for v in group.values)
  assert group.step == 4096 // 256 and group.count == 1000


@pytest.mark.slow
def test_host_placement_trains_from_a_memory_mapped_split(tmp_path):
  result = _run([sys.executable, _script('host_placement.py'), '--gib=0.002',
                 '--image_size=16', '--steps=4', '--batch=8', '--steps_per_call=2',
                 f'--dir={tmp_path}'])
  figures = dict(item.split('=') for item in result.stdout.strip().splitlines()[-1].split())
  assert float(figures['split_mib']) > 1.9 and float(figures['img_per_s']) > 0
  assert 'trained 4 steps of 8 from the cache file' in result.stdout


def test_make_image_folder_writes_a_folder_the_recipe_loads(tmp_path):
  _run([sys.executable, _script('make_image_folder.py'), f'--out={tmp_path}', '--per_class=3',
        '--min_size=20', '--max_size=30', '--grey'])
  from cifar_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from experiments import image_folder  # pylint: disable=g-import-not-at-top
  config = image_folder.get_config()
  config.dataset.path = str(tmp_path)
  config.dataset.cache_dir = ''
  config.dataset.image_size = 24  # mixed sizes: one size when loaded
  split = datasets.load_split(config.dataset, 'train')
  assert split.images.shape == (15, 24, 24, 1) and split.num_classes == 5


@pytest.mark.slow
def test_the_convolution_passes_are_timed_in_each_variant():
  # (the first five: stride 1 and 2, 3x3 and the 1x1 shortcut, for every alternative)
  command = [sys.executable, _script('conv_passes.py'), '--batch=2', '--repeats=1', '--limit=5',
             '--variants=xla,xla_reference,taps,alternatives,fast,phases,subsample',
             *([f'--torch_python={TORCH_PYTHON}'] if TORCH_PYTHON else [])]
  totals = json.loads(_run(command).stdout.strip().splitlines()[-1])
  assert set(totals) == {'xla', 'xla_reference', 'taps', 'alternatives', 'fast', 'phases',
                         'subsample', *(['pytorch'] if TORCH_PYTHON else [])}
  assert all(ms > 0 for passes in totals.values() for ms in passes.values())
  # WRN-16-8's strided convolutions: the 3x3/2 and 1x1/2 of its second group.
  output = _run([sys.executable, _script('conv_passes.py'), '--batch=2', '--repeats=1',
                 '--network=wrn16_8', '--strided_only', '--limit=2', '--variants=xla,fast']).stdout
  assert 'WRN-16-8' in output and '| group2 shortcut 1x1/2 | 1 | weight_grad |' in output
  assert 'group1' not in output
  # The whole network's gradient in each variant (how `convolutions.MEASURED` is decided).
  last = _run([sys.executable, _script('conv_passes.py'), '--batch=2', '--repeats=1',
               '--whole_gradient', '--variants=xla,fast,phases+subsample']).stdout
  assert set(json.loads(last.strip().splitlines()[-1])) == {'xla', 'fast', 'phases+subsample'}


@pytest.mark.slow
def test_the_fingerprints_of_a_few_steps_repeat_bit_for_bit():
  command = [sys.executable, _script('bit_identity.py'), '--steps=2',
             '--cases=tutorial,tutorial lr sweep']
  # (the trainer's log lines, which start with the date, are not the table's)
  first, second = ([line for line in _run(command).stdout.splitlines()
                    if not line[:4].isdigit()] for _ in range(2))
  assert [line.split()[0] for line in first] == ['case', 'tutorial', 'tutorial']
  assert all(len(line.split()[-1]) == 16 for line in first[1:])
  assert first == second
