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

* ``'package.module:Name'``: a source outside the package (docs/development.md).

Every source, built in or from outside, is a class built from `config.dataset` whose
`load(split)` returns a `Split`; the built-in ones are registered in `SOURCES` with the
`config.dataset` fields they read (one from outside declares them in its `FIELDS`). Optional
hooks, which the built-in ones define: `load_formatted(split, image_format, allocate)` decodes
straight into the one size and channel count (and into the cache's file, for a split larger
than memory), `fingerprint()` of its files makes it cached (with `cache_name()` in the key),
`label(split, evaluation)` names a split in messages, and `check_split(checker, field)` (a
static method) checks a split field when the config is. The decoded cache is
`decoded_cache`; a split and split expressions are `splits`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import io
import os
import tarfile
import zlib

import ml_collections
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import terminal
from cifar_jax.core.errors import UserError
from cifar_jax.core.registry import Registry
from cifar_jax.data import decoded_cache, tfds_source
from cifar_jax.data import image_format as image_format_lib
from cifar_jax.data.decoded_cache import Allocate
from cifar_jax.data.image_format import ImageFormat, decode_channels
from cifar_jax.data.splits import SPLIT_RE, Split, parse_split, slice_items

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


def load_split(dataset_config: ml_collections.ConfigDict, split: str) -> Split:
  """Loads `split` of the source that `dataset_config` names, in its image format.

  Decoded splits of a source with files (tfds, image folders) are cached under
  `dataset_config.cache_dir` (empty: no cache), keyed by a fingerprint of the
  source files and by the image format, so a second run starts in seconds
  and a changed source (or size) is read again.
  """
  source = SOURCES.get(dataset_config.source).target(dataset_config)
  image_format = ImageFormat.from_config(dataset_config)
  if hasattr(source, 'load_formatted'):
    load = lambda allocate: source.load_formatted(split, image_format, allocate)  # noqa: E731
  else:  # its split as it is, made one size and channel count
    load = lambda allocate: decoded_cache.formatted(source.load(split), image_format)  # noqa: E731
  identity = cache_identity(dataset_config, split)
  if identity is None:
    return load(decoded_cache.in_memory)
  key, fingerprint = identity
  return decoded_cache.cached(os.path.expanduser(dataset_config.cache_dir), key, fingerprint,
                              load)


def cache_identity(dataset_config: ml_collections.ConfigDict, split: str
                   ) -> tuple[str, Callable[[], str | None]] | None:
  """The decoded cache's key of `split` and the fingerprint of its source files; None where
  the split is not cached (no cache_dir, or a source without `fingerprint`: generated data,
  most from outside). What is derived from a split (its corrupted copies) is cached under the
  same identity."""
  source = SOURCES.get(dataset_config.source).target(dataset_config)
  if not hasattr(source, 'fingerprint') or not dataset_config.get('cache_dir'):
    return None
  name = source.cache_name() if hasattr(source, 'cache_name') else ''
  key = '-'.join(filter(None, (dataset_config.source.replace(':', '.'), name, split,
                               ImageFormat.from_config(dataset_config).key())))
  return key, source.fingerprint


def split_label(dataset_config: ml_collections.ConfigDict, split: str, evaluation: bool = False
                ) -> str:
  """How messages name a split: "split 'test' of /data/pets" (`evaluation`: from eval_path)."""
  source = SOURCES.get(dataset_config.source).target(dataset_config)
  if hasattr(source, 'label'):
    return source.label(split, evaluation)
  return f'split {split!r} of {dataset_config.source}'


def load_eval_split(dataset_config: ml_collections.ConfigDict) -> Split:
  """`dataset_config.eval_split`, from `dataset_config.eval_path` where that is set."""
  if dataset_config.get('eval_path'):
    dataset_config = ml_collections.ConfigDict({**dataset_config.to_dict(),
                                                'path': dataset_config.eval_path})
  return load_split(dataset_config, dataset_config.eval_split)


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
  images = decoded_cache.fill(
      len(files), lambda i, channels: _decode(*files[i], image_format, channels),
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


# ----------------------------------------------------------------------------
# The sources, registered with their config fields.

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


class _BuiltIn:
  """What the built-in sources share: built from config.dataset, and `load` as any source's."""

  def __init__(self, dataset: ml_collections.ConfigDict):
    self.dataset = dataset

  def load(self, split: str) -> Split:
    return self.load_formatted(split, ImageFormat.from_config(self.dataset),
                               decoded_cache.in_memory)


@SOURCES.register('tfds', fields={
    'name': spec.Field('cifar10', spec.text(), 'the tfds dataset'),
    'data_dir': spec.Field(None, spec.text(allow_none=True), "tfds' data_dir (None: the default)"),
}, doc='a tensorflow-datasets dataset (needs TensorFlow)')
class TfdsSource(_BuiltIn):
  """A tensorflow-datasets dataset (config.dataset.name), prepared in its data_dir."""

  check_split = staticmethod(_check_tfds_split)

  def load_formatted(self, split: str, image_format: ImageFormat, allocate: Allocate) -> Split:
    return tfds_source.load(self.dataset.name, split, self.dataset.get('data_dir'),
                            image_format, allocate)

  def fingerprint(self) -> str | None:
    return decoded_cache.tree_fingerprint(
        os.path.join(tfds_source.data_dir(self.dataset.get('data_dir')), self.dataset.name))

  def cache_name(self) -> str:
    return self.dataset.name

  def label(self, split: str, evaluation: bool) -> str:
    del evaluation
    return f'split {split!r} of tfds dataset {self.dataset.name!r}'


@SOURCES.register('image_folder', fields={
    'path': spec.Field('', spec.text(), 'ROOT/<split>/<class>/*.png|jpg, or a .tar(.gz) of one'),
    'eval_path': spec.Field('', _check_eval_path, "another folder for eval_split ('': path)",
                         before=''),
}, doc='ROOT/<split>/<class>/*.png|jpg|jpeg, or an archive of one')
class ImageFolderSource(_BuiltIn):
  """ROOT/<split>/<class>/*.png|jpg|jpeg (config.dataset.path), or a .tar(.gz) of one."""

  check_split = staticmethod(lambda c, field: _parsed_split(c, field) and None)

  def load_formatted(self, split: str, image_format: ImageFormat, allocate: Allocate) -> Split:
    return _load_image_folder(self.dataset.path, split, image_format, allocate)

  def fingerprint(self) -> str | None:
    return decoded_cache.tree_fingerprint(self.dataset.path)

  def cache_name(self) -> str:
    return os.path.basename(os.path.normpath(self.dataset.path or 'images'))

  def label(self, split: str, evaluation: bool) -> str:
    folder = (self.dataset.get('eval_path') if evaluation else None) or self.dataset.path
    return f'split {split!r} of {folder}'


@SOURCES.register('synthetic', fields={
    'seed': spec.Field(0, spec.integer(0), 'the class templates and noise'),
    'synthetic_num_classes': spec.Field(10, spec.integer(2), 'classes'),
    'synthetic_image_size': spec.Field(32, _check_synthetic_size, 'pixels, a multiple of 4'),
    'synthetic_train_size': spec.Field(0, _check_synthetic_count, "split 'train''s examples"),
    'synthetic_test_size': spec.Field(0, _check_synthetic_count, "split 'test''s examples"),
}, doc='generated images whose class is learnable, for smoke runs and tests')
class SyntheticSource(_BuiltIn):
  """Generated images whose class is learnable (not cached: no `fingerprint`)."""

  check_split = staticmethod(_check_synthetic_split)

  def load_formatted(self, split: str, image_format: ImageFormat, allocate: Allocate) -> Split:
    del allocate
    return decoded_cache.formatted(_load_synthetic(self.dataset, split), image_format)

  def label(self, split: str, evaluation: bool) -> str:
    del evaluation
    return f'synthetic split {split!r}'


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
  check_split = getattr(entry.target, 'check_split', None)
  for field in ('train_split', 'eval_split'):
    if check_split is None:
      c.text(f'dataset.{field}')
    else:
      check_split(c, field)
  if entry.external:
    spec.check_section(c, 'dataset', entry.fields)


FIELDS = {
    'dataset.source': spec.Field('tfds', _check_source,
                                 f'{SOURCES.names()} or package.module:Name'),
    'dataset.train_split': spec.Field('train', lambda c, p: c.get(p), 'tfds-style slicing'),
    'dataset.eval_split': spec.Field('test', lambda c, p: c.get(p), 'the split scored'),
    'dataset.cache_dir': spec.Field('~/.cache/cifar_jax', spec.text(), "decoded splits; '': none"),
    'dataset.image_size': spec.Field(0, _check_image_size, '0 (as loaded), N or (H, W)', before=0,
                                     any_type=True),
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


def fill_added(saved: dict) -> None:
  """A saved config's dataset group with the fields its sources gained since."""
  for entry in SOURCES.entries():
    spec.fill_added(saved, 'dataset', entry.fields)


spec.declare(__name__, FIELDS, upgrade=fill_added)


def configured_image_size(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """The training images' (height, width) where the config alone fixes it, else None."""
  pair = image_format_lib.size_pair(config.dataset.image_size)
  if pair is None and config.dataset.source == 'synthetic':
    size = config.dataset.synthetic_image_size
    pair = (size, size)
  return pair

