"""Device-resident data and the tutorial's preprocessing, in JAX.

The whole split lives on every device as uint8 (`DeviceData`). Per step, the
host only picks which examples form each batch (`BatchSchedule`, a fresh
permutation every epoch, derived from the seed and the epoch number so that a
resumed run sees the same order); each device gathers its part of the batch
and augments it itself (`train_batch`), keyed by `fold_in(rng, step)`.

Training preprocessing, as `cifar10_input.distorted_inputs`: random 24x24
crop, random left-right flip, random brightness (max delta 63 on the 0-255
scale), random contrast in [0.2, 1.8], per-image standardisation. Evaluation,
as `cifar10_input.inputs`: central 24x24 crop and standardisation.

airbench's options (`config.augment`, `config.preprocess`): random
translation by up to `translate` pixels with reflect padding (pad, then a
random crop of the original size; `padding_mode='constant'` pads with black,
as torchvision's RandomCrop(padding=4) in the ResNet recipes), per-channel normalisation with fixed
mean/std (`channel_normalization`), and the alternating flip: each example
gets a random flip in epoch 0 (fixed for the run, keyed by the example) and
is flipped the other way in every odd epoch, so that it is seen both ways in
every two consecutive epochs.

Images of any size and channel count (`image_format` made them one size when
loaded): `crop_size` 0 is the whole image. For larger images,
`config.augment.random_resized_crop` trains on a box of random area share
and aspect ratio resized to the crop (the ImageNet recipes' augmentation),
and `config.eval_resize` resizes evaluation images before the central crop;
both resize with an antialiased filter in JAX, on the device.

What jitted code needs of the config comes as small frozen dataclasses built
once (`Augmentation`, `EvalPreprocessing`, `Normalization`), never the config.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import parallel
from cifar_jax.core.errors import UserError
from cifar_jax.data.datasets import Split

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


def crop_shape(image_shape: Sequence[int], size: int | tuple[int, int]) -> tuple[int, int]:
  """(height, width) of a `size` crop of an [H, W, C] image: `size` square (or (h, w)); 0: all."""
  if isinstance(size, tuple):
    return size
  return (int(image_shape[0]), int(image_shape[1])) if size == 0 else (size, size)


def model_input_shape(image_shape: Sequence[int], crop_size: int) -> tuple[int, int, int]:
  """What the network sees of training images of `image_shape`: the crop, the data's channels."""
  return (*crop_shape(image_shape, crop_size), int(image_shape[-1]))


def central_crop(image: jax.Array, size: int) -> jax.Array:
  """`tf.image.resize_with_crop_or_pad` for an image at least `size` square (0: all of it)."""
  height, width = crop_shape(image.shape, size)
  top = (image.shape[0] - height) // 2
  left = (image.shape[1] - width) // 2
  return image[top : top + height, left : left + width]


def resize_shorter_side(image: jax.Array, pixels: int) -> jax.Array:
  """`image` resized (antialiased, linear) so that its shorter side has `pixels` pixels."""
  height, width = image.shape[0], image.shape[1]
  factor = pixels / min(height, width)
  shape = (max(pixels, round(height * factor)), max(pixels, round(width * factor)))
  return jax.image.resize(image, (*shape, image.shape[2]), 'linear', antialias=True)


def normalize(image: jax.Array, preprocess: str, channel_mean: tuple[float, ...] = (),
              channel_std: tuple[float, ...] = ()) -> jax.Array:
  """The last preprocessing step of training and evaluation images (0-255 in).

  ``per_image_standardization`` (the tutorial) or ``channel_normalization``:
  (x / 255 - mean) / std per channel, mean and std on the 0-1 scale
  (airbench's CIFAR-10 training-split constants).
  """
  if preprocess == 'per_image_standardization':
    return per_image_standardization(image)
  mean = jnp.asarray(channel_mean, jnp.float32)
  std = jnp.asarray(channel_std, jnp.float32)
  return (image.astype(jnp.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Normalization:
  """`normalize`'s options: `config.preprocess`, `config.channel_mean`, `config.channel_std`."""

  preprocess: str = 'per_image_standardization'
  channel_mean: tuple[float, ...] = ()
  channel_std: tuple[float, ...] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Normalization:
    return cls(config.preprocess, tuple(config.channel_mean), tuple(config.channel_std))

  def __call__(self, image: jax.Array) -> jax.Array:
    return normalize(image, self.preprocess, self.channel_mean, self.channel_std)

  def check(self, image_shape: Sequence[int], what: str) -> None:
    """Refuses a channel count that the per-channel constants do not fit."""
    channels = image_shape[-1]
    if self.preprocess == 'channel_normalization' and len(self.channel_mean) != channels:
      raise UserError(
          f'{what} have {channels} channel(s) but config.channel_mean and config.channel_std '
          f'have {len(self.channel_mean)}; give one mean and std per channel, or set '
          f'config.dataset.channels={len(self.channel_mean)} to convert the images when they are '
          "loaded, or config.preprocess='per_image_standardization'.")


@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
  """Evaluation preprocessing: a resize (`resize` > 0), the central crop, normalisation."""

  crop_size: int
  normalization: Normalization = Normalization()
  resize: int = 0  # the shorter side's pixels after resizing; 0: no resize

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> EvalPreprocessing:
    return cls(config.crop_size, Normalization.from_config(config), config.eval_resize)

  def __call__(self, image: jax.Array) -> jax.Array:
    return preprocess_eval_image(image, self.crop_size, self.normalization, self.resize)

  def check(self, image_shape: Sequence[int], what: str,
            trained_shape: Sequence[int] | None = None) -> None:
    """Refuses images the model cannot score (`what` names them), at load time.

    Smaller than the central crop: the crop would be a fragment. Another
    channel count than the training images (`trained_shape`, where the
    checkpoint records it): the first layer's filters do not fit. Another
    size than the training images is allowed (the same crop then shows
    another scale), with a warning.
    """
    height, width, channels = image_shape[-3:]
    if self.crop_size > min(height, width) and not self.resize:
      raise UserError(
          f'{what} are {height}x{width}, smaller than the central crop of {self.crop_size} '
          f'(the model was trained on crops of {self.crop_size}, config.crop_size); score '
          f'images of at least {self.crop_size}x{self.crop_size}.')
    self.normalization.check(image_shape, what)
    if trained_shape is None:
      return
    trained_height, trained_width, trained_channels = trained_shape[-3:]
    if channels != trained_channels:
      raise UserError(
          f'{what} have {channels} channel(s) but the model was trained on images of '
          f'{trained_channels}; give images with {trained_channels} channel(s).')
    if not self.crop_size and (height, width) != (trained_height, trained_width):
      raise UserError(
          f'{what} are {height}x{width} but the model was trained on whole {trained_height}x'
          f'{trained_width} images (config.crop_size=0); score images of that size (set '
          f'config.dataset.image_size=({trained_height}, {trained_width}) to resize them).')
    if (height, width) != (trained_height, trained_width) and not self.resize:
      logging.warning(
          '%s are %dx%d but the model was trained on %dx%d images: the central %d crop shows '
          'them at another scale.', what, height, width, trained_height, trained_width,
          self.crop_size)


def preprocess_eval_image(image: jax.Array, crop_size: int,
                          normalization: Normalization = Normalization(), resize: int = 0
                          ) -> jax.Array:
  """Resize (`resize` > 0: the shorter side's pixels), central crop, normalisation."""
  image = image.astype(jnp.float32)
  if resize:
    image = resize_shorter_side(image, resize)
  return normalization(central_crop(image, crop_size))


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


def eval_batch(data: DeviceData, indices: jax.Array, preprocessing: EvalPreprocessing) -> dict:
  """Gathers `indices` and applies the evaluation preprocessing."""
  images = jax.vmap(preprocessing)(data.images[indices])
  return {'image': images, 'label': data.labels[indices]}


def init_images(split: Split, config: ml_collections.ConfigDict, seed: int) -> np.ndarray:
  """Preprocessed training images for a model's data-dependent initialisation.

  `config.model_init_examples` examples drawn without replacement from
  `seed` (the run's) -- the original takes the first 5,000 of a shuffled
  CIFAR-10, while image folders are ordered by class -- in evaluation
  preprocessing (no augmentation).
  """
  count = min(config.model_init_examples, split.num_examples)
  rng = np.random.default_rng([seed, 1])
  chosen = np.sort(rng.choice(split.num_examples, count, replace=False))
  preprocess = jax.jit(jax.vmap(EvalPreprocessing.from_config(config)))
  return np.concatenate([np.asarray(preprocess(split.images[chosen[i:i + 1000]]))
                         for i in range(0, count, 1000)])


def per_device_batch(batch_size: int, per_device_batch_size: int, num_devices: int) -> int:
  """Examples per device and step: the global `batch_size` divided across `num_devices` (every
  process's), or the tutorial's `per_device_batch_size` where `batch_size` is 0.

  Only the devices reveal whether a global batch divides: checked here, when the run is built.
  """
  if not batch_size:
    return per_device_batch_size
  if batch_size % num_devices:
    raise UserError(f'config.batch_size={batch_size} (the global batch) does not divide across '
                    f'{num_devices} devices; make it a multiple of {num_devices}, or choose the '
                    'devices with config.num_devices.')
  return batch_size // num_devices


def global_batch(config: ml_collections.ConfigDict, num_devices: int = 1) -> int:
  """The global batch the config gives on `num_devices` devices (all processes')."""
  return per_device_batch(config.batch_size, config.per_device_batch_size,
                          num_devices) * num_devices


@dataclasses.dataclass
class BatchSchedule:
  """Which examples form each training batch.

  Each epoch is a fresh permutation drawn from (seed, epoch); the last partial
  batch of an epoch is dropped, as the tutorial's queue-based input did. The
  global batch of a step is split across processes first (each process feeds a
  disjoint, contiguous part) and then across this process's devices. With
  `num_replicas` R > 1, replica r draws its own order from seed + r (or
  `replica_seeds[r]`).
  """

  num_examples: int
  per_device_batch_size: int
  num_local_devices: int
  seed: int
  num_processes: int = 1
  process_index: int = 0
  num_replicas: int = 1
  # The seed of each replica's order (a sweep's runs repeat the seeds); () is seed + r.
  replica_seeds: tuple[int, ...] = ()

  def __post_init__(self):
    self._permutations: dict[int, tuple[int, np.ndarray]] = {}  # replica -> (epoch, order)

  @property
  def global_batch_size(self) -> int:
    return self.per_device_batch_size * self.num_local_devices * self.num_processes

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.global_batch_size

  @property
  def examples_per_step(self) -> int:
    """Examples one step trains on, summed over the replicas."""
    return self.global_batch_size * self.num_replicas

  def _epoch_permutation(self, epoch: int, replica: int) -> np.ndarray:
    cached_epoch, permutation = self._permutations.get(replica, (-1, None))
    if epoch != cached_epoch:
      seed = self.replica_seeds[replica] if self.replica_seeds else self.seed + replica
      rng = np.random.default_rng([seed, epoch])
      permutation = rng.permutation(self.num_examples).astype(np.int32)
      self._permutations[replica] = (epoch, permutation)
    return permutation

  def _step_indices(self, step: int, replica: int) -> np.ndarray:
    """int32 [num_local_devices, per_device_batch_size] for global step `step`."""
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    global_indices = self._epoch_permutation(epoch, replica)[
        step_in_epoch * self.global_batch_size : (step_in_epoch + 1) * self.global_batch_size]
    local_batch = self.per_device_batch_size * self.num_local_devices
    offset = self.process_index * local_batch
    local = global_indices[offset : offset + local_batch]
    return local.reshape(self.num_local_devices, self.per_device_batch_size)

  def indices(self, first_step: int, num_steps: int = 1) -> np.ndarray:
    """int32 [devices, num_steps, per-device batch]: steps first_step .. first_step+num_steps-1.

    With replicas, [devices, replicas, num_steps, per-device batch].
    """
    steps = range(first_step, first_step + num_steps)
    replicas = [np.stack([self._step_indices(s, r) for s in steps], axis=1)
                for r in range(self.num_replicas)]
    return replicas[0] if self.num_replicas == 1 else np.stack(replicas, axis=1)


# ----------------------------------------------------------------------------
# The config fields of what the network sees.

PREPROCESSING = ('per_image_standardization', 'channel_normalization')


def _check_std(c: spec.Checker, path: str) -> None:
  channels = len(c.sequence('channel_mean', (int, float), min_length=1))
  std = c.sequence(path, (int, float), length=channels)
  if min(std) <= 0:
    raise UserError(f'config.channel_std is {std}; every standard deviation must be positive.')


def _check_eval_resize(c: spec.Checker, path: str) -> None:
  eval_resize = c.integer(path, 0, hint=(
      'config.eval_resize is {value}; use 0 (no resize) or the evaluation images\' shorter '
      'side in pixels.'))
  crop_size = c.config.crop_size
  if eval_resize and eval_resize < crop_size:
    raise UserError(f'config.eval_resize is {eval_resize}, smaller than config.crop_size '
                    f'({crop_size}); the central crop must fit in the resized image.')
  if eval_resize and not crop_size:
    raise UserError('config.eval_resize needs a config.crop_size (0 scores the whole image, '
                    'which no resize changes); set config.crop_size or eval_resize=0.')


def _check_batch(c: spec.Checker, path: str) -> None:
  batch_size = c.integer(path, 0)
  per_device = c.config.per_device_batch_size
  if bool(batch_size) == bool(per_device):
    raise UserError(
        f'config.batch_size is {batch_size} and config.per_device_batch_size is {per_device}; '
        'give the batch one way: the global config.batch_size (the same on any number of '
        'devices) or the tutorial\'s config.per_device_batch_size, the other 0.')


FIELDS = {
    'per_device_batch_size': spec.Field(128, spec.integer(0), 'examples per device and step, '
                                        'where config.batch_size is 0 (the tutorial\'s form)'),
    'batch_size': spec.Field(0, _check_batch, 'the global batch, divided across the devices '
                             'and processes; 0: per_device_batch_size', before=0),
    'min_steps_per_epoch': spec.Field(0, spec.integer(0), 'a training split too small for this '
                                      'many batches of the batch trains on smaller ones; 0: off',
                                      before=0),
    'crop_size': spec.Field(32, spec.integer(0, hint=(
        'config.crop_size is {value}; use 0 (the whole image) or a number of pixels.')),
        'random in training, central in evaluation; 0: the whole image'),
    'eval_resize': spec.Field(0, _check_eval_resize, 'shorter side before the central crop',
                           before=0),
    'preprocess': spec.Field('per_image_standardization', spec.choice(PREPROCESSING),
                          'the normalisation'),
    'channel_mean': spec.Field((0.4914, 0.4822, 0.4465), spec.numbers(min_length=1),
                            'channel_normalization\'s, 0-1 scale'),
    'channel_std': spec.Field((0.2470, 0.2435, 0.2616), _check_std, 'its standard deviations'),
}


spec.declare(__name__, FIELDS)

