"""benchmarks/gpu_run.py end to end on the CPU, with tiny networks and a tiny image folder."""

import os
import sys

import numpy as np
from PIL import Image

from tests.conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import gpu_run  # noqa: E402  pylint: disable=g-import-not-at-top


def _cifar_like_folder(root, per_class=12):
  rng = np.random.default_rng(0)
  for label in range(10):
    folder = root / 'train' / f'class_{label}'
    folder.mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
          folder / f'{i:04d}.jpg', quality=90)
  return root


def test_every_part_runs_and_reports_one_table(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv('XLA_FLAGS')  # one CPU device in the processes it starts
  data = _cifar_like_folder(tmp_path / 'cifar10_jpeg')
  report = gpu_run.main([
      f'--data={data}', '--train_split=train[:8]', '--eval_split=train[8:]', '--tiny',
      '--benchmark_steps=2', '--benchmark_repeats=1', '--tutorial_steps=20',
      '--tutorial_steps_per_call=4', '--tutorial_checkpoint_every=10', '--tutorial_target=0',
      '--airbench_steps=3', f'--workdir={tmp_path / "work"}'])
  rows = report['rows']
  assert [row['part'] for row in rows] == ['a'] * 4 + ['b', 'c', 'd']
  assert [row['setting'] for row in rows[:4]] == [
      f'tutorial net, {dtype}, steps_per_call {k}'
      for dtype in ('float32', 'bfloat16') for k in (1, 16)]
  assert all(row['train_step_img_per_s'] > 0 for row in rows[:4])
  tutorial = rows[4]
  assert tutorial['step_at_target'] == 10  # the first score (target 0)
  assert 0 < tutorial['seconds_to_target'] <= tutorial['train_seconds'] + 60
  assert 0 <= rows[5]['final_precision'] <= 1 and rows[5]['reached'] is False
  assert rows[6]['skipped'] == '1 device'
  output = capsys.readouterr().out
  assert '| a | tutorial net, bfloat16, steps_per_call 16 |' in output
  assert output.splitlines()[-1].startswith('{"device": "1 x cpu (cpu)"')
