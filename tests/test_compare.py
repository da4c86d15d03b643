"""Comparing groups of runs from their evaluator records (synthetic records, no training)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cifar_jax import compare, experiment
from cifar_jax.core import layout, summaries
from cifar_jax.core.errors import UserError
from tests.conftest import REPO_ROOT


def _workdir(path, precisions, step=100, tta='none', extra_records=()):
  """A WORKDIR whose evaluator scored `precisions` (one per replica) at `step`."""
  os.makedirs(os.path.join(path, 'eval'), exist_ok=True)
  record = {'step': step, 'status': 'scored', 'tta': tta, 'count': 5000.0,
            'precision': float(np.mean(precisions)), 'precision_raw': float(np.mean(precisions))}
  if len(precisions) > 1:
    record.update({f'precision/replica_{r}': p for r, p in enumerate(precisions)})
  records = [{'step': step // 2, 'status': 'scored', 'tta': tta, 'precision': 0.1},
             {'step': step + 1, 'status': 'deleted'}, record, *extra_records]
  with open(os.path.join(path, 'eval', layout.METRICS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  return str(path)


A = [0.900, 0.910, 0.920, 0.905, 0.915]


def test_identical_groups_do_not_differ(tmp_path):
  result = compare.compare([_workdir(tmp_path / 'a', A), _workdir(tmp_path / 'b', A)])
  (difference,) = result.differences
  assert difference.difference == 0 and difference.p_value == pytest.approx(1.0)
  assert result.groups[0].values == tuple(A) and result.groups[0].step == 100


def test_shifted_groups_and_unequal_sizes(tmp_path):
  a = _workdir(tmp_path / 'a', A)
  shifted = _workdir(tmp_path / 'shifted', [x + 0.02 for x in A])
  three = _workdir(tmp_path / 'three', [0.90, 0.91, 0.92])
  result = compare.compare([a, shifted, three])
  to_shifted, to_three = result.differences
  assert to_shifted.difference == pytest.approx(0.02) and to_shifted.p_value < 0.01
  assert to_shifted.ci_low > 0
  assert to_three.p_value > 0.5  # the same mean: no difference to find
  rows = result.rows()
  assert [row['n'] for row in rows] == [5, 5, 3] and 'p_value' not in rows[0]
  table = compare.format_table(result)
  assert '| shifted | 100 | 5 | 0.9300 ± ' in table and '| +0.0200 (' in table


def test_a_folder_of_single_runs_is_one_group(tmp_path):
  for seed, precision in enumerate(A):
    _workdir(tmp_path / 'sweep' / f'seed{seed}', [precision])
  group = compare.read_group(str(tmp_path / 'sweep'))
  assert sorted(group.values) == sorted(A) and group.name == 'sweep'


def test_test_time_augmentations_are_chosen_not_mixed(tmp_path):
  later = {'step': 100, 'status': 'scored', 'tta': 'mirror', 'precision': 0.95,
           'precision_raw': 0.95}
  both = _workdir(tmp_path / 'both', [0.9], extra_records=[later])
  with pytest.raises(UserError, match=r"several test-time augmentations \(\['mirror', 'none'\]\); "
                                      r'choose one with --tta'):
    compare.read_group(both)
  assert compare.read_group(both, tta='mirror').values == (0.95,)
  with pytest.raises(UserError, match='no record with --tta=mirror_translate'):
    compare.read_group(both, tta='mirror_translate')


def test_a_folder_without_records_is_refused(tmp_path):
  (tmp_path / 'empty' / 'run').mkdir(parents=True)
  with pytest.raises(UserError, match='holds no evaluator records'):
    compare.read_group(str(tmp_path / 'empty'))


def test_command_line_and_notebook(tmp_path):
  a, b = _workdir(tmp_path / 'a', A), _workdir(tmp_path / 'b', [x + 0.01 for x in A])
  result = subprocess.run([sys.executable, '-m', 'cifar_jax.compare', a, b], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  last = json.loads(result.stdout.strip().splitlines()[-1])
  assert [g['group'] for g in last['groups']] == ['a', 'b']
  assert last['groups'][1]['difference'] == pytest.approx(0.01)
  table = experiment.compare(a, b)
  assert list(table.index) == ['a', 'b'] and table.loc['b', 'n'] == 5
  assert table.loc['b', 'p_value'] == pytest.approx(last['groups'][1]['p_value'])
  figure = experiment.plot_comparison(a, b)
  assert len(figure.axes[0].lines) >= 2


def test_the_pytorch_originals_seeds_are_a_group(tmp_path):
  sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
  try:
    import airbench_reference  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  seeds = [{'seed': s, 'steps': 129, 'eval': 5000, 'precision_tta0': p, 'precision_tta2': p + 0.01}
           for s, p in enumerate(A)]
  airbench_reference.write_records(str(tmp_path / 'original'), seeds)
  group = compare.read_group(str(tmp_path / 'original'), tta='mirror_translate')
  np.testing.assert_allclose(group.values, [p + 0.01 for p in A])
  assert group.step == 129 and compare.read_group(str(tmp_path / 'original'), 'none').values == (
      tuple(A))


def test_groups_at_different_steps_are_refused_unless_a_step_is_named(tmp_path):
  early = _workdir(tmp_path / 'early', A, step=150)
  late = _workdir(tmp_path / 'late', [x + 0.01 for x in A], step=300)
  with pytest.raises(UserError, match=r"different steps \(\{'early': 150, 'late': 300\}\).*"
                                      r'--step=N.*--allow_different_steps'):
    compare.compare([early, late])
  # Both were scored at step 150 (the late run's earlier record holds 0.1).
  at_150 = compare.compare([early, late], step=150)
  assert [g.step for g in at_150.groups] == [150, 150] and at_150.groups[1].values == (0.1,)
  with pytest.raises(UserError, match=r'not scored at step 200 .*\[75, 150\]'):
    compare.compare([early, late], step=200)
  as_they_are = compare.compare([early, late], allow_different_steps=True)
  table = compare.format_table(as_they_are)
  assert '| early | 150 | 5 |' in table and '| late | 300 | 5 |' in table
  assert experiment.compare(early, late, allow_different_steps=True).loc['late', 'step'] == 300


def test_runs_of_a_folder_at_different_steps_are_refused(tmp_path):
  _workdir(tmp_path / 'sweep' / 'seed0', [0.9], step=100)
  _workdir(tmp_path / 'sweep' / 'seed1', [0.91], step=200)
  with pytest.raises(UserError, match=r"different steps \(\{'seed0': 100, 'seed1': 200\}\)"):
    compare.read_group(str(tmp_path / 'sweep'))
  assert compare.read_group(str(tmp_path / 'sweep'), step=100).values == (0.9, 0.1)


def test_the_table_says_the_ci_leaves_out_the_test_sets_sampling_noise(tmp_path):
  table = compare.format_table(compare.compare([_workdir(tmp_path / 'a', A),
                                                _workdir(tmp_path / 'b', A)]))
  # 1.96 * sqrt(0.91 * 0.09 / 5000) = 0.0079
  assert 'over seeds only' in table and '±0.0079 (95%, binomial) at 0.9100 on 5,000 images' in table


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_the_command_line_takes_the_step(tmp_path):
  early = _workdir(tmp_path / 'early', A, step=150)
  late = _workdir(tmp_path / 'late', A, step=300)
  refused = subprocess.run([sys.executable, '-m', 'cifar_jax.compare', early, late],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert refused.returncode == 1 and refused.stderr.startswith('error: The groups were last')
  assert 'Traceback' not in refused.stderr
  chosen = subprocess.run([sys.executable, '-m', 'cifar_jax.compare', early, late,
                           '--step=150'], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
  assert chosen.returncode == 0, chosen.stderr[-2000:]
  assert [g['step'] for g in json.loads(chosen.stdout.splitlines()[-1])['groups']] == [150, 150]


def _with_figures(path, figures):
  """A WORKDIR whose record of step 100 also holds `figures` ({key: per-replica values})."""
  _workdir(path, A)
  file = os.path.join(path, 'eval', layout.METRICS)
  records = summaries.read_records(file)
  for key, values in figures.items():
    records[2][key] = float(np.mean(values))
    records[2].update({f'{key}/replica_{r}': v for r, v in enumerate(values)})
  with open(file, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  return str(path)


def test_any_recorded_metric_of_any_set_with_its_direction(tmp_path):
  nll_a, nll_b = [0.50, 0.52, 0.51], [0.40, 0.41, 0.42]
  a = _with_figures(tmp_path / 'a', {'nll': nll_a, 'svhn/fpr95': [0.5, 0.6, 0.55],
                                     'corrupted/precision': [0.6, 0.61, 0.62]})
  b = _with_figures(tmp_path / 'b', {'nll': nll_b, 'svhn/fpr95': [0.3, 0.35, 0.32],
                                     'corrupted/precision': [0.7, 0.71, 0.72]})
  result = compare.compare([a, b], metric='nll')
  assert result.lower_is_better and result.groups[1].values == tuple(nll_b)
  assert result.differences[0].difference == pytest.approx(np.mean(nll_b) - np.mean(nll_a))
  table = compare.format_table(result)
  assert table.startswith('nll (lower is better) of each group') and 'binomial' not in table
  assert compare.compare([a, b], metric='fpr95', eval_set='svhn').lower_is_better
  shifted = compare.compare([a, b], metric='precision', eval_set='corrupted')
  assert not shifted.lower_is_better and shifted.groups[0].values == (0.6, 0.61, 0.62)
  with pytest.raises(UserError, match=r"has no 'ece' \(it has \[.*'nll'.*\]\)"):
    compare.compare([a, b], metric='ece')
  with pytest.raises(UserError, match=r'pass --direction=higher or --direction=lower'):
    compare.compare([a, b], metric='fork_score')


def test_a_sweep_ranked_by_a_lower_is_better_metric_picks_the_lowest(tmp_path):
  points = [{'learning_rate': 0.1}, {'learning_rate': 0.2}, {'learning_rate': 0.4}]
  ece = [0.05, 0.06, 0.02, 0.03, 0.09, 0.08]  # two seeds per point; point 1 is the lowest
  path = tmp_path / 'sweep'
  _workdir(path, [0.9, 0.91, 0.92, 0.93, 0.94, 0.95])
  file = os.path.join(path, 'eval', layout.METRICS)
  records = summaries.read_records(file)
  records[2].update({'sweep_points': points, 'ece': float(np.mean(ece)),
                     **{f'ece/replica_{r}': v for r, v in enumerate(ece)}})
  with open(file, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  assert compare.compare([str(path)]).best == 2  # by precision: the highest
  by_ece = compare.compare([str(path)], metric='ece')
  assert by_ece.best == 1 and compare.runner_up(by_ece) == 0
  table = experiment.compare(str(path), metric='ece')
  assert bool(table.iloc[1]['best'])


def test_the_command_line_compares_by_metric_and_set(tmp_path):
  a = _with_figures(tmp_path / 'a', {'svhn/auroc': [0.8, 0.82, 0.81]})
  b = _with_figures(tmp_path / 'b', {'svhn/auroc': [0.9, 0.91, 0.92]})
  result = subprocess.run([sys.executable, '-m', 'cifar_jax.compare', a, b, '--metric=auroc',
                           '--set=svhn'], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  last = json.loads(result.stdout.strip().splitlines()[-1])
  assert last['metric'] == 'svhn/auroc' and last['lower_is_better'] is False
  assert last['groups'][1]['difference'] == pytest.approx(0.1)


def test_a_run_scored_again_keeps_the_figures_of_its_earlier_scoring(tmp_path):
  """A second record of the same step and TTA (other metrics) adds to the first, not hides it;
  where both hold a figure, the later wins. A missing figure names the run."""
  a = _with_figures(tmp_path / 'a', {'nll': [0.5, 0.52]})
  b = _with_figures(tmp_path / 'b', {'nll': [0.4, 0.41]})
  for run, entropy in ((a, 1.5), (b, 1.2)):
    with open(os.path.join(run, 'eval', layout.METRICS), 'a') as f:
      f.write(json.dumps({'step': 100, 'status': 'scored', 'tta': 'none', 'count': 5000.0,
                          'nll': 0.3, 'entropy': entropy}) + '\n')
  # The earlier per-replica NLL is kept: replicas' figures are read before the mean.
  assert compare.compare([a, b], metric='nll').groups[1].values == (0.4, 0.41)
  by_entropy = compare.compare([a, b], metric='entropy', direction='lower')
  assert [g.values for g in by_entropy.groups] == [(1.5,), (1.2,)]
  assert compare.compare([a, b]).groups[0].values == tuple(A)
  with pytest.raises(UserError, match=rf"^{a}: the record of step 100 has no 'ece'"):
    compare.compare([a, b], metric='ece')
