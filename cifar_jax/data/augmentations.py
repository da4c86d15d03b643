"""Training augmentations, registered by name with their fields (`config.augment`), on the device.

Every training image is distorted on the device, keyed by its example and step
(`augment_batch`), in this order, then normalised (`input_pipeline.Normalization`):

* ``crop``: a random `config.crop_size` crop, after padding by `translate` pixels
  (airbench's reflect padding, or `padding_mode='constant'`: torchvision's zeros), or
  `random_resized_crop` (a box of random area share and aspect ratio resized to the crop);
* ``flip``: a random left-right flip, or airbench's alternating flip (a fixed coin in epoch
  0, the other way in every odd epoch);
* ``brightness`` and ``contrast``: the tutorial's random brightness and contrast;
* then each of `config.augment.extra`, in the order given: `cutout` (registered here, with its
  `cutout_size`) and augmentations outside the package, named 'package.module:Name'.

Each entry of `AUGMENTATIONS` declares the `config.augment` fields it reads (default, check,
documentation). An augmentation from outside is a class

  class Cutout:
    FIELDS = {'cutout_size': fields.Field(8, fields.integer(0), 'side of the hole')}
    def __init__(self, augment: ConfigDict, steps_per_epoch: int): ...
    def __call__(self, key, image, step) -> image  # float32 [H, W, C], 0-255 scale

whose fields live in `config.augment` beside the built-in ones; it runs inside the jitted
step (write it with jax.numpy), with a key of its own for every image and step.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.core.registry import Registry
from cifar_jax.data.input_pipeline import DeviceData, Normalization, crop_shape

AUGMENTATIONS = Registry('augmentation', 'config.augment.extra',
                         'docs/development.md, "Adding an augmentation"')
PADDING_MODES = ('reflect', 'constant')  # airbench's | torchvision's (zeros)


def _check_crop(c: spec.Checker, path: str) -> None:
  del path
  if c.config.augment.random_resized_crop and c.config.augment.translate:
    raise UserError('config.augment.random_resized_crop and config.augment.translate are two '
                    'ways of cropping; set translate=0 or random_resized_crop=False.')
  scale = c.sequence('augment.crop_scale', (int, float), length=2)
  if not 0 < scale[0] <= scale[1] <= 1:
    raise UserError(f'config.augment.crop_scale is {scale}; use (low, high) with '
                    '0 < low <= high <= 1 (shares of the image\'s area).')
  ratio = c.sequence('augment.crop_ratio', (int, float), length=2)
  if not 0 < ratio[0] <= ratio[1]:
    raise UserError(f'config.augment.crop_ratio is {ratio}; use (low, high) with '
                    '0 < low <= high (width / height).')


def _check_flip(c: spec.Checker, path: str) -> None:
  if c.flag(path) and not c.config.augment.flip_left_right:
    raise UserError('config.augment.alternating_flip needs config.augment.flip_left_right.')


def _check_contrast(c: spec.Checker, path: str) -> None:
  lower = c.config.augment.contrast_lower
  c.number(path, lower, hint=(f'config.augment.contrast_upper is {{value}}; it must be at '
                              f'least config.augment.contrast_lower ({lower}).'))


AUGMENTATIONS.register('crop', fields={
    'translate': spec.Field(0, spec.integer(0, hint=(
        'config.augment.translate is {value}; use 0 or a number of pixels.')),
        'pad by this many pixels before the random crop'),
    'padding_mode': spec.Field('reflect', spec.choice(PADDING_MODES), 'reflect | constant (zeros)',
                            before='reflect'),
    'random_resized_crop': spec.Field(False, spec.flag(), 'a random box resized to the crop',
                                   before=False),
    'crop_scale': spec.Field((0.08, 1.0), spec.numbers(length=2), "its area share's range",
                          before=[0.08, 1.0]),  # as JSON keeps them
    'crop_ratio': spec.Field((3 / 4, 4 / 3), _check_crop, "its width / height's range",
                          before=[3 / 4, 4 / 3]),
}, doc='a random crop of config.crop_size: translated, or resized from a random box')(None)
AUGMENTATIONS.register('flip', fields={
    'flip_left_right': spec.Field(False, spec.flag(), 'a random left-right flip'),
    'alternating_flip': spec.Field(False, _check_flip, "airbench's: the other way every odd epoch"),
}, doc='a random (or alternating) left-right flip')(None)
AUGMENTATIONS.register('brightness', fields={
    'max_brightness_delta': spec.Field(0.0, spec.number(0.0), 'on the 0-255 scale; 0: off'),
}, doc="the tutorial's random brightness")(None)
AUGMENTATIONS.register('contrast', fields={
    'random_contrast': spec.Field(False, spec.flag(), "the tutorial's random contrast"),
    'contrast_lower': spec.Field(0.2, spec.number(0.0), 'its lowest factor'),
    'contrast_upper': spec.Field(1.8, _check_contrast, 'its highest factor'),
}, doc="the tutorial's random contrast")(None)
# Always in the pipeline, in this order (their fields turn them on); every other entry, in the
# package or outside, runs where config.augment.extra names it.
BUILT_IN = tuple(AUGMENTATIONS.names())


@AUGMENTATIONS.register('cutout', fields={
    'cutout_size': spec.Field(16, spec.integer(1), 'side of the square cut out, in pixels',
                              before=16)})
class Cutout:
  """Cutout (DeVries & Taylor, 2017): a cutout_size square at a random centre, clipped at the
  edges, set to the image's mean colour (what normalisation takes to about zero)."""

  def __init__(self, augment: ml_collections.ConfigDict, steps_per_epoch: int):
    del steps_per_epoch
    self.size = augment.cutout_size

  def __call__(self, key: jax.Array, image: jax.Array, step: jax.Array) -> jax.Array:
    del step
    height, width = image.shape[:2]
    centre = jax.random.randint(key, (2,), 0, jnp.array([height, width]))
    top, left = centre[0] - self.size // 2, centre[1] - self.size // 2
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    inside = (rows >= top) & (rows < top + self.size) & (cols >= left) & (cols < left + self.size)
    return jnp.where(inside, jnp.mean(image, axis=(0, 1), keepdims=True), image)


def _check_extra(c: spec.Checker, path: str) -> None:
  for name in c.sequence(path, str):
    if name in BUILT_IN:
      others = [n for n in AUGMENTATIONS.names() if n not in BUILT_IN]
      raise UserError(f'config.augment.extra names {name!r}, which always runs (its fields turn '
                      f"it on); extra names the others ({others}) and augmentations outside "
                      "cifar_jax, 'package.module:Name'.")
    entry = AUGMENTATIONS.get(name)
    clash = sorted(set(entry.fields) & set(built_in_fields()))
    if clash:
      raise UserError(f'Augmentation {name!r} declares fields {clash}, which are cifar_jax\'s '
                      'own; rename them.')
    spec.check_section(c, 'augment', entry.fields)


def built_in_fields() -> dict[str, spec.Field]:
  """The fields of the augmentations that always run (`BUILT_IN`): always in config.augment."""
  return {name: field for entry in AUGMENTATIONS.entries() if entry.name in BUILT_IN
          for name, field in entry.fields.items()}


FIELDS = {f'augment.{name}': field for name, field in built_in_fields().items()}
FIELDS['augment.extra'] = spec.Field((), _check_extra, 'augmentations outside cifar_jax, in order',
                                     before=[])  # as JSON keeps it


def check_config(c: spec.Checker) -> None:
  spec.check_section(c, '', FIELDS)


def fill_added(saved: dict) -> None:
  """A saved config's augment group with the fields its extra augmentations gained since."""
  for name in saved.get('augment', {}).get('extra', ()):
    if name in AUGMENTATIONS:
      spec.fill_added(saved, 'augment', AUGMENTATIONS.get(name).fields)


def extra_augmentations(config: ml_collections.ConfigDict, steps_per_epoch: int
                        ) -> tuple[Any, ...]:
  """The instances of config.augment.extra's augmentations, in order."""
  return tuple(AUGMENTATIONS.get(name).target(config.augment, steps_per_epoch)
               for name in config.augment.get('extra', ()))


# ----------------------------------------------------------------------------
# The single-image ops ([H, W, C] float32 on the 0-255 scale).

# fold_in data of the key of an image for the i-th extra augmentation's own key.
_EXTRA_STREAM = 2**30


def random_crop(key: jax.Array, image: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """A `size` x `size` window (0: the image's size) at a uniformly random position."""
  height, width = crop_shape(image.shape, size)
  top_key, left_key = jax.random.split(key)
  top = jax.random.randint(top_key, (), 0, image.shape[0] - height + 1)
  left = jax.random.randint(left_key, (), 0, image.shape[1] - width + 1)
  return jax.lax.dynamic_slice(image, (top, left, 0), (height, width, image.shape[2]))


def resize_box(image: jax.Array, top: jax.Array, left: jax.Array, height: jax.Array,
               width: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
  """The box (top, left, height, width) of `image`, in pixels, resized to `out_shape`.

  Linear interpolation with an antialiasing filter widened by the
  downscaling factor (`jax.image.scale_and_translate`); the box may be traced.
  """
  scale = jnp.stack([out_shape[0] / height, out_shape[1] / width]).astype(jnp.float32)
  translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
  return jax.image.scale_and_translate(image, (*out_shape, image.shape[2]), (0, 1), scale,
                                       translation, method='linear', antialias=True)


def random_resized_crop(key: jax.Array, image: jax.Array, size: int,
                        scale: tuple[float, float], ratio: tuple[float, float]) -> jax.Array:
  """A box of a random share of the area and aspect ratio, resized to `size` (0: image size).

  The share is uniform in `scale`, the ratio (width / height) log-uniform in
  `ratio`, as torchvision's RandomResizedCrop; where the box would leave the
  image, its sides are clipped to the image's instead of drawing again (one
  draw keeps it a fixed-shape computation).
  """
  image_h, image_w = image.shape[0], image.shape[1]
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = jax.random.uniform(area_key, (), minval=scale[0], maxval=scale[1]) * image_h * image_w
  aspect = jnp.exp(jax.random.uniform(ratio_key, (), minval=np.log(ratio[0]),
                                      maxval=np.log(ratio[1])))
  width = jnp.clip(jnp.sqrt(area * aspect), 1.0, image_w)
  height = jnp.clip(jnp.sqrt(area / aspect), 1.0, image_h)
  top = jax.random.uniform(top_key, ()) * (image_h - height)
  left = jax.random.uniform(left_key, ()) * (image_w - width)
  return resize_box(image, top, left, height, width, crop_shape(image.shape, size))


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
  """`tf.image.adjust_brightness` on a float image (no clipping, as in TF)."""
  return image + delta


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """`tf.image.adjust_contrast`: (x - channel mean) * factor + channel mean."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def reflect_pad(image: jax.Array, pixels: int) -> jax.Array:
  """`spec.pad(..., 'reflect')` of an [H, W, C] image (the edge is not repeated)."""
  return jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)), mode='reflect')


def zero_pad(image: jax.Array, pixels: int) -> jax.Array:
  """torchvision's `RandomCrop(padding=pixels)` padding of an [H, W, C] image: black (0)."""
  return jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)))


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The training distortions (`config.augment`, `config.crop_size`), then normalisation.

  `translate` pads by that many pixels (`padding_mode`: reflect, or constant
  zeros as torchvision's RandomCrop) before the random crop;
  `contrast_range` () is no random contrast; `alternating_flip` needs the
  number of steps per epoch to know the epoch of a step.
  """

  crop_size: int
  flip: bool = False
  max_brightness_delta: float = 0.0
  contrast_range: tuple[float, ...] = ()
  translate: int = 0
  padding_mode: str = 'reflect'
  alternating_flip: bool = False
  steps_per_epoch: int = 1
  normalization: Normalization = Normalization()
  # (share of the area, width / height) ranges of the random resized crop; () is the plain crop.
  resized_crop: tuple[tuple[float, float], tuple[float, float]] | tuple[()] = ()
  extra: tuple[Any, ...] = ()  # config.augment.extra's instances, in order

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int
                  ) -> Augmentation:
    augment = config.augment
    contrast = ((augment.contrast_lower, augment.contrast_upper) if augment.random_contrast
                else ())
    resized_crop = ((tuple(augment.crop_scale), tuple(augment.crop_ratio))
                    if augment.random_resized_crop else ())
    return cls(crop_size=config.crop_size, flip=augment.flip_left_right,
               max_brightness_delta=augment.max_brightness_delta, contrast_range=contrast,
               translate=augment.translate, padding_mode=augment.padding_mode,
               alternating_flip=augment.alternating_flip,
               steps_per_epoch=steps_per_epoch, normalization=Normalization.from_config(config),
               resized_crop=resized_crop,
               extra=extra_augmentations(config, steps_per_epoch))

  def check(self, image_shape: Sequence[int], what: str) -> None:
    """Refuses training images too small for the crop (`what` names them), at load time.

    A plain crop that shows under half of each image (24 of 64 pixels, say)
    is allowed, with a warning: it is what the tutorial's recipe does to
    larger images, rarely what was meant.
    """
    height, width = image_shape[:2]
    room = (height + 2 * self.translate, width + 2 * self.translate)
    if self.crop_size > min(room) and not self.resized_crop:
      padding = f' padded by {self.translate} (config.augment.translate)' if self.translate else ''
      raise UserError(
          f'config.crop_size={self.crop_size} is larger than {what} ({height}x{width}'
          f'{padding}); set config.crop_size to at most {min(room)}, or use larger images.')
    share = self.crop_size**2 / (height * width)
    if self.crop_size and not self.resized_crop and share < 0.5:
      logging.warning(
          'config.crop_size=%d shows %.0f%% of each of %s (%dx%d): the network trains on small '
          'patches. Set config.crop_size=0 (whole images), config.dataset.image_size (smaller '
          'images) or config.augment.random_resized_crop (docs/your_data.md).',
          self.crop_size, 100 * share, what, height, width)
    self.normalization.check(image_shape, what)


def augment_train_image(key: jax.Array, image: jax.Array, augmentation: Augmentation,
                        flipped: jax.Array | None = None, step: jax.Array | int = 0
                        ) -> jax.Array:
  """One training image of training step `step`, distorted and normalised.

  `flipped` (a bool) decides the flip instead of `key` (the alternating flip).
  """
  crop_key, flip_key, brightness_key, contrast_key = jax.random.split(key, 4)
  image = image.astype(jnp.float32)
  if augmentation.resized_crop:
    image = random_resized_crop(crop_key, image, augmentation.crop_size,
                                *augmentation.resized_crop)
  else:
    # Sized on the image before padding: with crop_size 0, padding and cropping translate.
    shape = crop_shape(image.shape, augmentation.crop_size)
    if augmentation.translate:
      pad = reflect_pad if augmentation.padding_mode == 'reflect' else zero_pad
      image = pad(image, augmentation.translate)
    image = random_crop(crop_key, image, shape)
  if augmentation.flip:
    if flipped is None:
      flipped = jax.random.uniform(flip_key) < 0.5
    image = jnp.where(flipped, image[:, ::-1], image)
  if sweeps.enabled(augmentation.max_brightness_delta):
    delta = jax.random.uniform(brightness_key, (), minval=-augmentation.max_brightness_delta,
                               maxval=augmentation.max_brightness_delta)
    image = adjust_brightness(image, delta)
  if augmentation.contrast_range:
    low, high = augmentation.contrast_range
    factor = jax.random.uniform(contrast_key, (), minval=low, maxval=high)
    image = adjust_contrast(image, factor)
  for index, extra in enumerate(augmentation.extra):
    image = extra(jax.random.fold_in(key, _EXTRA_STREAM + index), image, step)
  return augmentation.normalization(image)


# fold_in data of the run-wide key of the alternating flip; steps never reach it.
_FLIP_STREAM = 2**31 - 1


def alternating_flips(example_ids: jax.Array, rng: jax.Array, epoch: jax.Array) -> jax.Array:
  """Whether each example is flipped in `epoch`: a fixed coin in epoch 0, opposite in odd epochs."""
  key = jax.random.fold_in(rng, _FLIP_STREAM)
  first = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)) < 0.5)(example_ids)
  return first ^ (epoch % 2 == 1)


def augment_batch(images: jax.Array, example_ids: jax.Array, rng: jax.Array, step: jax.Array,
                  augmentation: Augmentation) -> jax.Array:
  """Augments uint8 images [B, H, W, C] for training step `step`.

  Image i uses fold_in(fold_in(rng, step), example_ids[i]): keying by the
  example (not by its position or device) makes the augmented global batch the
  same whatever the number of devices or processes.
  """
  key = jax.random.fold_in(rng, step)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)
  augment_one = functools.partial(augment_train_image, augmentation=augmentation, step=step)
  if augmentation.alternating_flip:
    flipped = alternating_flips(example_ids, rng, step // augmentation.steps_per_epoch)
    return jax.vmap(lambda k, x, f: augment_one(k, x, flipped=f))(keys, images, flipped)
  return jax.vmap(augment_one)(keys, images)


def train_batch(data: DeviceData, indices: jax.Array, rng: jax.Array, step: jax.Array,
                augmentation: Augmentation) -> dict:
  """Gathers `indices` from one device's data and augments every image."""
  images = augment_batch(data.images[indices], indices, rng, step, augmentation)
  return {'image': images, 'label': data.labels[indices]}


def augmented_examples(images: np.ndarray, indices: np.ndarray, train_key: jax.Array,
                       step: int, augmentation: Augmentation) -> jax.Array:
  """The augmented images of `indices` exactly as training step `step` sees them.

  `images` are the uint8 images at `indices`; `train_key` is `TrainState.rng`.
  For looking at the input (TensorBoard grid, notebooks), outside the train step.
  """
  return jax.jit(functools.partial(augment_batch, augmentation=augmentation))(
      images, indices, train_key, step)
