"""Writers of a run's summaries, behind clu's `MetricWriter` interface.

`MetricWriter` has exactly the methods and signatures of
`clu.metric_writers.MetricWriter` (Flax's examples, scenic and Kauldron write through it), so
a writer of that interface plugs in -- clu's own (`SummaryWriter`, `LoggingWriter`,
`AsyncWriter`), or a fork's. It is a copy of the interface, not clu's class, because importing
`clu.metric_writers` imports TensorFlow (its `SummaryWriter`): seconds on the way to the first
step of every (re)start, and no summaries at all on machines with JAX but no TensorFlow (GPU
images). `tests/test_metric_writers.py` checks the copy against clu's, method by method.

The built-in writers:

* `JsonLinesWriter`: scalars as one JSON object per step in ``metrics.jsonl``, which
  scripts, `compare`, the notebook API and the evaluator's resume read;
* `TensorBoardWriter`: scalars, images, histograms, texts and hyperparameters in a
  TensorBoard event file, written with TensorBoard's protos and record format (no TensorFlow).

`MultiWriter` sends each call to all of a run's writers (clu's `MultiWriter`, with two
additions for metrics.jsonl: a record's non-scalar fields, and records of their own).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
import contextlib
import dataclasses
import io
import json
import os
import socket
import time
from typing import Any

import numpy as np

from cifar_jax.core.errors import UserError, WriteError

Array = Any  # np.ndarray or jax.Array (clu's `Array`)
Scalar = Any  # int, float, np.number or a 0-d array (clu's `Scalar`)


@dataclasses.dataclass(frozen=True)
class WriterContext:
  """What a writer may need beyond its folder: given to a writer class's optional
  `from_context(context)` (else the class is called with the folder alone, as clu's are)."""

  logdir: str  # where this writer writes: WORKDIR (the trainer's) or WORKDIR/eval
  workdir: str  # the run's WORKDIR
  job: str  # 'train' or 'eval'
  config: Any  # the run's ml_collections.ConfigDict


class MetricWriter(abc.ABC):
  """clu's MetricWriter interface: what a run's summaries are written through.

  Images are [N, H, W, C] or [H, W, C], float in [0, 1] or uint8. `write_hparams` is called
  once per writer. Calling a method after `close` is an error.
  """

  @abc.abstractmethod
  def write_summaries(self, step: int, values: Mapping[str, Array],
                      metadata: Mapping[str, Any] | None = None):
    """Tensors with their (TensorBoard) metadata."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, Scalar]):
    """Scalars; consecutive calls may give different sets."""

  @abc.abstractmethod
  def write_images(self, step: int, images: Mapping[str, Array]):
    """Images, [N, H, W, C] or [H, W, C]."""

  @abc.abstractmethod
  def write_videos(self, step: int, videos: Mapping[str, Array]):
    """Videos, [N, T, H, W, C] or [T, H, W, C]."""

  @abc.abstractmethod
  def write_audios(self, step: int, audios: Mapping[str, Array], *, sample_rate: int):
    """Audio clips, [N, T, C] in [-1, 1]."""

  @abc.abstractmethod
  def write_texts(self, step: int, texts: Mapping[str, str]):
    """Texts."""

  @abc.abstractmethod
  def write_histograms(self, step: int, arrays: Mapping[str, Array],
                       num_buckets: Mapping[str, int] | None = None):
    """The values of each array, as a histogram (of `num_buckets[key]` buckets, where given)."""

  @abc.abstractmethod
  def write_hparams(self, hparams: Mapping[str, Any]):
    """The run's hyperparameters (flat: dotted names -> bool, int, float or str); once."""

  @abc.abstractmethod
  def flush(self):
    """Makes everything written so far durable."""

  @abc.abstractmethod
  def close(self):
    """Flushes and releases the writer."""


class _WritesOnly(MetricWriter):
  """The interface with every method a no-op: a writer overrides the kinds it has a place for
  and drops the others silently (the JSON lines keep no images)."""

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


class JsonLinesWriter(_WritesOnly):
  """Appends `{"step": s, name: value, ...}` lines to a file: scalars only (the config of a
  run is its config.json; images and histograms have no place in a line)."""

  def __init__(self, path: str):
    self.path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Scalar],
                    record: Mapping[str, Any] | None = None) -> None:
    """One line: the step, the scalars as floats, and `record` as it is."""
    self.write_record({'step': int(step), **{k: float(v) for k, v in scalars.items()},
                       **(record or {})})

  def write_record(self, record: Mapping[str, Any]) -> None:
    # One write of one line: a reader never sees half a record, except after a kill.
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')


class TensorBoardWriter(_WritesOnly):
  """Scalars, images, histograms, texts and hyperparameters in an event file, without TensorFlow.

  Records are TensorBoard's `Event` protos in its TFRecord framing; scalars are
  `simple_value`s, images PNG-encoded, histograms `HistogramProto`s (30 buckets unless told,
  as `tf.summary.histogram`), texts and hyperparameters its plugins' protos. Every write is
  flushed: a reader (or a kill) never waits on a buffer.
  """

  NUM_HISTOGRAM_BUCKETS = 30

  def __init__(self, logdir: str):
    # Imported here: TensorBoard is optional (the `tensorboard` extra).
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

  def _write_summary(self, step: int, summary) -> None:
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def _write_values(self, step: int, values: list[Any]) -> None:
    self._write_summary(step, self._summary_pb2.Summary(value=values))

  def write_scalars(self, step: int, scalars: Mapping[str, Scalar]) -> None:
    self._write_values(step, [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                              for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, Array]) -> None:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      for i, image in enumerate(batch):
        pixels = (image if image.dtype == np.uint8
                  else np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
        png = io.BytesIO()
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(png, 'PNG')
        encoded = self._summary_pb2.Summary.Image(
            height=pixels.shape[0], width=pixels.shape[1], colorspace=pixels.shape[2],
            encoded_image_string=png.getvalue())
        values.append(self._summary_pb2.Summary.Value(
            tag=tag if len(batch) == 1 else f'{tag}/{i}', image=encoded))
    self._write_values(step, values)

  def write_histograms(self, step: int, arrays: Mapping[str, Array],
                       num_buckets: Mapping[str, int] | None = None) -> None:
    values = []
    for tag, array in arrays.items():
      array = np.asarray(array, np.float64).reshape(-1)
      bins = (num_buckets or {}).get(tag, self.NUM_HISTOGRAM_BUCKETS)
      counts, edges = np.histogram(array, bins=bins)
      histogram = self._summary_pb2.HistogramProto(
          min=float(array.min()), max=float(array.max()), num=float(array.size),
          sum=float(array.sum()), sum_squares=float(np.square(array).sum()),
          bucket_limit=edges[1:].tolist(), bucket=counts.astype(float).tolist())
      values.append(self._summary_pb2.Summary.Value(tag=tag, histo=histogram))
    self._write_values(step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    from tensorboard.plugins.text import summary_v2 as text  # pylint: disable=g-import-not-at-top
    for tag, value in texts.items():
      self._write_summary(step, text.text_pb(tag, value))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from tensorboard.plugins.hparams import summary_v2 as hp  # pylint: disable=g-import-not-at-top
    self._write_summary(0, hp.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()


class MultiWriter(MetricWriter):
  """Sends each call to every writer of a run (clu's MultiWriter), failures as one sentence.

  Two additions for metrics.jsonl: `write_scalars(..., record=)` adds non-scalar fields (a
  status, the sweep's points) to its line, and `write_record` writes a line of its own; the
  other writers get the scalars alone, and no record.
  """

  def __init__(self, writers: Sequence[MetricWriter], logdir: str = ''):
    self.writers = list(writers)
    self._logdir = logdir

  @contextlib.contextmanager
  def _reporting_failures(self, writer: Any = None, method: str = ''):
    """A failed write (disk full, folder gone or read-only) becomes one sentence, and so does
    a writer from outside that raises."""
    try:
      yield
    except OSError as e:
      raise WriteError(
          f'Writing summaries in {self._logdir} failed ({type(e).__name__}: {e}); free disk '
          'space or make the folder writable, then run the same command again (training '
          'resumes from its latest checkpoint).') from e
    except Exception as e:  # pylint: disable=broad-except
      if writer is None or type(writer).__module__.startswith('cifar_jax.'):
        raise  # the package's own writers: a bug, with its traceback
      raise UserError(
          f'The summary writer {type(writer).__module__}:{type(writer).__name__} failed in '
          f'{method} ({type(e).__name__}: {e}); fix it or leave it out of '
          'config.summaries.writers, then run the same command again (training resumes from '
          'its latest checkpoint).') from e

  def _each(self, method: str, *args, **kwargs) -> None:
    for writer in self.writers:
      with self._reporting_failures(writer, method):
        getattr(writer, method)(*args, **kwargs)

  def write_scalars(self, step: int, scalars: Mapping[str, Scalar],
                    record: Mapping[str, Any] | None = None) -> None:
    """Scalars everywhere; `record` (e.g. a status string) joins them in metrics.jsonl only."""
    for writer in self.writers:
      with self._reporting_failures(writer, 'write_scalars'):
        if isinstance(writer, JsonLinesWriter):
          writer.write_scalars(step, scalars, record)
        else:
          writer.write_scalars(step, scalars)

  def write_record(self, record: Mapping[str, Any]) -> None:
    """A JSON object for metrics.jsonl only (e.g. the evaluator's per-step status)."""
    for writer in self.writers:
      if isinstance(writer, JsonLinesWriter):
        with self._reporting_failures(writer, 'write_record'):
          writer.write_record(record)

  def write_summaries(self, step, values, metadata=None):
    self._each('write_summaries', step, values, metadata)

  def write_images(self, step, images):
    self._each('write_images', step, images)

  def write_videos(self, step, videos):
    self._each('write_videos', step, videos)

  def write_audios(self, step, audios, *, sample_rate):
    self._each('write_audios', step, audios, sample_rate=sample_rate)

  def write_texts(self, step, texts):
    self._each('write_texts', step, texts)

  def write_histograms(self, step, arrays, num_buckets=None):
    self._each('write_histograms', step, arrays, num_buckets)

  def write_hparams(self, hparams):
    self._each('write_hparams', hparams)

  def flush(self):
    self._each('flush')

  def close(self):
    self._each('close')

  def __enter__(self) -> MultiWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def flat_hparams(tree: Mapping[str, Any], prefix: str = '') -> dict[str, bool | int | float | str]:
  """A config as {dotted name: bool, int, float or str} (a tuple or None as its JSON text)."""
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flat_hparams(value, f'{name}.'))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    else:
      flat[name] = json.dumps(value, default=str)
  return flat
