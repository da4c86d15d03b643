"""Where results go: the tutorial's log lines, and the writers of config.summaries.writers.

`create_writer(logdir, config=...)` returns one writer (`metric_writers.MultiWriter`, of clu's
MetricWriter interface) that sends every summary to the writers the config names (`WRITERS`):

* 'jsonl': scalars to ``logdir/metrics.jsonl`` (one JSON object per step; always there: read
  by `compare`, the notebook API, scripts and the evaluator's resume);
* 'tensorboard': scalars, images, histograms and hyperparameters to TensorBoard event files,
  written without TensorFlow (`metric_writers.TensorBoardWriter`); without the `tensorboard`
  package, training and evaluation run all the same, with one warning;
* 'wandb': Weights & Biases (`wandb_writer`), the optional `cifar_jax[wandb]`;
* 'package.module:Class': a writer from outside -- any class of clu's MetricWriter interface
  built from the folder alone (`clu.metric_writers:SummaryWriter`), or with a classmethod
  `from_context(metric_writers.WriterContext)`.

Also here: the pictures the summaries show (input grid, confusion matrix, captioned grids).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
import tempfile
from typing import Any

from absl import logging
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import layout, metric_writers, terminal, wandb_writer
from cifar_jax.core.errors import UserError
from cifar_jax.core.registry import Registry


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


# ----------------------------------------------------------------------------
# The writers a config can name (config.summaries.writers).

WRITERS = Registry('summary writer', 'config.summaries.writers',
                   "docs/development.md, \"Adding a summary writer\": a class of clu's "
                   'MetricWriter interface, built from the folder it writes in')


@WRITERS.register('jsonl')
def _json_lines(logdir: str) -> metric_writers.JsonLinesWriter:
  """Scalars in metrics.jsonl (compare, the notebook API and the evaluator read them)."""
  return metric_writers.JsonLinesWriter(os.path.join(logdir, layout.METRICS))


@WRITERS.register('tensorboard')
def _tensorboard(logdir: str) -> metric_writers.TensorBoardWriter | None:
  """TensorBoard event files (scalars, images, histograms, hyperparameters)."""
  global _warned_no_tensorboard
  try:
    return metric_writers.TensorBoardWriter(logdir)
  except ImportError as e:
    if not _warned_no_tensorboard:
      logging.warning('No TensorBoard summaries (%s); metrics go to metrics.jsonl only.', e)
      _warned_no_tensorboard = True
    return None


WRITERS.register('wandb', fields=wandb_writer.WANDB_FIELDS)(wandb_writer.WandbWriter)

DEFAULT_WRITERS = ('jsonl', 'tensorboard')
_INTERFACE = tuple(sorted(metric_writers.MetricWriter.__abstractmethods__))


def _build(name: str, context: metric_writers.WriterContext) -> Any:
  """The writer `name` names for `context` (None where it cannot write: it said why)."""
  target = WRITERS.get(name).target
  try:
    writer = (target.from_context(context) if hasattr(target, 'from_context')
              else target(context.logdir))
  except UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (outside code broke its contract)
    raise UserError(f'The summary writer {name!r} of config.summaries.writers failed to start '
                    f'({type(error).__name__}: {error}); fix it or leave it out.') from error
  missing = [m for m in _INTERFACE if not callable(getattr(writer, m, None))]
  if writer is not None and missing:
    raise UserError(f'The summary writer {name!r} of config.summaries.writers has no '
                    f'{", ".join(missing)}; give it clu\'s MetricWriter interface '
                    '(cifar_jax.core.metric_writers.MetricWriter).')
  return writer


def create_writer(logdir: str, enabled: bool = True, config: Any = None,
                  workdir: str | None = None) -> metric_writers.MultiWriter:
  """The writers of `logdir`: config.summaries.writers (without a config: the JSON lines and
  TensorBoard); one that drops everything if not `enabled` (only one process of a multi-host
  job writes).

  With a config, the writers also get the run's hyperparameters (`write_hparams`), and
  `workdir` (the run's; default `logdir`) tells the trainer's folder from the evaluator's.
  """
  if not enabled:
    return metric_writers.MultiWriter([])
  os.makedirs(logdir, exist_ok=True)
  workdir = workdir or logdir
  names = tuple(config.summaries.writers) if config is not None else DEFAULT_WRITERS
  job = 'train' if os.path.abspath(logdir) == os.path.abspath(workdir) else 'eval'
  context = metric_writers.WriterContext(logdir, workdir, job, config)
  writers = [w for name in names if (w := _build(name, context)) is not None]
  writer = metric_writers.MultiWriter(writers, logdir)
  if config is not None:
    writer.write_hparams(metric_writers.flat_hparams(config.to_dict()))
  return writer


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

def _check_writers(c: spec.Checker, path: str) -> None:
  names = c.sequence(path, str)
  for name in names:
    spec.check_section(c, 'summaries', WRITERS.get(name).fields)
  if len(set(names)) != len(names):
    raise UserError(f'config.{path} is {names}; name each writer once.')
  if 'jsonl' not in names:
    raise UserError(f"config.{path} is {names}; keep 'jsonl' among them: compare, the notebook "
                    'API and the evaluator read metrics.jsonl.')


FIELDS = {
    'summaries.writers': spec.Field(DEFAULT_WRITERS, _check_writers,
                                    "where summaries go: 'jsonl', 'tensorboard', 'wandb', or "
                                    "'package.module:Class'", before=list(DEFAULT_WRITERS)),
    'histogram_sample_size': spec.Field(64, spec.integer(1), 'activations per histogram'),
    'input_image_grid_size': spec.Field(32, spec.integer(1), 'images in the input grid'),
}


spec.declare(__name__, FIELDS)
