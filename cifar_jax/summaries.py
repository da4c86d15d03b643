"""Where results go: tutorial-style log lines, JSON lines, TensorBoard.

`create_writer(logdir)` returns one writer that sends

* scalars to ``logdir/metrics.jsonl`` (one JSON object per step; always
  available, read by scripts and notebooks);
* scalars, images and histograms to TensorBoard event files through clu's
  `metric_writers.SummaryWriter`, when TensorFlow and TensorBoard are
  installed. Without them, training and evaluation run all the same, with one
  warning.
"""

from __future__ import annotations

from collections.abc import Mapping
import datetime
import json
import os
from typing import Any

from absl import logging
import numpy as np

from cifar_jax.errors import UserError

_warned_no_tensorboard = False


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks it is writable; returns its absolute path."""
  if not workdir:
    raise UserError('--workdir is empty; give a directory for checkpoints and summaries.')
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(
        f'Cannot write to workdir {workdir} ({e.strerror}); choose a writable --workdir.'
    ) from e
  return workdir


def print_line(message: str) -> None:
  """A tutorial-style line, '2026-11-27 10:00:00.123456: message', on stdout."""
  print(f'{datetime.datetime.now()}: {message}', flush=True)


class JsonLinesWriter:
  """Appends `{"step": s, name: value, ...}` lines to a file."""

  def __init__(self, path: str):
    self.path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


class Writer:
  """Sends each kind of summary to every backend that supports it."""

  def __init__(self, backends: list[Any]):
    self._backends = backends

  def _each(self, method: str, *args) -> None:
    for backend in self._backends:
      if hasattr(backend, method):
        getattr(backend, method)(*args)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._each('write_scalars', step, scalars)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Images [N, H, W, C] with values in [0, 1]."""
    self._each('write_images', step, images)

  def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
    self._each('write_histograms', step, arrays)

  def flush(self) -> None:
    self._each('flush')

  def close(self) -> None:
    self._each('close')


def _tensorboard_writer(logdir: str) -> Any | None:
  global _warned_no_tensorboard
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    if not _warned_no_tensorboard:
      logging.warning('No TensorBoard summaries (%s); metrics go to metrics.jsonl only.', e)
      _warned_no_tensorboard = True
    return None
  return metric_writers.SummaryWriter(logdir)


def create_writer(logdir: str, enabled: bool = True) -> Writer:
  """The writer for `logdir`; a writer that drops everything if not `enabled`.

  Only one process of a multi-host job should write (`enabled`).
  """
  if not enabled:
    return Writer([])
  os.makedirs(logdir, exist_ok=True)
  backends: list[Any] = [JsonLinesWriter(os.path.join(logdir, 'metrics.jsonl'))]
  tensorboard = _tensorboard_writer(logdir)
  if tensorboard is not None:
    backends.append(tensorboard)
  return Writer(backends)


def image_grid_ready(images: np.ndarray) -> np.ndarray:
  """Standardised images rescaled to [0, 1] per image, for display."""
  images = np.asarray(images, np.float32)
  low = images.min(axis=(1, 2, 3), keepdims=True)
  high = images.max(axis=(1, 2, 3), keepdims=True)
  return (images - low) / np.maximum(high - low, 1e-6)
