"""benchmarks/gpu_run.py end to end on the CPU, with tiny networks and a tiny image folder."""

import os
import sys

import numpy as np
from PIL import Image
import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import gpu_run  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope='module')
def cifar_like_folder(tmp_path_factory, per_class=12):
  root = tmp_path_factory.mktemp('data') / 'cifar10_jpeg'
  rng = np.random.default_rng(0)
  for label in range(10):
    folder = root / 'train' / f'class_{label}'
    folder.mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
          folder / f'{i:04d}.jpg', quality=90)
  return root


def _run(folder, tmp_path, budget, *flags):
  return gpu_run.main([f'--data={folder}', '--train_split=train[:8]', '--eval_split=train[8:]',
                       '--tiny', f'--budget_secs={budget}', f'--out={tmp_path / "out"}',
                       '--tutorial_target=0', *flags])


@pytest.mark.slow
def test_every_part_runs_within_its_budget(cifar_like_folder, tmp_path, capsys, monkeypatch):
  monkeypatch.delenv('XLA_FLAGS')  # one CPU device in the processes it starts
  torch_python = os.environ.get('CIFAR_JAX_TORCH_PYTHON')  # a side venv with torch, if any
  result = _run(cifar_like_folder, tmp_path, 300,
                *([f'--torch_python={torch_python}'] if torch_python else []))
  assert result['elapsed_secs'] <= 300
  parts = {report['name']: report for report in result['parts']}
  assert list(parts) == ['environment', 'airbench94', 'original', 'benchmark', 'tutorial',
                         'replicas', 'resnet18', 'sweep']  # no --wheelhouse: nothing to install
  for name in ('environment', 'airbench94', 'benchmark', 'tutorial', 'replicas', 'resnet18',
               'sweep'):
    assert parts[name]['status'] == 'done', parts[name]
  assert parts['environment']['jax'] and parts['environment']['devices'] == '1 x cpu (cpu)'
  assert 0 <= parts['airbench94']['precision'] <= 1
  assert parts['airbench94']['tta'] == 'mirror_translate'
  if torch_python:
    assert parts['original']['status'] == 'done' and not parts['original']['half_precision']
  else:
    assert parts['original']['status'].startswith('skipped: no PyTorch in ')
  assert [row['setting'] for row in parts['benchmark']['rows']] == [  # --tiny: the last row
      'airbench94, bfloat16, steps_per_call 16']
  assert all(row['train_step_img_per_s'] > 0 for row in parts['benchmark']['rows'])
  assert parts['tutorial']['reached'] and parts['tutorial']['best_step'] == 10  # target 0
  assert [row['setting'] for row in parts['replicas']['rows']] == [
      'airbench94, 2 replicas, vmap']  # --tiny: 2 replicas, the last row
  assert all(row['run_s'] > 0 for row in parts['replicas']['rows'])
  assert parts['resnet18']['steps'] == 2 and 0 <= parts['resnet18']['precision'] <= 1
  assert [row['setting'] for row in parts['sweep']['rows']] == [
      'airbench94, sweep of 2 learning rates, vmap']  # --tiny: 2 points, the last row
  assert parts['sweep']['rows'][0]['num_replicas'] == 2  # the runs: 2 points x 1 seed
  output = capsys.readouterr().out
  assert '| 4 | airbench94, bfloat16, steps_per_call 16 |' in output
  assert output.splitlines()[-1].startswith('{"device": "1 x cpu (cpu)"')
  assert os.path.exists(tmp_path / 'out' / 'logs' / 'airbench94.log')


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_small_budget_stops_parts_instead_of_overrunning(cifar_like_folder, tmp_path,
                                                           monkeypatch):
  monkeypatch.delenv('XLA_FLAGS')
  result = _run(cifar_like_folder, tmp_path, 12, '--parts=12456')
  assert result['elapsed_secs'] <= 13  # far more work than 12 s: the parts were cut, not it
  statuses = {report['name']: report['status'] for report in result['parts']}
  assert statuses['environment'] == 'done'
  cut = [name for name, status in statuses.items()
         if status in ('stopped: budget', 'not run: budget')]
  assert 'replicas' in cut, statuses  # the last part cannot have had its time
