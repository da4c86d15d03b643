"""Sources on small generated data: image folders and archives, tfds (mocked), synthetic."""

import os
import re
import tarfile
import time

import numpy as np
from PIL import Image
import pytest

from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets, decoded_cache, splits, tfds_source
from tests.conftest import tiny_config

CLASSES = ('cat', 'dog', 'ship')


def _write_folder(root, per_class=5, size=8):
  """ROOT/train/<class>/NNNN.png|jpg; pixel (0, 0) encodes (class, index)."""
  expected = {}
  for label, name in enumerate(CLASSES):
    os.makedirs(os.path.join(root, 'train', name))
    for i in range(per_class):
      image = np.full((size, size, 3), 10 * label + i, np.uint8)
      extension = 'png' if i % 2 else 'jpg'
      path = os.path.join(root, 'train', name, f'{i:04d}.{extension}')
      Image.fromarray(image).save(path, quality=100)
      expected[(label, i)] = image
  return expected


def _config(path):
  config = tiny_config()
  config.dataset.source = 'image_folder'
  config.dataset.path = str(path)
  return config.dataset


def test_image_folder_labels_classes_and_pixels(tmp_path):
  expected = _write_folder(tmp_path)
  split = datasets.load_split(_config(tmp_path), 'train')
  assert split.class_names == CLASSES
  assert split.images.shape == (15, 8, 8, 3) and split.images.dtype == np.uint8
  np.testing.assert_array_equal(split.labels, np.repeat([0, 1, 2], 5))
  for n, (label, i) in enumerate(sorted(expected)):
    np.testing.assert_allclose(split.images[n], expected[(label, i)], atol=2)  # JPEG


def test_archive_reads_the_same_as_the_folder(tmp_path):
  _write_folder(tmp_path / 'data')
  archive = tmp_path / 'data.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tmp_path / 'data', arcname='prefix/cifar')
  from_folder = datasets.load_split(_config(tmp_path / 'data'), 'train')
  from_archive = datasets.load_split(_config(archive), 'train')
  np.testing.assert_array_equal(from_folder.images, from_archive.images)
  np.testing.assert_array_equal(from_folder.labels, from_archive.labels)
  assert from_archive.class_names == CLASSES


@pytest.mark.parametrize('kept', [0.5, 0.97])
def test_a_truncated_archive_is_one_sentence_naming_it(tmp_path, kept):
  _write_folder(tmp_path / 'data', per_class=20, size=16)
  archive = tmp_path / 'data.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tmp_path / 'data', arcname='cifar')
  payload = archive.read_bytes()
  archive.write_bytes(payload[:int(len(payload) * kept)])  # a copy cut short
  with pytest.raises(UserError, match=r'Archive .*data\.tar\.gz is incomplete or corrupt'):
    datasets.load_split(_config(archive), 'train')


def test_per_class_holdout_is_disjoint_and_deterministic(tmp_path):
  _write_folder(tmp_path, per_class=10)
  config = _config(tmp_path)
  train = datasets.load_split(config, 'train[:70%]')
  held_out = datasets.load_split(config, 'train[7:]')
  assert np.bincount(train.labels).tolist() == [7, 7, 7]
  assert np.bincount(held_out.labels).tolist() == [3, 3, 3]
  # Pixel value 10 * label + index identifies each file.
  train_ids = set(train.images[:, 0, 0, 0].tolist())
  held_ids = set(held_out.images[:, 0, 0, 0].tolist())
  assert not train_ids & held_ids
  np.testing.assert_array_equal(datasets.load_split(config, 'train[7:]').images,
                                held_out.images)


def test_split_expressions():
  assert datasets.parse_split('train[:90%]') == ('train', None, '90%')
  assert datasets.parse_split('test') == ('test', None, None)
  items = list(range(10))
  assert datasets.slice_items(items, None, '90%') == items[:9]
  assert datasets.slice_items(items, '-2', None) == [8, 9]
  with pytest.raises(UserError, match='Cannot parse split'):
    datasets.parse_split('train[::2]')


def test_corrupt_image_is_named(tmp_path):
  _write_folder(tmp_path)
  bad = tmp_path / 'train' / 'dog' / '0002.jpg'
  bad.write_bytes(b'not a jpeg')
  with pytest.raises(UserError, match='0002.jpg'):
    datasets.load_split(_config(tmp_path), 'train')


def test_missing_or_empty_folder(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    datasets.load_split(_config(tmp_path / 'nope'), 'train')
  (tmp_path / 'train').mkdir()
  with pytest.raises(UserError, match='No images found'):
    datasets.load_split(_config(tmp_path), 'train')
  with pytest.raises(UserError, match='no split folder'):
    datasets.load_split(_config(tmp_path), 'test')


def test_synthetic_is_deterministic_and_splits_differ():
  config = tiny_config().dataset
  a = datasets.load_split(config, 'train')
  b = datasets.load_split(config, 'train')
  test = datasets.load_split(config, 'test')
  np.testing.assert_array_equal(a.images, b.images)
  assert a.num_examples == 512 and test.num_examples == 200
  assert not np.array_equal(a.images[:200], test.images)


def test_tfds_cifar10_through_mock_data(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds_source, '_download_server_reachable', lambda: True)
  config = tiny_config()
  config.dataset.source = 'tfds'
  config.dataset.name = 'cifar10'
  with tfds.testing.mock_data(num_examples=12):
    split = datasets.load_split(config.dataset, 'train')
  assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
  assert split.num_classes == 10  # mock_data has no label names, only their number
  assert split.labels.min() >= 0 and split.labels.max() < 10


@pytest.mark.parametrize('network', ['refuses', pytest.param('hangs', marks=pytest.mark.slow)])
def test_tfds_offline_fails_fast_with_directions(monkeypatch, tmp_path, network):
  pytest.importorskip('tensorflow_datasets')

  def unreachable(address, timeout=None):
    del address
    if network == 'hangs':  # e.g. DNS that never answers
      time.sleep(60)
    raise OSError('Network is unreachable')

  monkeypatch.setattr(tfds_source.socket, 'create_connection', unreachable)
  config = tiny_config()
  config.dataset.source = 'tfds'
  config.dataset.name = 'cifar10'
  config.dataset.data_dir = str(tmp_path)
  started = time.time()
  with pytest.raises(UserError) as error:
    datasets.load_split(config.dataset, 'train')
  assert time.time() - started < 10
  message = str(error.value)
  assert "'cifar10'" in message and str(tmp_path) in message and 'image folder' in message


def test_cache_hit_miss_and_invalidation(tmp_path, monkeypatch):
  _write_folder(tmp_path / 'data')
  config = _config(tmp_path / 'data')
  config.cache_dir = str(tmp_path / 'cache')
  decoded = []
  original = datasets._load_image_folder
  monkeypatch.setattr(datasets, '_load_image_folder',
                      lambda *a: decoded.append(a) or original(*a))
  first = datasets.load_split(config, 'train[:3]')
  assert len(decoded) == 1 and len(os.listdir(tmp_path / 'cache')) == 1
  second = datasets.load_split(config, 'train[:3]')
  assert len(decoded) == 1  # served from the cache
  np.testing.assert_array_equal(first.images, second.images)
  assert second.class_names == first.class_names
  datasets.load_split(config, 'train[3:]')  # another split: its own cache file
  assert len(decoded) == 2 and len(os.listdir(tmp_path / 'cache')) == 2
  # A changed source is read again, and its stale cache file replaced.
  changed = tmp_path / 'data' / 'train' / 'cat' / '0000.jpg'
  Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(changed, quality=100)
  os.utime(changed, ns=(10**18, 10**18))
  third = datasets.load_split(config, 'train[:3]')
  assert len(decoded) == 3
  assert third.images[0, 0, 0, 0] > 190
  assert len(os.listdir(tmp_path / 'cache')) == 2


def test_tfds_svhn_through_mock_data(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds_source, '_download_server_reachable', lambda: True)
  from experiments import svhn  # pylint: disable=g-import-not-at-top
  config = svhn.get_config()
  config.dataset.cache_dir = ''
  with tfds.testing.mock_data(num_examples=20):
    split = datasets.load_split(config.dataset, 'test')
  assert split.images.shape == (20, 32, 32, 3) and split.num_classes == 10


def test_describe_counts_and_moments():
  images = np.zeros((4, 2, 2, 3), np.uint8)
  images[:2] = 10
  images[2:, ..., 0] = 30
  split = datasets.Split(images, np.array([0, 0, 1, 2], np.int32), ('a', 'b', 'c'))
  text = splits.describe(split, 'train')
  assert 'train: 4 images of shape (2, 2, 3)' in text
  assert 'per-channel mean: 20.00, 5.00, 5.00' in text
  assert 'per-channel std:  10.00, 5.00, 5.00' in text
  assert '  0 a                    2' in text and '  2 c                    1' in text


def _write_images(root, images_by_class):
  """ROOT/train/<class>/NNNN.png of the given uint8 arrays (grey [H, W] or colour [H, W, 3])."""
  for name, images in images_by_class.items():
    os.makedirs(os.path.join(root, 'train', name))
    for i, image in enumerate(images):
      Image.fromarray(image).save(os.path.join(root, 'train', name, f'{i:04d}.png'))


def test_a_folder_of_mixed_sizes_is_refused_with_the_field_to_set_then_resized(tmp_path):
  rng = np.random.default_rng(0)
  sizes = [(48, 48), (80, 64), (63, 75), (64, 64)]
  _write_images(tmp_path, {'cat': [rng.integers(0, 256, (*s, 3), dtype=np.uint8)
                                   for s in sizes[:2]],
                           'dog': [rng.integers(0, 256, (*s, 3), dtype=np.uint8)
                                   for s in sizes[2:]]})
  config = _config(tmp_path)
  with pytest.raises(UserError, match=r'Image .*cat/0001.png is 80x64, unlike Image .*cat/0000.png '
                                      r'\(48x48\); set config.dataset.image_size \(e.g. 48 or '
                                      r'\(48, 48\)\)'):
    datasets.load_split(config, 'train')
  config.image_size = (32, 40)
  split = datasets.load_split(config, 'train')
  assert split.images.shape == (4, 32, 40, 3)
  np.testing.assert_array_equal(split.labels, [0, 0, 1, 1])


def test_grey_folders_keep_one_channel_and_mixed_ones_become_colour(tmp_path):
  grey = [np.full((8, 8), 10 * i, np.uint8) for i in range(3)]
  _write_images(tmp_path / 'grey', {'a': grey, 'b': grey})
  split = datasets.load_split(_config(tmp_path / 'grey'), 'train')
  assert split.images.shape == (6, 8, 8, 1)
  np.testing.assert_array_equal(split.images[1, ..., 0], grey[1])
  # A colour image after grey ones: all of them in colour, the grey ones copied per channel.
  colour = np.zeros((8, 8, 3), np.uint8)
  colour[..., 0] = 200
  _write_images(tmp_path / 'mixed', {'a': grey, 'b': [colour]})
  split = datasets.load_split(_config(tmp_path / 'mixed'), 'train')
  assert split.images.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(split.images[1], np.repeat(grey[1][..., None], 3, -1))
  np.testing.assert_array_equal(split.images[3], colour)
  # channels=1 converts colour to Pillow's luma.
  config = _config(tmp_path / 'mixed')
  config.channels = 1
  split = datasets.load_split(config, 'train')
  assert split.images.shape == (4, 8, 8, 1)
  assert split.images[3, 0, 0, 0] == np.asarray(Image.fromarray(colour).convert('L'))[0, 0]


def test_the_cache_is_memory_mapped_and_keyed_by_the_image_format(tmp_path):
  _write_folder(tmp_path / 'data', size=16)
  config = _config(tmp_path / 'data')
  config.cache_dir = str(tmp_path / 'cache')
  first = datasets.load_split(config, 'train')
  assert isinstance(first.images, np.memmap) and not first.images.flags.writeable
  config.image_size = 8
  small = datasets.load_split(config, 'train')
  assert small.images.shape == (15, 8, 8, 3) and isinstance(small.images, np.memmap)
  entries = sorted(os.listdir(tmp_path / 'cache'))
  assert len(entries) == 2 and any('8x8-bilinear-crop' in e for e in entries)
  np.testing.assert_array_equal(datasets.load_split(config, 'train').images, small.images)


def test_an_interrupted_decode_leaves_no_cache_entry(tmp_path):
  _write_folder(tmp_path / 'data')
  with open(tmp_path / 'data' / 'train' / 'dog' / '0003.png', 'wb') as f:
    f.write(b'not a png')
  config = _config(tmp_path / 'data')
  config.cache_dir = str(tmp_path / 'cache')
  with pytest.raises(UserError, match=r'Cannot read image .*0003.png'):
    datasets.load_split(config, 'train')
  assert os.listdir(tmp_path / 'cache') == []


@pytest.mark.parametrize('damage', ['images cut short', 'labels cut short',
                                    'labels of another count', 'class names missing'])
def test_a_damaged_cache_entry_is_discarded_and_rebuilt_with_one_warning(tmp_path, damage, caplog):
  _write_folder(tmp_path / 'data')
  config = _config(tmp_path / 'data')
  config.cache_dir = str(tmp_path / 'cache')
  first = np.array(datasets.load_split(config, 'train').images)
  (entry,) = [tmp_path / 'cache' / name for name in os.listdir(tmp_path / 'cache')]
  if damage == 'images cut short':  # a full disk, a killed copy
    os.truncate(entry / 'images.npy', os.path.getsize(entry / 'images.npy') - 100)
  elif damage == 'labels cut short':
    os.truncate(entry / 'labels.npy', 20)
  elif damage == 'labels of another count':
    np.save(entry / 'labels.npy', np.zeros(3, np.int32))
  else:
    os.remove(entry / 'class_names.json')
  with pytest.raises(decoded_cache.DamagedCacheError, match=r'is damaged .*; delete that folder'):
    decoded_cache.read_cached_split(str(entry))
  caplog.clear()
  again = datasets.load_split(config, 'train')
  np.testing.assert_array_equal(again.images, first)
  (warning,) = [r for r in caplog.records if r.levelname == 'WARNING']
  assert re.match(r'The cached split in .* is damaged \(.+\)\. Decoding split .* again instead\.$',
                  warning.getMessage()), warning.getMessage()
  np.testing.assert_array_equal(datasets.load_split(config, 'train').images, first)  # whole again


def test_long_decoding_shows_count_rate_and_time_left(tmp_path, monkeypatch, capsys):
  _write_folder(tmp_path, per_class=4)
  clock = iter(np.arange(0.0, 1000.0, 2.0))  # every image takes 2 s
  original = datasets.terminal.ProgressLine

  def slow_clock_progress(*args, **kwargs):
    return original(*args, clock=lambda: float(next(clock)), **kwargs)

  monkeypatch.setattr(datasets.terminal, 'ProgressLine', slow_clock_progress)
  datasets.load_split(_config(tmp_path), 'train')
  lines = capsys.readouterr().out.splitlines()
  assert lines and 'Decoding split' in lines[0]
  assert re.search(r': \d+/12 images \([\d,]+/s, [\d,]+ s left\)$', lines[0]), lines[0]
  assert re.search(r': 12 images in [\d.]+ s$', lines[-1]), lines[-1]


def test_short_decoding_is_silent(tmp_path, capsys):
  _write_folder(tmp_path)
  datasets.load_split(_config(tmp_path), 'train')
  assert capsys.readouterr().out == ''


@pytest.mark.parametrize('name, shape, num_classes', [
    ('cifar100', (32, 32, 3), 100), ('svhn_cropped', (32, 32, 3), 10),
    ('mnist', (28, 28, 1), 10)])
def test_tfds_datasets_of_one_size_through_mock_data(monkeypatch, name, shape, num_classes):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds_source, '_download_server_reachable', lambda: True)
  config = tiny_config()
  config.dataset.source = 'tfds'
  config.dataset.name = name
  with tfds.testing.mock_data(num_examples=10):
    split = datasets.load_split(config.dataset, 'train')
  assert split.images.shape == (10, *shape) and split.num_classes == num_classes
  if name == 'mnist':  # grey, or colour where asked
    config.dataset.channels = 3
    with tfds.testing.mock_data(num_examples=10):
      assert datasets.load_split(config.dataset, 'train').images.shape == (10, 28, 28, 3)


def test_tfds_images_of_many_sizes_are_resized_when_loaded(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds_source, '_download_server_reachable', lambda: True)
  config = tiny_config()
  config.dataset.source = 'tfds'
  config.dataset.name = 'oxford_flowers102'  # mock_data draws each image's size
  with tfds.testing.mock_data(num_examples=6):
    with pytest.raises(UserError, match=r'set config.dataset.image_size'):
      datasets.load_split(config.dataset, 'train')
    config.dataset.image_size = 24
    split = datasets.load_split(config.dataset, 'train')
  assert split.images.shape == (6, 24, 24, 3) and split.num_classes == 102
  assert split.class_names[0] == 'pink primrose'


OUTSIDE_SOURCE = '''
import numpy as np
from cifar_jax.data import datasets
LOADS = []
class Counted:
  """Two classes of flat images; its files' state is `version`, so it may be cached."""
  version = 'v1'
  def __init__(self, dataset):
    self.dataset = dataset
  def load(self, split):
    LOADS.append(split)
    images = np.repeat(np.arange(6, dtype=np.uint8), 48).reshape(6, 4, 4, 3)
    return datasets.Split(images, np.array([0, 1] * 3, np.int32), ('even', 'odd'))
  def fingerprint(self):
    return Counted.version
'''


def test_every_source_is_a_class_of_one_contract_and_one_with_a_fingerprint_is_cached(
    tmp_path, monkeypatch):
  """The built-in sources are registered classes with load(split), as one from outside; a
  source from outside that gives a fingerprint is decoded once and served from the cache."""
  for name in datasets.SOURCES.names():
    target = datasets.SOURCES.get(name).target
    assert callable(getattr(target, 'load', None)), name
  synthetic = tiny_config().dataset
  np.testing.assert_array_equal(
      datasets.SOURCES.get('synthetic').target(synthetic).load('train').images,
      datasets.load_split(synthetic, 'train').images)
  (tmp_path / 'fork_counted.py').write_text(OUTSIDE_SOURCE)
  monkeypatch.syspath_prepend(str(tmp_path))
  config = tiny_config(**{'dataset.source': 'fork_counted:Counted',
                          'dataset.cache_dir': str(tmp_path / 'cache')}).dataset
  module = __import__('fork_counted')
  first = datasets.load_split(config, 'train')
  again = datasets.load_split(config, 'train')
  assert module.LOADS == ['train'] and isinstance(again.images, np.memmap)
  np.testing.assert_array_equal(first.images, again.images)
  module.Counted.version = 'v2'  # its files changed: read again
  datasets.load_split(config, 'train')
  assert module.LOADS == ['train', 'train']
  assert datasets.split_label(config, 'test') == "split 'test' of fork_counted:Counted"
