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

from collections.abc import Mapping, Sequence
import datetime
import json
import os
import tempfile
from typing import Any

from absl import logging
import numpy as np

from cifar_jax.errors import UserError

METRICS_FILE = 'metrics.jsonl'


def read_records(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl file ([] if absent), skipping a line cut short by a kill."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records
_warned_no_tensorboard = False


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks it is writable; returns its absolute path."""
  if not workdir:
    raise UserError('--workdir is empty; give a directory for checkpoints and summaries.')
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    # A file of this process's own: every process of a multi-host job checks.
    handle, probe = tempfile.mkstemp(prefix='.write_test.', dir=workdir)
    os.close(handle)
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

  def write_scalars(self, step: int, scalars: Mapping[str, Any],
                    record: Mapping[str, Any] | None = None) -> None:
    """One line: the step, the scalars as floats, and `record` as it is."""
    self.write_record({'step': int(step), **{k: float(v) for k, v in scalars.items()},
                       **(record or {})})

  def write_record(self, record: Mapping[str, Any]) -> None:
    # One write of one line: a reader never sees half a record, except after a kill.
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

  def write_scalars(self, step: int, scalars: Mapping[str, Any],
                    record: Mapping[str, Any] | None = None) -> None:
    """Scalars everywhere; `record` (e.g. a status string) joins them in metrics.jsonl only."""
    for backend in self._backends:
      if isinstance(backend, JsonLinesWriter):
        backend.write_scalars(step, scalars, record)
      else:
        backend.write_scalars(step, scalars)

  def write_record(self, record: Mapping[str, Any]) -> None:
    """A JSON object for metrics.jsonl only (e.g. the evaluator's per-step status)."""
    self._each('write_record', record)

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
  backends: list[Any] = [JsonLinesWriter(os.path.join(logdir, METRICS_FILE))]
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


def _text_canvas(width: int, height: int):
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  image = Image.new('RGB', (width, height), 'white')
  return image, ImageDraw.Draw(image)


def confusion_matrix_image(confusion: np.ndarray, class_names: Sequence[str],
                           cell: int = 28) -> np.ndarray:
  """A heat map of a confusion matrix (rows: true class, columns: predicted), [H, W, 3] in [0, 1].

  Each cell shows its count; colour is the fraction of the row.
  """
  num_classes = len(class_names)
  margin = 8 + 6 * max(len(n) for n in class_names)
  size = margin + cell * num_classes
  image, draw = _text_canvas(size, size)
  fractions = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  for i in range(num_classes):
    draw.text((2, margin + i * cell + cell // 3), class_names[i][:16], fill='black')
    draw.text((margin + i * cell + 2, 2), str(i), fill='black')
    for j in range(num_classes):
      shade = int(255 * (1 - fractions[i, j]))
      box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1,
             margin + (i + 1) * cell - 1)
      draw.rectangle(box, fill=(shade, shade, 255))
      draw.text((box[0] + 2, box[1] + cell // 3), str(int(confusion[i, j])),
                fill='white' if shade < 128 else 'black')
  return np.asarray(image, np.float32) / 255.0


def captioned_grid(images: np.ndarray, captions: Sequence[str], columns: int = 8,
                   scale: int = 3) -> np.ndarray:
  """uint8 images [N, H, W, C] in a grid, each with a caption below; [H, W, 3] in [0, 1]."""
  if len(images) == 0:
    return np.ones((8, 8, 3), np.float32)
  height, width = images.shape[1] * scale, images.shape[2] * scale
  rows = -(-len(images) // columns)
  cell_w, cell_h = max(width, 6 * max(len(c) for c in captions)) + 4, height + 14
  canvas, draw = _text_canvas(columns * cell_w, rows * cell_h)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for k, (image, caption) in enumerate(zip(images, captions, strict=True)):
    x, y = (k % columns) * cell_w, (k // columns) * cell_h
    tile = Image.fromarray(np.asarray(image, np.uint8)).resize((width, height), Image.NEAREST)
    canvas.paste(tile, (x + 2, y))
    draw.text((x + 2, y + height + 1), caption, fill='black')
  return np.asarray(canvas, np.float32) / 255.0
