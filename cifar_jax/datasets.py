"""Data sources: whole splits loaded into memory as uint8 arrays.

CIFAR-10 is 150 MB as uint8, so every split is read once into host memory and
then kept on the accelerator (see `input_pipeline`). Sources, chosen by
`config.dataset.source`:

* ``tfds``: a tensorflow-datasets dataset (``config.dataset.name``, e.g.
  ``cifar10``). Needs TensorFlow. When the dataset is not prepared and its
  download server cannot be reached, loading stops within seconds with a
  message saying what to do, instead of tfds' minutes of retries.
* ``image_folder``: ``ROOT/<split>/<class>/*.{png,jpg,jpeg}``, or a ``.tar`` /
  ``.tar.gz`` archive holding such a tree (under any prefix). Read with Pillow;
  no TensorFlow needed. Classes are the sorted folder names.
* ``synthetic``: deterministic generated images whose class is learnable, for
  smoke runs and tests.

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
import os
import re
import socket
import tarfile
import threading
from typing import Any
import zlib

from absl import logging
import ml_collections
import numpy as np

from cifar_jax.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
# Where tfds downloads CIFAR-10, SVHN and most other image datasets from.
TFDS_DOWNLOAD_HOST = ('storage.googleapis.com', 443)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in host memory."""

  images: np.ndarray  # uint8 [N, H, W, C]
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
  """Loads `split` of the source that `dataset_config` names.

  Decoded tfds and image-folder splits are cached as .npz files under
  `dataset_config.cache_dir` (empty: no cache), keyed by a fingerprint of the
  source files, so a second run starts in seconds and a changed source is
  read again.
  """
  source = dataset_config.source
  if source == 'synthetic':
    return _load_synthetic(dataset_config, split)
  if source == 'tfds':
    data_dir = dataset_config.get('data_dir')
    load = lambda: _load_tfds(dataset_config.name, split, data_dir)
    fingerprint = lambda: _tree_fingerprint(
        os.path.join(_tfds_data_dir(data_dir), dataset_config.name))
    name = dataset_config.name
  else:  # image_folder
    load = lambda: _load_image_folder(dataset_config.path, split)
    fingerprint = lambda: _tree_fingerprint(dataset_config.path)
    name = os.path.basename(os.path.normpath(dataset_config.path or 'images'))
  cache_dir = dataset_config.get('cache_dir')
  if not cache_dir:
    return load()
  return _cached(os.path.expanduser(cache_dir), f'{source}-{name}-{split}', fingerprint, load)


def split_label(dataset_config: ml_collections.ConfigDict, split: str, evaluation: bool = False
                ) -> str:
  """How messages name a split: "split 'test' of /data/pets" (`evaluation`: from eval_path)."""
  source = dataset_config.source
  if source == 'synthetic':
    return f'synthetic split {split!r}'
  if source == 'tfds':
    return f'split {split!r} of tfds dataset {dataset_config.name!r}'
  path = (dataset_config.get('eval_path') if evaluation else None) or dataset_config.path
  return f'split {split!r} of {path}'


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
  """The cache file of `key` (readable, plus a hash: 'train[:10]' != 'train[10:]')."""
  readable = re.sub(r'[^\w.%-]+', '_', key)
  key_hash = hashlib.sha256(key.encode()).hexdigest()[:8]
  return os.path.join(cache_dir, f'{readable}-{key_hash}-{fingerprint}.npz')


def _cached(cache_dir: str, key: str, fingerprint: Callable[[], str | None],
            load: Callable[[], Split]) -> Split:
  before = fingerprint()
  if before is not None:
    path = cache_path(cache_dir, key, before)
    if os.path.exists(path):
      logging.info('Reading cached split %s from %s.', key, path)
      with np.load(path) as cached:
        return Split(cached['images'], cached['labels'], tuple(cached['class_names'].tolist()))
  split = load()
  after = fingerprint()  # tfds may have just prepared the data
  if after is not None:
    path = cache_path(cache_dir, key, after)
    os.makedirs(cache_dir, exist_ok=True)
    # Old caches of this key belong to an earlier state of the source.
    for stale in glob.glob(cache_path(cache_dir, key, '*')):
      os.remove(stale)
    temporary = f'{path}.{os.getpid()}.tmp.npz'
    np.savez(temporary, images=split.images, labels=split.labels,
             class_names=np.asarray(split.class_names))
    os.replace(temporary, path)
    logging.info('Cached split %s in %s.', key, path)
  return split


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


def _load_tfds(name: str, split: str, data_dir: str | None) -> Split:
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
  # Whole batches of 10,000 rather than batch_size=-1, which needs a known
  # cardinality (and crashes TensorFlow on generated datasets).
  dataset = builder.as_dataset(split=split, as_supervised=True).batch(10_000)
  batches = list(tfds.as_numpy(dataset))
  if not batches:
    raise UserError(f'Split {split!r} of tfds dataset {name!r} is empty; check the split.')
  images = np.concatenate([b[0] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  class_names = tuple(builder.info.features['label'].names)
  return Split(np.asarray(images, np.uint8), np.asarray(labels, np.int32), class_names)


# ----------------------------------------------------------------------------
# Image folders and archives of them.


def _is_archive(path: str) -> bool:
  return path.endswith(('.tar', '.tar.gz', '.tgz'))


def _image_entries(path: str, split_name: str) -> Iterator[tuple[str, str, bytes | None]]:
  """Yields (class name, file path, bytes or None for files on disk)."""
  if _is_archive(path):
    try:
      with tarfile.open(path, 'r:*') as archive:
        for member in archive:
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


def _decode(file_path: str, data: bytes | None) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data) if data is not None else file_path) as image:
      return np.asarray(image.convert('RGB'), np.uint8)
  except (OSError, ValueError, SyntaxError) as e:
    raise UserError(f'Cannot read image {file_path}: {e}; remove or replace that file.') from e


def _load_image_folder(path: str, split: str) -> Split:
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
  images, labels = [], []
  for label, class_name in enumerate(class_names):
    files = sorted(by_class[class_name])
    for file_path, data in slice_items(files, start, stop):
      image = _decode(file_path, data)
      if images and image.shape != images[0].shape:
        raise UserError(
            f'Image {file_path} is {image.shape}, unlike the others ({images[0].shape}); '
            'resize the folder to one size.'
        )
      images.append(image)
      labels.append(label)
  if not images:
    raise UserError(f'Split {split!r} of {path!r} selects no images; check the slice.')
  return Split(np.stack(images), np.asarray(labels, np.int32), class_names)


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
