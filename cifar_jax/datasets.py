"""Data sources: whole splits decoded once into uint8 arrays, cached on disk, memory-mapped.

CIFAR-10 is 150 MB as uint8, so a split is decoded once (with progress on the
terminal when that takes a while), made one size and channel count
(`image_format`: `config.dataset.image_size`, `channels`), written to the
decoded cache and read back memory-mapped: a split larger than the host's
memory stays on disk, its batches read from the file as needed (`placement`).
Sources, chosen by `config.dataset.source`:

* ``tfds``: a tensorflow-datasets dataset (``config.dataset.name``, e.g.
  ``cifar10``). Needs TensorFlow. When the dataset is not prepared and its
  download server cannot be reached, loading stops within seconds with a
  message saying what to do, instead of tfds' minutes of retries.
* ``image_folder``: ``ROOT/<split>/<class>/*.{png,jpg,jpeg}``, or a ``.tar`` /
  ``.tar.gz`` archive holding such a tree (under any prefix). Read with Pillow;
  no TensorFlow needed. Classes are the sorted folder names.
* ``synthetic``: deterministic generated images whose class is learnable, for
  smoke runs and tests.

The cache (`config.dataset.cache_dir`; '' disables it, and splits are then
held in memory) holds one folder per split, source state and image format:
images.npy (memory-mapped), labels.npy, class_names.json.

Split expressions follow tfds slicing: ``train``, ``train[:90%]``,
``train[4500:]``. For image folders the slice is taken within every class over
the sorted file names, which gives a deterministic per-class holdout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
import glob
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
from typing import Any
import zlib

from absl import logging
import ml_collections
import numpy as np

from cifar_jax import fields as spec
from cifar_jax import image_format as image_format_lib
from cifar_jax import terminal
from cifar_jax.errors import UserError
from cifar_jax.image_format import ImageFormat, decode_channels
from cifar_jax.registry import Registry

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# Where tfds downloads CIFAR-10, SVHN and most other image datasets from.
TFDS_DOWNLOAD_HOST = ('storage.googleapis.com', 443)


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


def load_split(dataset_config: ml_collections.ConfigDict, split: str) -> Split:
  """Loads `split` of the source that `dataset_config` names, in its image format.

  Decoded splits of a source with files (tfds, image folders) are cached under
  `dataset_config.cache_dir` (empty: no cache), keyed by a fingerprint of the
  source files and by the image format, so a second run starts in seconds
  and a changed source (or size) is read again.
  """
  entry = SOURCES.get(dataset_config.source)
  image_format = ImageFormat.from_config(dataset_config)
  if entry.external:  # 'package.module:Name': its split, made one size and channel count
    return _formatted(entry.target(dataset_config).load(split), image_format)
  source: Source = entry.target
  load = lambda allocate: source.load(dataset_config, split, image_format, allocate)  # noqa: E731
  cache_dir = dataset_config.get('cache_dir')
  if source.fingerprint is None or not cache_dir:
    return load(_in_memory)
  key = '-'.join(filter(None, (dataset_config.source, source.cache_name(dataset_config), split,
                               image_format.key())))
  return _cached(os.path.expanduser(cache_dir), key,
                 lambda: source.fingerprint(dataset_config), load)


def split_label(dataset_config: ml_collections.ConfigDict, split: str, evaluation: bool = False
                ) -> str:
  """How messages name a split: "split 'test' of /data/pets" (`evaluation`: from eval_path)."""
  entry = SOURCES.get(dataset_config.source)
  if entry.external:
    return f'split {split!r} of {dataset_config.source}'
  return entry.target.label(dataset_config, split, evaluation)


def load_eval_split(dataset_config: ml_collections.ConfigDict) -> Split:
  """`dataset_config.eval_split`, from `dataset_config.eval_path` where that is set."""
  if dataset_config.get('eval_path'):
    dataset_config = ml_collections.ConfigDict({**dataset_config.to_dict(),
                                                'path': dataset_config.eval_path})
  return load_split(dataset_config, dataset_config.eval_split)


# ----------------------------------------------------------------------------
# The cache of decoded splits.


def _tree_fingerprint(path: str) -> str | None:
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


def _in_memory(count: int, shape: tuple[int, ...]) -> np.ndarray:
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


def _cached(cache_dir: str, key: str, fingerprint: Callable[[], str | None],
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


def _fill(count: int, read: Callable[[int, int], tuple[np.ndarray, int]],
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
      return _fill(count, read, image_format, allocate, what, channels=3, name=name)
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


def _formatted(split: Split, image_format: ImageFormat) -> Split:
  """`split` in `image_format` (for data generated in memory)."""
  if not image_format.changes_images:
    return split
  images = _fill(split.num_examples, lambda i, channels: (
      image_format.apply(split.images[i], channels), split.images.shape[-1]),
      image_format, _in_memory, 'the generated images')
  return Split(images, split.labels, split.class_names)


# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# tensorflow-datasets.


def _download_server_reachable(timeout_s: float = 5.0) -> bool:
  """True when tfds' download server accepts a connection within `timeout_s`.

  Name resolution ignores socket timeouts, so the check runs in a daemon
  thread that is abandoned (and cannot delay the exit) after `timeout_s`.
  """
  reachable = threading.Event()

  def connect() -> None:
    try:
      with socket.create_connection(TFDS_DOWNLOAD_HOST, timeout=timeout_s):
        reachable.set()
    except OSError:
      pass

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return reachable.is_set()


def _tfds_data_dir(data_dir: str | None) -> str:
  """Where tfds keeps prepared datasets: data_dir, $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(
      data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _load_tfds(name: str, split: str, data_dir: str | None, image_format: ImageFormat,
               allocate: Allocate) -> Split:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
        'config.dataset.source="tfds" needs tensorflow and tensorflow-datasets '
        '(pip install tensorflow-cpu tensorflow-datasets), or use an image folder.'
    ) from e
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
        f'tensorflow-datasets has no dataset {name!r}; check config.dataset.name.') from e
  if not builder.is_prepared():
    if not _download_server_reachable():
      raise UserError(
          f'tfds dataset {name!r} is not prepared in {builder.data_dir_root} and its '
          f'download server {TFDS_DOWNLOAD_HOST[0]} cannot be reached (offline?): prepare it '
          f'on a connected machine (python -m cifar_jax.main ... or '
          f'tfds.builder({name!r}).download_and_prepare()) and copy ~/tensorflow_datasets '
          'here (or point config.dataset.data_dir at it), or train from an image folder '
          '(config.dataset.source="image_folder").'
      )
    builder.download_and_prepare()
  what = f'split {split!r} of tfds dataset {name!r}'
  dataset = builder.as_dataset(split=split, as_supervised=True)
  image_key = (builder.info.supervised_keys or ('image',))[0]
  if None not in builder.info.features[image_key].shape:
    # One size: whole batches of 10,000 rather than batch_size=-1, which needs a
    # known cardinality (and crashes TensorFlow on generated datasets).
    dataset = dataset.batch(10_000)
  else:  # images of many sizes: one at a time, each made the format's size
    dataset = dataset.map(lambda image, label: (image[None], label[None]))
  images, labels = [], []
  for batch_images, batch_labels in tfds.as_numpy(dataset):
    images.extend(batch_images)
    labels.append(batch_labels)
  if not images:
    raise UserError(f'Split {split!r} of tfds dataset {name!r} is empty; check the split.')
  channels = max(image.shape[-1] for image in images) if not image_format.channels else 0
  filled = _fill(len(images), lambda i, c: (image_format.apply(images[i], c), images[i].shape[-1]),
                 image_format, allocate, what, channels)
  class_names = tuple(builder.info.features['label'].names)
  return Split(filled, np.concatenate(labels).astype(np.int32), class_names)


# ----------------------------------------------------------------------------
# Image folders and archives of them.


def _is_archive(path: str) -> bool:
  return path.endswith(('.tar', '.tar.gz', '.tgz'))


def _image_entries(path: str, split_name: str) -> Iterator[tuple[str, str, bytes | None]]:
  """Yields (class name, file path, bytes or None for files on disk)."""
  if _is_archive(path):
    mib = os.path.getsize(path) // 2**20
    progress = terminal.ProgressLine(f'Reading {path}', mib, 'MiB')
    try:
      with tarfile.open(path, 'r:*') as archive:
        # The compressed file under gzip (or the tar itself): how far the reading has come.
        raw = getattr(archive.fileobj, 'fileobj', archive.fileobj)
        for member in archive:
          progress.update(raw.tell() // 2**20)
          parts = member.name.split('/')
          if (
              member.isfile()
              and len(parts) >= 3
              and parts[-3] == split_name
              and parts[-1].lower().endswith(IMAGE_EXTENSIONS)
          ):
            yield parts[-2], f'{path}:{member.name}', archive.extractfile(member).read()
    except (EOFError, tarfile.ReadError, zlib.error) as e:
      # A download or copy cut short: gzip's stream or tar's blocks end early.
      raise UserError(
          f'Archive {path} is incomplete or corrupt ({type(e).__name__}: {e}); download or '
          'copy it again (or unpack it and set config.dataset.path to the folder).') from e
    progress.finish(mib)
    return
  split_dir = os.path.join(path, split_name)
  if not os.path.isdir(split_dir):
    raise UserError(
        f'Image folder {path!r} has no split folder {split_name!r}; expected '
        f'{split_dir}/<class>/*.png|jpg.'
    )
  for class_name in sorted(os.listdir(split_dir)):
    class_dir = os.path.join(split_dir, class_name)
    if os.path.isdir(class_dir):
      for file_name in sorted(os.listdir(class_dir)):
        if file_name.lower().endswith(IMAGE_EXTENSIONS):
          yield class_name, os.path.join(class_dir, file_name), None


def _decode(file_path: str, data: bytes | None, image_format: ImageFormat, channels: int
            ) -> tuple[np.ndarray, int]:
  """The image at `file_path` (or its bytes) in `image_format`, and its own channel count."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data) if data is not None else file_path) as image:
      native = decode_channels(image.mode)
      return image_format.apply(image, channels or native), native
  except (OSError, ValueError, SyntaxError) as e:
    raise UserError(f'Cannot read image {file_path}: {e}; remove or replace that file.') from e


def _load_image_folder(path: str, split: str, image_format: ImageFormat, allocate: Allocate
                       ) -> Split:
  if not path:
    raise UserError('config.dataset.path is empty; set it to an image folder or a .tar.gz of one.')
  if not os.path.exists(path):
    raise UserError(f'Image folder or archive {path!r} does not exist; check config.dataset.path.')
  split_name, start, stop = parse_split(split)
  by_class: dict[str, list[tuple[str, bytes | None]]] = {}
  for class_name, file_path, data in _image_entries(path, split_name):
    by_class.setdefault(class_name, []).append((file_path, data))
  if not by_class:
    raise UserError(
        f'No images found for split {split_name!r} in {path!r}; expected '
        f'<root>/{split_name}/<class>/*.png|jpg.'
    )
  class_names = tuple(sorted(by_class))
  files, labels = [], []
  for label, class_name in enumerate(class_names):
    chosen = slice_items(sorted(by_class[class_name]), start, stop)
    files += chosen
    labels += [label] * len(chosen)
  if not files:
    raise UserError(f'Split {split!r} of {path!r} selects no images; check the slice.')
  images = _fill(len(files), lambda i, channels: _decode(*files[i], image_format, channels),
                 image_format, allocate, f'split {split!r} of {path}',
                 name=lambda i: f'Image {files[i][0]}')
  return Split(images, np.asarray(labels, np.int32), class_names)


# ----------------------------------------------------------------------------
# Synthetic data.


def _load_synthetic(dataset_config: ml_collections.ConfigDict, split: str) -> Split:
  """Class templates plus noise; learnable in a few hundred steps.

  The templates depend only on `dataset_config.seed`; the noise and labels
  also on the split name, so 'train' and 'test' are different draws.
  """
  split_name, start, stop = parse_split(split)
  sizes = {'train': dataset_config.synthetic_train_size, 'test': dataset_config.synthetic_test_size}
  if split_name not in sizes:
    raise UserError(f'Synthetic data has splits "train" and "test", not {split_name!r}.')
  num_classes = dataset_config.synthetic_num_classes
  size = dataset_config.synthetic_image_size
  template_rng = np.random.default_rng(dataset_config.seed)
  # Low-frequency templates: 4x4 colour blocks upsampled to the image size.
  blocks = template_rng.uniform(40, 215, size=(num_classes, 4, 4, 3))
  templates = np.repeat(np.repeat(blocks, size // 4, axis=1), size // 4, axis=2)
  split_rng = np.random.default_rng([dataset_config.seed, 1 + sorted(sizes).index(split_name)])
  labels = split_rng.integers(0, num_classes, size=sizes[split_name]).astype(np.int32)
  noise = split_rng.normal(0.0, 40.0, size=(len(labels), size, size, 3))
  images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
  index = slice_items(list(range(len(labels))), start, stop)
  class_names = tuple(f'class_{i}' for i in range(num_classes))
  return Split(images[index], labels[index], class_names)


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


# ----------------------------------------------------------------------------
# The sources, registered with their config fields.

@dataclasses.dataclass(frozen=True)
class Source:
  """A built-in source: how it loads a split (`load(dataset_config, split, image_format,
  allocate)`), fingerprints its files for the cache (None: not cached), names its cache
  entries and labels a split in messages; `check_split(c, field)` checks a split field."""

  load: Callable[[ml_collections.ConfigDict, str, ImageFormat, Allocate], Split]
  fingerprint: Callable[[ml_collections.ConfigDict], str | None] | None
  cache_name: Callable[[ml_collections.ConfigDict], str]
  label: Callable[[ml_collections.ConfigDict, str, bool], str]
  check_split: Callable[[spec.Checker, str], None]


SOURCES = Registry('data source', 'config.dataset.source',
                   'docs/development.md, "Adding a data source"')


def _parsed_split(c: spec.Checker, field: str) -> str:
  expression = c.text(f'dataset.{field}')
  match = SPLIT_RE.match(expression.replace(' ', ''))
  if match is None:
    raise UserError(f'Cannot parse split {expression!r} (config.dataset.{field}); write e.g. '
                    '"train", "train[:90%]" or "train[4500:]".')
  return match['name']


def _check_tfds_split(c: spec.Checker, field: str) -> None:
  if not c.text(f'dataset.{field}'):
    raise UserError(f'config.dataset.{field} is empty; name a split such as "train".')


def _check_synthetic_split(c: spec.Checker, field: str) -> None:
  name = _parsed_split(c, field)
  if name not in ('train', 'test'):
    raise UserError(f'Synthetic data has splits "train" and "test", not {name!r} '
                    f'(config.dataset.{field}).')


def _check_eval_path(c: spec.Checker, path: str) -> None:
  if c.text(path) and c.config.dataset.source != 'image_folder':
    raise UserError(f'config.dataset.eval_path is set but config.dataset.source is '
                    f'{c.config.dataset.source!r}; a separate eval folder is for '
                    'source=image_folder.')


def _check_synthetic_size(c: spec.Checker, path: str) -> None:
  size = c.integer(path, 4)
  if size % 4:
    raise UserError(f'config.dataset.synthetic_image_size is {size}; it must be a multiple of '
                    '4 (the synthetic class templates are 4x4 blocks).')


def _check_synthetic_count(c: spec.Checker, path: str) -> None:
  c.integer(path, 1 if c.config.dataset.source == 'synthetic' else 0)


SOURCES.register('tfds', fields={
    'name': spec.Field('cifar10', spec.text(), 'the tfds dataset'),
    'data_dir': spec.Field(None, spec.text(allow_none=True), "tfds' data_dir (None: the default)"),
}, doc='a tensorflow-datasets dataset (needs TensorFlow)')(Source(
    load=lambda config, split, image_format, allocate: _load_tfds(
        config.name, split, config.get('data_dir'), image_format, allocate),
    fingerprint=lambda config: _tree_fingerprint(
        os.path.join(_tfds_data_dir(config.get('data_dir')), config.name)),
    cache_name=lambda config: config.name,
    label=lambda config, split, evaluation: f'split {split!r} of tfds dataset {config.name!r}',
    check_split=_check_tfds_split))
SOURCES.register('image_folder', fields={
    'path': spec.Field('', spec.text(), 'ROOT/<split>/<class>/*.png|jpg, or a .tar(.gz) of one'),
    'eval_path': spec.Field('', _check_eval_path, "another folder for eval_split ('': path)",
                         before=''),
}, doc='ROOT/<split>/<class>/*.png|jpg|jpeg, or an archive of one')(Source(
    load=lambda config, split, image_format, allocate: _load_image_folder(
        config.path, split, image_format, allocate),
    fingerprint=lambda config: _tree_fingerprint(config.path),
    cache_name=lambda config: os.path.basename(os.path.normpath(config.path or 'images')),
    label=lambda config, split, evaluation: (
        f'split {split!r} of {(config.get("eval_path") if evaluation else None) or config.path}'),
    check_split=lambda c, field: _parsed_split(c, field) and None))
SOURCES.register('synthetic', fields={
    'seed': spec.Field(0, spec.integer(0), 'the class templates and noise'),
    'synthetic_num_classes': spec.Field(10, spec.integer(2), 'classes'),
    'synthetic_image_size': spec.Field(32, _check_synthetic_size, 'pixels, a multiple of 4'),
    'synthetic_train_size': spec.Field(0, _check_synthetic_count, "split 'train''s examples"),
    'synthetic_test_size': spec.Field(0, _check_synthetic_count, "split 'test''s examples"),
}, doc='generated images whose class is learnable, for smoke runs and tests')(Source(
    load=lambda config, split, image_format, allocate: _formatted(
        _load_synthetic(config, split), image_format),
    fingerprint=None,
    cache_name=lambda config: 'synthetic',
    label=lambda config, split, evaluation: f'synthetic split {split!r}',
    check_split=_check_synthetic_split))
PLACEMENTS = ('auto', 'device', 'host')  # placement.py's


def _check_image_size(c: spec.Checker, path: str) -> None:
  size = c.get(path)
  square = isinstance(size, int) and not isinstance(size, bool) and size >= 0
  pair = (isinstance(size, (tuple, list)) and len(size) == 2 and all(
      isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in size))
  if not (square or pair):
    raise UserError(f'config.dataset.image_size is {size!r}; use 0 (the data\'s size), N '
                    '(N x N pixels) or (height, width).')


def _check_channels(c: spec.Checker, path: str) -> None:
  channels = c.get(path)
  if channels not in image_format_lib.CHANNELS or isinstance(channels, bool):
    raise UserError(f'config.dataset.channels is {channels!r}; use 0 (the data\'s), 1 (grey) '
                    'or 3 (colour).')


def _check_source(c: spec.Checker, path: str) -> None:
  entry = SOURCES.get(c.text(path))
  for field in ('train_split', 'eval_split'):
    if entry.external:
      c.text(f'dataset.{field}')
    else:
      entry.target.check_split(c, field)
  if entry.external:
    spec.check_section(c, 'dataset', entry.fields)


FIELDS = {
    'dataset.source': spec.Field('tfds', _check_source,
                                 f'{SOURCES.names()} or package.module:Name'),
    'dataset.train_split': spec.Field('train', lambda c, p: c.get(p), 'tfds-style slicing'),
    'dataset.eval_split': spec.Field('test', lambda c, p: c.get(p), 'the split scored'),
    'dataset.cache_dir': spec.Field('~/.cache/cifar_jax', spec.text(), "decoded splits; '': none"),
    'dataset.image_size': spec.Field(0, _check_image_size, '0 (as loaded), N or (H, W)', before=0),
    'dataset.resize_method': spec.Field('bilinear', spec.choice(image_format_lib.RESIZE_METHODS),
                                     'antialiased filter', before='bilinear'),
    'dataset.resize_aspect': spec.Field('crop', spec.choice(image_format_lib.RESIZE_ASPECTS),
                                     'crop | pad | stretch', before='crop'),
    'dataset.channels': spec.Field(0, _check_channels, "0 (the data's), 1 or 3", before=0),
    'dataset.placement': spec.Field('auto', spec.choice(PLACEMENTS), 'device | host | auto',
                                 before='auto'),  # either gives the same parameters
}
# Every registered source's fields are in config.dataset (a recipe switches source by name).
FIELDS.update({f'dataset.{name}': field for entry in SOURCES.entries()
               for name, field in entry.fields.items()})


def check_config(c: spec.Checker) -> None:
  spec.check_section(c, '', FIELDS)


def fill_added(saved: dict) -> None:
  """A saved config's dataset group with the fields its sources gained since."""
  for entry in SOURCES.entries():
    spec.fill_added(saved, 'dataset', entry.fields)


def configured_image_size(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """The training images' (height, width) where the config alone fixes it, else None."""
  pair = image_format_lib.size_pair(config.dataset.image_size)
  if pair is None and config.dataset.source == 'synthetic':
    size = config.dataset.synthetic_image_size
    pair = (size, size)
  return pair

