"""Corrupted copies of an evaluation split: the CIFAR-10-C protocol of Hendrycks and Dietterich.

"Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019) scores a classifier on 15 corruptions (`BENCHMARK`)
at 5 severities, plus 4 held-out ones (`EXTRA`), and reports the mean precision
over them. A corrupted copy comes from one of two places (`corruption_source`
of an evaluation set, `config.eval.sets`):

* ``tfds``: the published CIFAR-10-C, tfds `cifar10_corrupted/<name>_<severity>`
  (split 'test'; the corrupted CIFAR-10 test split). Only for the CIFAR-10
  test split.
* ``generated``: any split, corrupted here with the maintained
  `imagecorruptions-imaug` package (the imgaug project's fork of Michaelis et
  al.'s `imagecorruptions`, an implementation of Hendrycks and Dietterich's
  corruption functions; `pip install 'cifar_jax[robustness]'`). Its
  parameters are ImageNet-C's, made for 224-pixel images; on 32x32 images most
  are harsher than CIFAR-10-C's (docs/evaluation.md lists the differences), so
  generated figures are comparable with each other, not with published
  CIFAR-10-C numbers. It needs images of at least 32x32 pixels. Every image
  has its own seed, so a copy is the same on every machine and run.
* ``auto`` (the default): tfds where the split is tfds CIFAR-10's test split
  and `cifar10_corrupted` is prepared, else generated.

A generated copy is made once and cached beside the decoded split it comes
from (`config.dataset.cache_dir`), like the split itself.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import os

import ml_collections
import numpy as np

from cifar_jax.core import terminal
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets, decoded_cache
from cifar_jax.data.decoded_cache import Allocate
from cifar_jax.data.splits import Split

BENCHMARK = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
             'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
             'elastic_transform', 'pixelate', 'jpeg_compression')
EXTRA = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
ALL = BENCHMARK + EXTRA
SEVERITIES = (1, 2, 3, 4, 5)
SOURCES = ('auto', 'tfds', 'generated')
# tfds' names of the CIFAR-10-C files where they differ from the functions' names.
TFDS_NAMES = {'glass_blur': 'frosted_glass_blur', 'elastic_transform': 'elastic'}
LIBRARY = 'imagecorruptions-imaug'
MIN_SIZE = 32  # the library's smallest image side


def names(expression: str) -> tuple[str, ...]:
  """'benchmark' (the 15), 'all' (19) or 'name,name,...' as corruption names; UserError else."""
  if expression in ('benchmark', 'all'):
    return BENCHMARK if expression == 'benchmark' else ALL
  chosen = tuple(part.strip() for part in expression.split(',') if part.strip())
  unknown = [name for name in chosen if name not in ALL]
  if unknown or not chosen:
    raise UserError(f"Unknown corruption(s) {unknown or expression!r}; use 'benchmark' (the 15 "
                     f"of CIFAR-10-C), 'all' (19) or names of {list(ALL)}.")
  return chosen


@dataclasses.dataclass(frozen=True)
class Group:
  """The rows of one corruption at one severity in a set's concatenated split."""

  corruption: str
  severity: int
  rows: slice


def _corrupt_one(image: np.ndarray, corruption: str, severity: int, seed: list[int]
                 ) -> np.ndarray:
  """One uint8 image [H, W, C] corrupted by the library, with its own seed; grey stays grey."""
  from imagecorruptions import corrupt  # pylint: disable=g-import-not-at-top
  grey = image.shape[-1] == 1
  rgb = np.repeat(image, 3, axis=-1) if grey else image
  np.random.seed(seed)
  # glass_blur (numba) and impulse_noise (scikit-image) draw from generators of their own.
  kwargs = {'seed': int(np.random.randint(2**31))} if corruption in (
      'glass_blur', 'impulse_noise') else {}
  out = np.asarray(corrupt(rgb, corruption_name=corruption, severity=severity, **kwargs),
                   np.uint8)
  if grey:  # the luma of the result, as Pillow makes grey ('L') images
    from PIL import Image  # pylint: disable=g-import-not-at-top
    return np.asarray(Image.fromarray(out).convert('L'), np.uint8)[..., None]
  return out


def require_library() -> None:
  try:
    import imagecorruptions  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError:
    raise UserError(f'Generated corruptions need the {LIBRARY} package: pip install '
                    f"'cifar_jax[robustness]' (or {LIBRARY}), or read CIFAR-10-C from tfds "
                    "(corruption_source='tfds').") from None


def generate(split: Split, corruption: str, severity: int, allocate: Allocate,
             seed: int = 0) -> Split:
  """`split` with every image corrupted (`corruption` at `severity`); labels as they were."""
  require_library()
  height, width = split.image_shape[:2]
  if min(height, width) < MIN_SIZE:
    raise UserError(f'Generated corruptions need images of at least {MIN_SIZE}x{MIN_SIZE} '
                    f'pixels; these are {height}x{width}: set the evaluation set\'s '
                    f'image_size to {MIN_SIZE} or more, or leave it without corruptions.')
  images = allocate(split.num_examples, split.image_shape)
  progress = terminal.ProgressLine(f'Corrupting ({corruption}, severity {severity})',
                                   split.num_examples, 'images')
  index = ALL.index(corruption)
  for i in range(split.num_examples):
    images[i] = _corrupt_one(np.asarray(split.images[i]), corruption, severity,
                             [seed, index, severity, i])
    progress.update(i + 1)
  progress.finish(split.num_examples)
  return Split(images, split.labels, split.class_names)


def _use_tfds(dataset_config: ml_collections.ConfigDict, split: str, source: str) -> bool:
  is_cifar10_test = (dataset_config.source == 'tfds' and dataset_config.name == 'cifar10'
                     and split == 'test')
  if source == 'tfds' and not is_cifar10_test:
    raise UserError(f"corruption_source='tfds' reads CIFAR-10-C, the corrupted CIFAR-10 test "
                    f'split; this set is split {split!r} of {dataset_config.source} '
                    f"{dataset_config.get('name') or dataset_config.get('path')!r}: use "
                    "corruption_source='generated' (or 'auto').")
  if source != 'auto' or not is_cifar10_test:
    return source == 'tfds'
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return tfds.builder(f'cifar10_corrupted/{TFDS_NAMES.get(BENCHMARK[0], BENCHMARK[0])}_1',
                        data_dir=dataset_config.get('data_dir')).is_prepared()
  except Exception:  # pylint: disable=broad-except  # no TensorFlow, no such data: generate
    return False


def load(dataset_config: ml_collections.ConfigDict, split: str, corruption: str, severity: int,
         source: str = 'auto') -> Split:
  """`split` of `dataset_config`'s source corrupted by `corruption` at `severity` (cached)."""
  if _use_tfds(dataset_config, split, source):
    tfds_config = ml_collections.ConfigDict({
        **dataset_config.to_dict(),
        'name': f'cifar10_corrupted/{TFDS_NAMES.get(corruption, corruption)}_{severity}'})
    return datasets.load_split(tfds_config, 'test')
  require_library()
  base = datasets.load_split(dataset_config, split)
  identity = datasets.cache_identity(dataset_config, split)
  if identity is None:
    return generate(base, corruption, severity, decoded_cache.in_memory)
  key, fingerprint = identity
  return decoded_cache.cached(
      os.path.expanduser(dataset_config.cache_dir), f'{key}-{corruption}-{severity}',
      lambda: _with_library_version(fingerprint()),
      lambda allocate: generate(base, corruption, severity, allocate))


def _with_library_version(fingerprint: str | None) -> str | None:
  """The source's fingerprint and the library's version: a new version makes new copies."""
  if fingerprint is None:
    return None
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return f'{fingerprint}_{metadata.version(LIBRARY)}'


def load_all(dataset_config: ml_collections.ConfigDict, split: str, chosen: tuple[str, ...],
             severities: tuple[int, ...], source: str = 'auto') -> tuple[Split, list[Group]]:
  """Every (corruption, severity) copy of `split`, concatenated, and where each one's rows are."""
  parts, groups, start = [], [], 0
  for corruption, severity in _pairs(chosen, severities):
    part = load(dataset_config, split, corruption, severity, source)
    parts.append(part)
    groups.append(Group(corruption, severity, slice(start, start + part.num_examples)))
    start += part.num_examples
  images = np.concatenate([np.asarray(p.images) for p in parts])
  labels = np.concatenate([p.labels for p in parts])
  return Split(images, labels, parts[0].class_names), groups


def _pairs(chosen: tuple[str, ...], severities: tuple[int, ...]) -> Iterator[tuple[str, int]]:
  for corruption in chosen:
    for severity in severities:
      yield corruption, severity
