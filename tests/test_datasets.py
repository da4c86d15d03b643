"""Sources on small generated data: image folders and archives, tfds (mocked), synthetic."""

import os
import tarfile
import time

import numpy as np
from PIL import Image
import pytest

from cifar_jax import datasets
from cifar_jax.errors import UserError
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
  monkeypatch.setattr(datasets, '_download_server_reachable', lambda: True)
  config = tiny_config()
  config.dataset.source = 'tfds'
  config.dataset.name = 'cifar10'
  with tfds.testing.mock_data(num_examples=12):
    split = datasets.load_split(config.dataset, 'train')
  assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
  assert split.num_classes == 10  # mock_data has no label names, only their number
  assert split.labels.min() >= 0 and split.labels.max() < 10


@pytest.mark.parametrize('network', ['refuses', 'hangs'])
def test_tfds_offline_fails_fast_with_directions(monkeypatch, tmp_path, network):
  pytest.importorskip('tensorflow_datasets')

  def unreachable(address, timeout=None):
    del address
    if network == 'hangs':  # e.g. DNS that never answers
      time.sleep(60)
    raise OSError('Network is unreachable')

  monkeypatch.setattr(datasets.socket, 'create_connection', unreachable)
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
  monkeypatch.setattr(datasets, '_download_server_reachable', lambda: True)
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
  text = datasets.describe(split, 'train')
  assert 'train: 4 images of shape (2, 2, 3)' in text
  assert 'per-channel mean: 20.00, 5.00, 5.00' in text
  assert 'per-channel std:  10.00, 5.00, 5.00' in text
  assert '  0 a                    2' in text and '  2 c                    1' in text
