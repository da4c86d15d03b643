"""Calibration of the top-label confidence: bins, expected calibration error, reliability diagram.

The common definition (Guo et al., 2017, "On Calibration of Modern Neural
Networks"; Naeini et al., 2015): the confidence of an example is its largest
softmax probability; examples fall into B equal-width bins of confidence,
((b - 1) / B, b / B]; the expected calibration error is

  ECE = sum over bins of (examples in the bin / all examples)
        * |accuracy in the bin - mean confidence in the bin|,

0 for a perfectly calibrated classifier. B is `config.eval.calibration_bins`
(15, as uncertainty-baselines and most papers use). ECE depends on B, so
figures with different bins are not comparable.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bins:
  """Per bin of confidence: how many examples, their mean confidence and their accuracy."""

  counts: np.ndarray  # [B] int
  confidence: np.ndarray  # [B] mean confidence (0 where empty)
  accuracy: np.ndarray  # [B] fraction correct (0 where empty)

  @property
  def num_bins(self) -> int:
    return len(self.counts)


def bin_confidences(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> Bins:
  """The examples of `probabilities` [N, classes] with `labels` [N] in `num_bins` bins."""
  probabilities = np.asarray(probabilities, np.float64)
  confidence = probabilities.max(axis=-1)
  correct = (probabilities.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
  # Bin b holds ((b) / B, (b + 1) / B]; a confidence of exactly 0 (impossible for a softmax)
  # would go to bin 0.
  index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  counts = np.bincount(index, minlength=num_bins)
  safe = np.maximum(counts, 1)
  return Bins(counts=counts,
              confidence=np.bincount(index, confidence, num_bins) / safe,
              accuracy=np.bincount(index, correct, num_bins) / safe)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               num_bins: int = 15) -> float:
  """ECE of the top-label confidence over `num_bins` equal-width bins (module docstring)."""
  bins = bin_confidences(probabilities, labels, num_bins)
  weights = bins.counts / max(bins.counts.sum(), 1)
  return float(np.sum(weights * np.abs(bins.accuracy - bins.confidence)))


def reliability_diagram(bins: Bins, size: int = 240) -> np.ndarray:
  """Accuracy per confidence bin as bars against the diagonal, [H, W, 3] in [0, 1].

  Blue bars: the accuracy of each bin; red: the gap to the bin's mean
  confidence; grey line: perfect calibration; empty bins are left blank.
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  margin = 24
  plot = size - 2 * margin
  image = Image.new('RGB', (size, size), 'white')
  draw = ImageDraw.Draw(image)
  y_of = lambda value: margin + plot * (1 - value)  # noqa: E731
  width = plot / bins.num_bins
  for b in range(bins.num_bins):
    if not bins.counts[b]:
      continue
    left, right = margin + b * width, margin + (b + 1) * width - 1
    draw.rectangle((left, y_of(bins.accuracy[b]), right, y_of(0)), fill=(70, 110, 200))
    low, high = sorted((bins.accuracy[b], bins.confidence[b]))
    draw.rectangle((left, y_of(high), right, y_of(low)), outline=(200, 40, 40))
  draw.line((margin, y_of(0), margin + plot, y_of(1)), fill=(128, 128, 128), width=1)
  draw.rectangle((margin, margin, margin + plot, margin + plot), outline='black')
  draw.text((margin, size - margin + 6), 'confidence 0 .. 1', fill='black')
  draw.text((margin, 6), 'accuracy per bin (red: gap)', fill='black')
  return np.asarray(image, np.float32) / 255.0
