"""Device-resident data and the tutorial's preprocessing, in JAX.

The whole split lives on every device as uint8 (`DeviceData`). Per step, the
host only picks which examples form the batch (`BatchSchedule`, a fresh
permutation every epoch, derived from the seed and the epoch number so that a
resumed run sees the same order); each device gathers its part of the batch
and augments it itself (`train_batch`), keyed by `fold_in(rng, step)`.

Training preprocessing, as `cifar10_input.distorted_inputs`: random 24x24
crop, random left-right flip, random brightness (max delta 63 on the 0-255
scale), random contrast in [0.2, 1.8], per-image standardisation. Evaluation,
as `cifar10_input.inputs`: central 24x24 crop and standardisation.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax import parallel
from cifar_jax.datasets import Split

# ----------------------------------------------------------------------------
# Single-image ops ([H, W, C] float32 on the 0-255 scale unless noted).


def per_image_standardization(image: jax.Array) -> jax.Array:
  """`tf.image.per_image_standardization`: (x - mean) / max(std, 1/sqrt(N))."""
  image = image.astype(jnp.float32)
  num_elements = image.size
  mean = jnp.mean(image)
  stddev = jnp.std(image)
  adjusted_stddev = jnp.maximum(stddev, jax.lax.rsqrt(jnp.float32(num_elements)))
  return (image - mean) / adjusted_stddev


def central_crop(image: jax.Array, size: int) -> jax.Array:
  """`tf.image.resize_with_crop_or_pad` for an image at least `size` square."""
  top = (image.shape[0] - size) // 2
  left = (image.shape[1] - size) // 2
  return image[top : top + size, left : left + size]


def random_crop(key: jax.Array, image: jax.Array, size: int) -> jax.Array:
  """A `size` x `size` window at a uniformly random position."""
  top_key, left_key = jax.random.split(key)
  top = jax.random.randint(top_key, (), 0, image.shape[0] - size + 1)
  left = jax.random.randint(left_key, (), 0, image.shape[1] - size + 1)
  return jax.lax.dynamic_slice(image, (top, left, 0), (size, size, image.shape[2]))


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
  """`tf.image.adjust_brightness` on a float image (no clipping, as in TF)."""
  return image + delta


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """`tf.image.adjust_contrast`: (x - channel mean) * factor + channel mean."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def augment_train_image(
    key: jax.Array,
    image: jax.Array,
    *,
    crop_size: int,
    flip: bool,
    max_brightness_delta: float,
    contrast_range: tuple[float, float],
) -> jax.Array:
  """The tutorial's training distortions, then standardisation."""
  crop_key, flip_key, brightness_key, contrast_key = jax.random.split(key, 4)
  image = random_crop(crop_key, image.astype(jnp.float32), crop_size)
  if flip:
    image = jnp.where(jax.random.uniform(flip_key) < 0.5, image[:, ::-1], image)
  if max_brightness_delta:
    delta = jax.random.uniform(brightness_key, (), minval=-max_brightness_delta,
                               maxval=max_brightness_delta)
    image = adjust_brightness(image, delta)
  if contrast_range:
    factor = jax.random.uniform(contrast_key, (), minval=contrast_range[0],
                                maxval=contrast_range[1])
    image = adjust_contrast(image, factor)
  return per_image_standardization(image)


def preprocess_eval_image(image: jax.Array, *, crop_size: int) -> jax.Array:
  """Central crop and standardisation."""
  return per_image_standardization(central_crop(image.astype(jnp.float32), crop_size))


# ----------------------------------------------------------------------------
# Batches on the device.


@flax.struct.dataclass
class DeviceData:
  """A split on the device(s): uint8 images [..., N, H, W, C], labels [..., N]."""

  images: jax.Array
  labels: jax.Array


def put_on_devices(split: Split, devices: Sequence[jax.Device]) -> DeviceData:
  """A full copy of `split` on every device (leading device axis)."""
  return parallel.replicate(DeviceData(images=split.images, labels=split.labels), devices)


def augment_options(config: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of `augment_train_image` from the config."""
  augment = config.augment
  contrast = (augment.contrast_lower, augment.contrast_upper) if augment.random_contrast else ()
  return dict(
      crop_size=config.crop_size,
      flip=augment.flip_left_right,
      max_brightness_delta=augment.max_brightness_delta,
      contrast_range=contrast,
  )


def augment_batch(images: jax.Array, example_ids: jax.Array, key: jax.Array, **augment
                  ) -> jax.Array:
  """Augments uint8 images [B, H, W, C]; image i uses fold_in(key, example_ids[i]).

  Keying by the example (not by its position or device) makes the augmented
  global batch the same whatever the number of devices or processes.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)
  return jax.vmap(functools.partial(augment_train_image, **augment))(keys, images)


def train_batch(data: DeviceData, indices: jax.Array, key: jax.Array, **augment) -> dict:
  """Gathers `indices` from one device's data and augments every image."""
  images = augment_batch(data.images[indices], indices, key, **augment)
  return {'image': images, 'label': data.labels[indices]}


def augmented_examples(images: np.ndarray, indices: np.ndarray, train_key: jax.Array,
                       step: int, config: ml_collections.ConfigDict) -> jax.Array:
  """The augmented images of `indices` exactly as training step `step` sees them.

  `images` are the uint8 images at `indices`; `train_key` is `TrainState.rng`.
  For looking at the input (TensorBoard grid, notebooks), outside the train step.
  """
  return jax.jit(functools.partial(augment_batch, **augment_options(config)))(
      images, indices, jax.random.fold_in(train_key, step))


def eval_batch(data: DeviceData, indices: jax.Array, *, crop_size: int) -> dict:
  """Gathers `indices` and applies the evaluation preprocessing."""
  images = jax.vmap(functools.partial(preprocess_eval_image, crop_size=crop_size))(
      data.images[indices])
  return {'image': images, 'label': data.labels[indices]}


@dataclasses.dataclass
class BatchSchedule:
  """Which examples form each training batch.

  Each epoch is a fresh permutation drawn from (seed, epoch); the last partial
  batch of an epoch is dropped, as the tutorial's queue-based input did. The
  global batch of a step is split across processes first (each process feeds a
  disjoint, contiguous part) and then across this process's devices.
  """

  num_examples: int
  per_device_batch_size: int
  num_local_devices: int
  seed: int
  num_processes: int = 1
  process_index: int = 0

  def __post_init__(self):
    self._cached_epoch = -1
    self._permutation = None

  @property
  def global_batch_size(self) -> int:
    return self.per_device_batch_size * self.num_local_devices * self.num_processes

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.global_batch_size

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._cached_epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._permutation = rng.permutation(self.num_examples).astype(np.int32)
      self._cached_epoch = epoch
    return self._permutation

  def indices(self, step: int) -> np.ndarray:
    """int32 [num_local_devices, per_device_batch_size] for global step `step`."""
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    global_indices = self._epoch_permutation(epoch)[
        step_in_epoch * self.global_batch_size : (step_in_epoch + 1) * self.global_batch_size]
    local_batch = self.per_device_batch_size * self.num_local_devices
    offset = self.process_index * local_batch
    local = global_indices[offset : offset + local_batch]
    return local.reshape(self.num_local_devices, self.per_device_batch_size)
