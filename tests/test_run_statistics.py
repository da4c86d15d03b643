"""Statistics of groups of runs, against values worked by hand."""

import math

import pytest

from cifar_jax.evaluation import run_statistics


def test_summary_by_hand():
  summary = run_statistics.Summary.of([0.90, 0.91, 0.92])
  assert summary.n == 3 and summary.mean == pytest.approx(0.91)
  assert summary.std == pytest.approx(0.01)  # sqrt((0.01^2 + 0 + 0.01^2) / 2)
  assert (summary.min, summary.max) == (0.90, 0.92)
  # t(0.975, 2 dof) = 4.3027 (any t table): 4.3027 * 0.01 / sqrt(3).
  assert summary.ci95 == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
  assert summary.text() == '0.9100 ± 0.0248 (n=3, 95% CI)'


def test_one_run_has_no_spread():
  summary = run_statistics.Summary.of([0.9])
  assert summary.n == 1 and math.isnan(summary.std) and math.isnan(summary.ci95)
  assert summary.text() == '0.9000 (n=1)'


def test_welch_by_hand():
  # a: mean 3, variance 2.5; b: mean 6, variance 10. se^2 = 2.5/5 + 10/5 = 2.5, t = 3/sqrt(2.5)
  # = 1.8974; dof = 2.5^2 / (0.5^2/4 + 2^2/4) = 5.8824; two-sided p = 0.10753 (as
  # scipy.stats.ttest_ind(equal_var=False) and R's t.test give).
  result = run_statistics.welch([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
  assert result.difference == pytest.approx(3.0)
  assert result.dof == pytest.approx(5.882353, rel=1e-6)
  assert result.p_value == pytest.approx(0.107531, rel=1e-4)
  # 95% CI: 3 -+ t(0.975, 5.8824) * sqrt(2.5) = 3 -+ 2.458824 * 1.581139.
  assert result.ci_low == pytest.approx(3 - 2.458824 * 1.581139, rel=1e-5)
  assert result.ci_high == pytest.approx(3 + 2.458824 * 1.581139, rel=1e-5)


def test_welch_identical_shifted_and_unequal_groups():
  runs = [0.900, 0.910, 0.920, 0.905]
  assert run_statistics.welch(runs, runs).p_value == pytest.approx(1.0)
  shifted = run_statistics.welch(runs, [x + 0.05 for x in runs])
  assert shifted.p_value < 1e-3 and shifted.ci_low > 0
  # Unequal n (3 and 6): t = 3.6742, dof = 5.7143, p = 0.011343.
  unequal = run_statistics.welch([0.90, 0.91, 0.92], [0.93, 0.95, 0.94, 0.96, 0.92, 0.94])
  assert unequal.dof == pytest.approx(5.714286, rel=1e-5)
  assert unequal.p_value == pytest.approx(0.011343, rel=1e-3)
  assert run_statistics.welch([0.9, 0.9], [0.9, 0.9]).p_value == 1.0  # no spread, same mean
  with pytest.raises(ValueError, match='two runs'):
    run_statistics.welch([0.9], [0.9, 0.91])
