"""The decoded cache: a split decoded once, written as .npy files and read back memory-mapped.

CIFAR-10 is 150 MB as uint8, so a split is decoded once (with progress on the
terminal when that takes a while), made one size and channel count
(`image_format`), written to the cache and read back memory-mapped: a split
larger than the host's memory stays on disk, its batches read from the file as
needed (`placement`). The cache (`config.dataset.cache_dir`; '' disables it,
and splits are then held in memory) holds one folder per split, source state
and image format: images.npy (memory-mapped), labels.npy, class_names.json.
"""

from __future__ import annotations

from collections.abc import Callable
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile

from absl import logging
import numpy as np

from cifar_jax.core import terminal
from cifar_jax.core.errors import UserError
from cifar_jax.data.image_format import ImageFormat
from cifar_jax.data.splits import Split


def tree_fingerprint(path: str) -> str | None:
  """A hash of the names, sizes and modification times below `path` (None if absent)."""
  if not path or not os.path.exists(path):
    return None
  digest = hashlib.sha256()
  if os.path.isfile(path):
    stat = os.stat(path)
    digest.update(f'{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}'.encode())
    return digest.hexdigest()[:16]
  digest.update(os.path.abspath(path).encode())
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for file_name in sorted(files):
      stat = os.stat(os.path.join(root, file_name))
      relative = os.path.relpath(os.path.join(root, file_name), path)
      digest.update(f'{relative}|{stat.st_size}|{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:16]


def cache_path(cache_dir: str, key: str, fingerprint: str) -> str:
  """The cache folder of `key` (readable, plus a hash: 'train[:10]' != 'train[10:]')."""
  readable = re.sub(r'[^\w.%-]+', '_', key)
  key_hash = hashlib.sha256(key.encode()).hexdigest()[:8]
  return os.path.join(cache_dir, f'{readable}-{key_hash}-{fingerprint}')


# Allocates the uint8 images [count, *shape] a loader decodes into.
Allocate = Callable[[int, tuple[int, ...]], np.ndarray]


def in_memory(count: int, shape: tuple[int, ...]) -> np.ndarray:
  return np.empty((count, *shape), np.uint8)


class DamagedCacheError(UserError):
  """A cache entry that cannot be what was written: a file cut short (a full disk, a killed
  copy), missing or unreadable, or counts that disagree."""


def read_cached_split(path: str) -> Split:
  """The split in the cache entry (folder) `path`: its images memory-mapped, read-only.

  Raises `DamagedCacheError` where the entry is damaged: NumPy checks each file's
  size against the shape its header records when it maps or reads it.
  """
  try:
    images = np.load(os.path.join(path, 'images.npy'), mmap_mode='r')
    labels = np.load(os.path.join(path, 'labels.npy'))
    with open(os.path.join(path, 'class_names.json')) as f:
      class_names = tuple(json.load(f))
  except (OSError, ValueError, EOFError) as e:  # JSONDecodeError is a ValueError
    raise DamagedCacheError(f'The cached split in {path} is damaged ({type(e).__name__}: {e}); '
                            'delete that folder and run again.') from e
  if len(labels) != len(images) or (len(labels) and not 0 <= labels.min() <= labels.max()
                                    < len(class_names)):
    raise DamagedCacheError(f'The cached split in {path} is damaged ({len(images)} images, '
                            f'{len(labels)} labels, {len(class_names)} classes); delete that '
                            'folder and run again.')
  return Split(images, labels, class_names)


def cached(cache_dir: str, key: str, fingerprint: Callable[[], str | None],
            load: Callable[[Allocate], Split]) -> Split:
  """The split of `key` from the cache, or loaded straight into a new cache entry.

  The loader decodes into a memory map in a temporary folder of the cache,
  renamed into place when complete: the images never need to fit in memory,
  and an interrupted decode leaves no entry.
  """
  before = fingerprint()
  if before is not None:
    path = cache_path(cache_dir, key, before)
    if os.path.isdir(path):
      logging.info('Reading cached split %s from %s.', key, path)
      try:
        return read_cached_split(path)
      except DamagedCacheError as e:
        logging.warning('%s Decoding split %s again instead.', str(e).split(';')[0] + '.', key)
        shutil.rmtree(path, ignore_errors=True)
  os.makedirs(cache_dir, exist_ok=True)
  temporary = tempfile.mkdtemp(dir=cache_dir, prefix='.writing-')
  try:
    images_path = os.path.join(temporary, 'images.npy')
    split = load(lambda count, shape: np.lib.format.open_memmap(
        images_path, 'w+', np.uint8, (count, *shape)))
    after = fingerprint()  # tfds may have just prepared the data
    if after is None:
      return Split(np.array(split.images), split.labels, split.class_names)
    if isinstance(split.images, np.memmap):
      split.images.flush()
    else:
      np.save(images_path, split.images)
    np.save(os.path.join(temporary, 'labels.npy'), split.labels)
    with open(os.path.join(temporary, 'class_names.json'), 'w') as f:
      json.dump(list(split.class_names), f)
    del split
    path = cache_path(cache_dir, key, after)
    # Old entries of this key belong to an earlier state of the source.
    for stale in set(glob.glob(cache_path(cache_dir, key, '*'))) - {path}:
      shutil.rmtree(stale, ignore_errors=True) if os.path.isdir(stale) else os.remove(stale)
    try:
      os.replace(temporary, path)
    except OSError:  # another process (a peer of a multi-process run) finished first
      if not os.path.isdir(path):
        raise
    logging.info('Cached split %s in %s.', key, path)
    return read_cached_split(path)
  finally:
    if os.path.isdir(temporary):
      shutil.rmtree(temporary, ignore_errors=True)


def fill(count: int, read: Callable[[int, int], tuple[np.ndarray, int]],
          image_format: ImageFormat, allocate: Allocate, what: str, channels: int = 0,
          name: Callable[[int], str] | None = None) -> np.ndarray:
  """Images [count, H, W, C]: `read(i, channels)` gives image i in the format and its own channels.

  `name(i)` names image i in messages (default: its number in `what`).

  The first image fixes the size (where the format keeps the data's) and the
  channels (where it keeps the data's: a colour image after grey ones starts
  the decoding again in colour, so that no colour is lost).
  """
  channels = channels or image_format.channels
  first, native = read(0, channels)
  channels = channels or native
  images = allocate(count, first.shape)
  images[0] = first
  progress = terminal.ProgressLine(f'Decoding {what}', count, 'images')
  for i in range(1, count):
    image, native = read(i, channels)
    if native > channels and not image_format.channels:
      logging.info('%s mixes grey and colour images; decoding them all in colour.', what)
      return fill(count, read, image_format, allocate, what, channels=3, name=name)
    if image.shape != first.shape:
      name = name or (lambda k: f'Image {k} of {what}')
      raise UserError(
          f'{name(i)} is {image.shape[0]}x{image.shape[1]}, unlike {name(0)} '
          f'({first.shape[0]}x{first.shape[1]}); set config.dataset.image_size (e.g. '
          f'{first.shape[0]} or ({first.shape[0]}, {first.shape[1]})) to resize every image '
          'when the split is loaded.')
    images[i] = image
    progress.update(i + 1)
  progress.finish(count)
  return images


def formatted(split: Split, image_format: ImageFormat) -> Split:
  """`split` in `image_format` (for data generated in memory)."""
  if not image_format.changes_images:
    return split
  images = fill(split.num_examples, lambda i, channels: (
      image_format.apply(split.images[i], channels), split.images.shape[-1]),
      image_format, in_memory, 'the generated images')
  return Split(images, split.labels, split.class_names)
