"""A split in memory: uint8 images and int32 labels, its class names; split expressions.

Split expressions follow tfds slicing: ``train``, ``train[:90%]``,
``train[4500:]``. For image folders the slice is taken within every class over
the sorted file names, which gives a deterministic per-class holdout.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from cifar_jax.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in host memory."""

  images: np.ndarray  # uint8 [N, H, W, C]; a read-only memory map when read from the cache
  labels: np.ndarray  # int32 [N]
  class_names: tuple[str, ...]

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.images.shape[1:])

  def info(self) -> dict[str, Any]:
    """What a checkpoint records of its training split (JSON): classes, size, image shape."""
    return {'class_names': list(self.class_names), 'num_train_examples': self.num_examples,
            'image_shape': list(self.image_shape)}


def check_same_classes(trained: dict[str, Any], split: Split, what: str) -> None:
  """Refuses `split` (`what` names it) unless its classes are the trained run's, in order.

  `trained` is a checkpoint's dataset info (`Split.info`). Label k means class
  `class_names[k]` of each split: scoring or training on other class names
  (or the same names in another order) would give a figure that means
  nothing, so it is one sentence instead.
  """
  expected = tuple(trained['class_names'])
  if tuple(split.class_names) == expected:
    return
  only_trained = [n for n in expected if n not in split.class_names]
  only_here = [n for n in split.class_names if n not in expected]
  detail = (f'only in training: {only_trained}; only here: {only_here}'
            if only_trained or only_here else 'the same names in another order')
  raise UserError(
      f'{what} has classes {list(split.class_names)} but the model was trained on '
      f'{list(expected)} ({detail}), so its labels would mean other classes; use data with '
      'the same class folders (or class names) as the training split.')


# Split expressions.

SPLIT_RE = re.compile(r'^(?P<name>[\w-]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$')


def parse_split(expression: str) -> tuple[str, str | None, str | None]:
  """'train[:90%]' -> ('train', None, '90%')."""
  match = SPLIT_RE.match(expression.replace(' ', ''))
  if not match:
    raise UserError(
        f'Cannot parse split {expression!r}; write e.g. "train", "train[:90%]" or "train[4500:]".'
    )
  return match['name'], match['start'], match['stop']


def _bound(value: str | None, length: int) -> int | None:
  if value is None:
    return None
  if value.endswith('%'):
    # Rounded like tfds' percent slicing.
    return int(round(length * int(value[:-1]) / 100.0))
  return int(value)


def slice_items(items: list, start: str | None, stop: str | None) -> list:
  """Applies a tfds-style slice (counts or percents) to a list."""
  return items[_bound(start, len(items)) : _bound(stop, len(items))]


def describe(split: Split, name: str) -> str:
  """Counts per class, image shape and pixel mean/std of a split, as text."""
  counts = np.bincount(split.labels, minlength=split.num_classes)
  # Exact moments from per-channel histograms of the uint8 values: no float copy.
  channels = split.images.reshape(-1, split.images.shape[-1])
  values = np.arange(256, dtype=np.float64)
  means, stds = [], []
  for c in range(channels.shape[1]):
    histogram = np.bincount(channels[:, c], minlength=256) / channels.shape[0]
    means.append(histogram @ values)
    stds.append(np.sqrt(histogram @ (values - means[-1]) ** 2))
  lines = [
      f'{name}: {split.num_examples} images of shape {split.images.shape[1:]} '
      f'({split.images.nbytes / 2**20:.1f} MiB as uint8), {split.num_classes} classes',
      '  per-channel mean: ' + ', '.join(f'{m:.2f}' for m in means),
      '  per-channel std:  ' + ', '.join(f'{s:.2f}' for s in stds),
  ]
  lines += [f'  {label:3d} {class_name:<20s} {count}'
            for label, (class_name, count) in enumerate(zip(split.class_names, counts,
                                                            strict=True))]
  return '\n'.join(lines)
