"""Where results go: tutorial-style log lines, JSON lines, TensorBoard.

`create_writer(logdir)` returns one writer that sends

* scalars to ``logdir/metrics.jsonl`` (one JSON object per step; always
  available, read by scripts and notebooks);
* scalars, images and histograms to TensorBoard event files, when the
  `tensorboard` package is installed. Without it, training and evaluation run
  all the same, with one warning.

The event files are written with TensorBoard's own record format and protos
(`TensorBoardWriter`), not through TensorFlow: clu's `SummaryWriter` imports
TensorFlow (seconds on the path to the first step of every restart) and
machines with JAX and TensorBoard but no TensorFlow (e.g. GPU images) would get
no summaries at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import contextlib
import io
import json
import os
import socket
import tempfile
import time
from typing import Any

from absl import logging
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import layout, terminal
from cifar_jax.core.errors import UserError, WriteError


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


print_line = terminal.print_line  # the tutorial's lines; defined with the other terminal output


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

  def __init__(self, backends: list[Any], logdir: str = ''):
    self._backends = backends
    self._logdir = logdir

  @contextlib.contextmanager
  def _reporting_failures(self):
    """A failed write (disk full, folder gone or read-only) becomes one sentence."""
    try:
      yield
    except OSError as e:
      raise WriteError(
          f'Writing summaries in {self._logdir} failed ({type(e).__name__}: {e}); free disk '
          'space or make the folder writable, then run the same command again (training '
          'resumes from its latest checkpoint).') from e

  def _each(self, method: str, *args) -> None:
    with self._reporting_failures():
      for backend in self._backends:
        if hasattr(backend, method):
          getattr(backend, method)(*args)

  def write_scalars(self, step: int, scalars: Mapping[str, Any],
                    record: Mapping[str, Any] | None = None) -> None:
    """Scalars everywhere; `record` (e.g. a status string) joins them in metrics.jsonl only."""
    with self._reporting_failures():
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

  def __enter__(self) -> Writer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class TensorBoardWriter:
  """Scalars, images and histograms in a TensorBoard event file, without TensorFlow.

  Records are TensorBoard's `Event` protos in its TFRecord framing; scalars
  are `simple_value`s, images PNG-encoded, histograms `HistogramProto`s (30
  buckets, as `tf.summary.histogram`). Every write is flushed: a reader (or a
  kill) never waits on a buffer.
  """

  NUM_HISTOGRAM_BUCKETS = 30

  def __init__(self, logdir: str):
    # Imported here: TensorBoard is optional (the `tf` extra).
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    name = f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.0'
    self.path = os.path.join(logdir, name)
    self._records = record_writer.RecordWriter(open(self.path, 'wb'))  # noqa: SIM115
    self._write(self._event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def _write_values(self, step: int, values: list[Any]) -> None:
    summary = self._summary_pb2.Summary(value=values)
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._write_values(step, [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                              for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    values = []
    for tag, batch in images.items():
      for i, image in enumerate(np.asarray(batch)):
        pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        png = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(png, 'PNG')
        encoded = self._summary_pb2.Summary.Image(
            height=pixels.shape[0], width=pixels.shape[1], colorspace=pixels.shape[2],
            encoded_image_string=png.getvalue())
        values.append(self._summary_pb2.Summary.Value(
            tag=tag if len(batch) == 1 else f'{tag}/{i}', image=encoded))
    self._write_values(step, values)

  def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
    values = []
    for tag, array in arrays.items():
      array = np.asarray(array, np.float64).reshape(-1)
      counts, edges = np.histogram(array, bins=self.NUM_HISTOGRAM_BUCKETS)
      histogram = self._summary_pb2.HistogramProto(
          min=float(array.min()), max=float(array.max()), num=float(array.size),
          sum=float(array.sum()), sum_squares=float(np.square(array).sum()),
          bucket_limit=edges[1:].tolist(), bucket=counts.astype(float).tolist())
      values.append(self._summary_pb2.Summary.Value(tag=tag, histo=histogram))
    self._write_values(step, values)

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()


def _tensorboard_writer(logdir: str) -> TensorBoardWriter | None:
  global _warned_no_tensorboard
  try:
    return TensorBoardWriter(logdir)
  except ImportError as e:
    if not _warned_no_tensorboard:
      logging.warning('No TensorBoard summaries (%s); metrics go to metrics.jsonl only.', e)
      _warned_no_tensorboard = True
    return None


def create_writer(logdir: str, enabled: bool = True) -> Writer:
  """The writer for `logdir`; a writer that drops everything if not `enabled`.

  Only one process of a multi-host job should write (`enabled`).
  """
  if not enabled:
    return Writer([])
  os.makedirs(logdir, exist_ok=True)
  backends: list[Any] = [JsonLinesWriter(os.path.join(logdir, layout.METRICS))]
  tensorboard = _tensorboard_writer(logdir)
  if tensorboard is not None:
    backends.append(tensorboard)
  return Writer(backends, logdir)


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
    pixels = np.asarray(image, np.uint8)
    tile = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).resize(
        (width, height), Image.NEAREST)  # a grey tile pastes onto the RGB canvas as grey
    canvas.paste(tile, (x + 2, y))
    draw.text((x + 2, y + height + 1), caption, fill='black')
  return np.asarray(canvas, np.float32) / 255.0


# ----------------------------------------------------------------------------
# The config fields of what the summaries show.

FIELDS = {
    'histogram_sample_size': spec.Field(64, spec.integer(1), 'activations per histogram'),
    'input_image_grid_size': spec.Field(32, spec.integer(1), 'images in the input grid'),
}


spec.declare(__name__, FIELDS)
