"""What many runs of one recipe say: mean, spread, confidence interval of the mean, Welch's test.

One run's precision@1 is one sample of a noisy number (airbench94's seed-to-seed
spread is 0.1-0.2 points). `Summary.of(values)` describes the runs of one
group; `welch(a, b)` says whether group b's mean differs from group a's: the
difference of the means, its 95% confidence interval and the two-sided
p-value of Welch's t-test (no equal-variance assumption; the degrees of
freedom by the Welch-Satterthwaite equation). The t quantiles and tail
probabilities are scipy's (`scipy.stats.t`, a dependency of JAX);
`tests/test_run_statistics.py` checks every figure against values worked by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

import numpy as np

CONFIDENCE = 0.95


def _t_distribution():
  """scipy.stats.t, imported when first needed: scipy.stats costs every process ~1 s to import."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return stats.t


@dataclasses.dataclass(frozen=True)
class Summary:
  """n, mean, sample standard deviation, min, max and the half-width of the mean's 95% CI."""

  n: int
  mean: float
  std: float  # sample standard deviation (n - 1); nan for one run
  min: float
  max: float
  ci95: float  # the mean's CI is mean +- ci95 (t distribution, n - 1 dof); nan for one run

  @classmethod
  def of(cls, values: Sequence[float]) -> Summary:
    values = np.asarray(values, np.float64)
    n = len(values)
    std = float(np.std(values, ddof=1)) if n > 1 else math.nan
    half_width = (float(_t_distribution().ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
                  if n > 1 else math.nan)
    return cls(n=n, mean=float(np.mean(values)), std=std, min=float(np.min(values)),
               max=float(np.max(values)), ci95=half_width)

  def text(self, digits: int = 4) -> str:
    """'0.9402 ± 0.0011 (n=8, 95% CI)', or '0.9402 (n=1)' for one run."""
    if self.n < 2:
      return f'{self.mean:.{digits}f} (n={self.n})'
    return f'{self.mean:.{digits}f} ± {self.ci95:.{digits}f} (n={self.n}, 95% CI)'


@dataclasses.dataclass(frozen=True)
class Difference:
  """mean(b) - mean(a), its 95% confidence interval and Welch's two-sided p-value."""

  difference: float
  ci_low: float
  ci_high: float
  p_value: float
  dof: float


def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
  """Welch's t-test of mean(b) - mean(a); needs two runs or more in each group.

  Two groups of constant values (no spread at all) differ with p = 0 unless
  their means are equal (p = 1).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    raise ValueError('Welch\'s test needs at least two runs in each group.')
  difference = float(np.mean(b) - np.mean(a))
  var_a, var_b = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  standard_error = math.sqrt(var_a + var_b)
  if standard_error == 0:
    p_value = 1.0 if difference == 0 else 0.0
    return Difference(difference, difference, difference, p_value, math.inf)
  dof = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
  t = difference / standard_error
  p_value = float(2 * _t_distribution().sf(abs(t), dof))
  half_width = float(_t_distribution().ppf(0.5 + CONFIDENCE / 2, dof)) * standard_error
  return Difference(difference, difference - half_width, difference + half_width, p_value,
                    float(dof))
