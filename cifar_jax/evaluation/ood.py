"""Out-of-distribution detection by the maximum softmax probability (Hendrycks and Gimpel, 2017).

An example's score is its largest softmax probability; in-distribution examples
(the run's evaluation split) are the positives, those of an out-of-distribution
set (`config.eval.sets`, `ood=True`) the negatives. Reported:

* AUROC: the probability that a random in-distribution example scores higher
  than a random out-of-distribution one (ties count one half) -- the
  Mann-Whitney U statistic over n_in * n_out; 0.5 is chance, 1 perfect.
* FPR95: the fraction of out-of-distribution examples accepted at the
  threshold that accepts 95% of the in-distribution ones (lower is better).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
  """Area under the ROC curve of in- (positive) against out-of-distribution scores."""
  in_scores, out_scores = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
  ranks = stats.rankdata(np.concatenate([in_scores, out_scores]))  # ties: average ranks
  n_in, n_out = len(in_scores), len(out_scores)
  u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2
  return float(u / (n_in * n_out))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
  """Fraction of `out_scores` >= the largest threshold that keeps `tpr` of `in_scores`."""
  ordered = np.sort(np.asarray(in_scores, np.float64))[::-1]
  threshold = ordered[max(math.ceil(tpr * len(ordered)) - 1, 0)]
  return float(np.mean(np.asarray(out_scores, np.float64) >= threshold))


def maximum_softmax_probability(probabilities: np.ndarray) -> np.ndarray:
  """[..., N] confidence of each example of [..., N, classes] probabilities."""
  return np.asarray(probabilities).max(axis=-1)
