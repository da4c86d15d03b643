"""The tfds source: a tensorflow-datasets dataset as uint8 arrays (TensorFlow imported lazily).

When the dataset is not prepared and its download server cannot be reached,
loading stops within seconds with a message saying what to do, instead of
tfds' minutes of retries.
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np

from cifar_jax.core.errors import UserError
from cifar_jax.data import decoded_cache
from cifar_jax.data.decoded_cache import Allocate
from cifar_jax.data.image_format import ImageFormat
from cifar_jax.data.splits import Split

# Where tfds downloads CIFAR-10, SVHN and most other image datasets from.
TFDS_DOWNLOAD_HOST = ('storage.googleapis.com', 443)


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


def data_dir(data_dir: str | None) -> str:
  """Where tfds keeps prepared datasets: data_dir, $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(
      data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def load(name: str, split: str, data_dir: str | None, image_format: ImageFormat,
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
  filled = decoded_cache.fill(
      len(images), lambda i, c: (image_format.apply(images[i], c), images[i].shape[-1]),
      image_format, allocate, what, channels)
  class_names = tuple(builder.info.features['label'].names)
  return Split(filled, np.concatenate(labels).astype(np.int32), class_names)
