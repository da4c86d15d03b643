"""Training augmentations, registered by name with their fields (`config.augment`), on the device.

Every training image is distorted on the device, keyed by its example and step
(`augment_batch`), by the built-in augmentations, always and in this order (their fields turn
them on; `BUILT_IN`):

* ``crop``: a random `config.crop_size` crop, after padding by `translate` pixels
  (airbench's reflect padding, or `padding_mode='constant'`: torchvision's zeros), or
  `random_resized_crop` (a box of random area share and aspect ratio resized to the crop);
* ``flip``: a random left-right flip, or airbench's alternating flip (a fixed coin in epoch
  0, the other way in every odd epoch);
* ``brightness`` and ``contrast``: the tutorial's random brightness and contrast;

then by each of `config.augment.extra`, in the order given: `cutout` (registered here, with its
`cutout_size`) and augmentations outside the package, named 'package.module:Name'; then it is
normalised (`input_pipeline.Normalization`).

Every augmentation, built in or not, is registered (or imported) in one form: a class whose
fields live in `config.augment` (declared in `AUGMENTATIONS.register(..., fields=...)`, or in
its `FIELDS` from outside), built once per run and called on every image:

  class Cutout:
    FIELDS = {'cutout_size': fields.Field(8, fields.integer(0), 'side of the hole')}
    def __init__(self, augment: ConfigDict, steps_per_epoch: int): ...
    def __call__(self, key, image, step) -> image  # float32 [H, W, C], 0-255 scale

It runs inside the jitted step (write it with jax.numpy), with a key of its own for every
image and step. Two optional hooks, which the built-in ones use: `from_config(config,
steps_per_epoch)` builds it from the whole config (the crop reads `config.crop_size`), and
`per_example(example_ids, rng, step)` gives a value per image of the batch, passed to the call
as `example=` (the alternating flip's coin, which follows the example across epochs).
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
from cifar_jax.data import image_ops
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


@AUGMENTATIONS.register('crop', fields={
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
})
@dataclasses.dataclass(frozen=True)
class Crop:
  """A random crop of config.crop_size: translated, or resized from a random box.

  `size` 0 is the image's size; `translate` pads by that many pixels first (`padding_mode`:
  reflect, or constant zeros as torchvision's RandomCrop); `resized` is (area share range,
  width / height range) of the random resized crop, () the plain one.
  """

  size: int = 0
  translate: int = 0
  padding_mode: str = 'reflect'
  resized: tuple[tuple[float, float], tuple[float, float]] | tuple[()] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Crop:
    del steps_per_epoch
    augment = config.augment
    resized = ((tuple(augment.crop_scale), tuple(augment.crop_ratio))
               if augment.random_resized_crop else ())
    return cls(config.crop_size, augment.translate, augment.padding_mode, resized)

  def __call__(self, key: jax.Array, image: jax.Array, step: jax.Array) -> jax.Array:
    del step
    if self.resized:
      return image_ops.random_resized_crop(key, image, self.size, *self.resized)
    # Sized on the image before padding: with size 0, padding and cropping translate.
    shape = crop_shape(image.shape, self.size)
    if self.translate:
      pad = image_ops.reflect_pad if self.padding_mode == 'reflect' else image_ops.zero_pad
      image = pad(image, self.translate)
    return image_ops.random_crop(key, image, shape)

  def check(self, image_shape: Sequence[int], what: str) -> None:
    """Refuses training images too small for the crop (`what` names them), at load time.

    A plain crop that shows under half of each image (24 of 64 pixels, say)
    is allowed, with a warning: it is what the tutorial's recipe does to
    larger images, rarely what was meant.
    """
    height, width = image_shape[:2]
    room = (height + 2 * self.translate, width + 2 * self.translate)
    if self.size > min(room) and not self.resized:
      padding = f' padded by {self.translate} (config.augment.translate)' if self.translate else ''
      raise UserError(
          f'config.crop_size={self.size} is larger than {what} ({height}x{width}'
          f'{padding}); set config.crop_size to at most {min(room)}, or use larger images.')
    share = self.size**2 / (height * width)
    if self.size and not self.resized and share < 0.5:
      logging.warning(
          'config.crop_size=%d shows %.0f%% of each of %s (%dx%d): the network trains on small '
          'patches. Set config.crop_size=0 (whole images), config.dataset.image_size (smaller '
          'images) or config.augment.random_resized_crop (docs/your_data.md).',
          self.size, 100 * share, what, height, width)


# fold_in data of the run-wide key of the alternating flip; steps never reach it.
_FLIP_STREAM = 2**31 - 1


def alternating_flips(example_ids: jax.Array, rng: jax.Array, epoch: jax.Array) -> jax.Array:
  """Whether each example is flipped in `epoch`: a fixed coin in epoch 0, opposite in odd epochs."""
  key = jax.random.fold_in(rng, _FLIP_STREAM)
  first = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)) < 0.5)(example_ids)
  return first ^ (epoch % 2 == 1)


@AUGMENTATIONS.register('flip', fields={
    'flip_left_right': spec.Field(False, spec.flag(), 'a random left-right flip'),
    'alternating_flip': spec.Field(False, _check_flip, "airbench's: the other way every odd epoch"),
})
@dataclasses.dataclass(frozen=True)
class Flip:
  """A random (or alternating) left-right flip.

  The alternating flip (airbench's) needs the number of steps per epoch to know the epoch of
  a step; its coins are per example, not per image key (`per_example`).
  """

  enabled: bool = False
  alternating: bool = False
  steps_per_epoch: int = 1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Flip:
    return cls(config.augment.flip_left_right, config.augment.alternating_flip, steps_per_epoch)

  def per_example(self, example_ids: jax.Array, rng: jax.Array, step: jax.Array
                  ) -> jax.Array | None:
    """Whether each example is flipped at `step` (the alternating flip), else None."""
    if not self.alternating:
      return None
    return alternating_flips(example_ids, rng, step // self.steps_per_epoch)

  def __call__(self, key: jax.Array, image: jax.Array, step: jax.Array,
               example: jax.Array | None = None) -> jax.Array:
    del step
    if not self.enabled:
      return image
    flipped = jax.random.uniform(key) < 0.5 if example is None else example
    return jnp.where(flipped, image[:, ::-1], image)


@AUGMENTATIONS.register('brightness', fields={
    'max_brightness_delta': spec.Field(0.0, spec.number(0.0), 'on the 0-255 scale; 0: off'),
})
@dataclasses.dataclass(frozen=True)
class Brightness:
  """The tutorial's random brightness: a uniform delta in +-max_delta (0-255 scale) added."""

  max_delta: Any = 0.0  # a number, or a swept value (a jax array: on for every point)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Brightness:
    del steps_per_epoch
    return cls(config.augment.max_brightness_delta)

  def __call__(self, key: jax.Array, image: jax.Array, step: jax.Array) -> jax.Array:
    del step
    if not sweeps.enabled(self.max_delta):
      return image
    delta = jax.random.uniform(key, (), minval=-self.max_delta, maxval=self.max_delta)
    return image_ops.adjust_brightness(image, delta)


@AUGMENTATIONS.register('contrast', fields={
    'random_contrast': spec.Field(False, spec.flag(), "the tutorial's random contrast"),
    'contrast_lower': spec.Field(0.2, spec.number(0.0), 'its lowest factor'),
    'contrast_upper': spec.Field(1.8, _check_contrast, 'its highest factor'),
})
@dataclasses.dataclass(frozen=True)
class Contrast:
  """The tutorial's random contrast: a uniform factor in `factors` (low, high); () is off."""

  factors: tuple[float, ...] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Contrast:
    del steps_per_epoch
    augment = config.augment
    return cls((augment.contrast_lower, augment.contrast_upper) if augment.random_contrast
               else ())

  def __call__(self, key: jax.Array, image: jax.Array, step: jax.Array) -> jax.Array:
    del step
    if not self.factors:
      return image
    low, high = self.factors
    return image_ops.adjust_contrast(image, jax.random.uniform(key, (), minval=low, maxval=high))


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


def fill_added(saved: dict) -> None:
  """A saved config's augment group with the fields its extra augmentations gained since."""
  for name in saved.get('augment', {}).get('extra', ()):
    if name in AUGMENTATIONS:
      spec.fill_added(saved, 'augment', AUGMENTATIONS.get(name).fields)


spec.declare(__name__, FIELDS, upgrade=fill_added)


def _build(name: str, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Any:
  """The augmentation `name` of this run: its `from_config`, or its class on config.augment."""
  target = AUGMENTATIONS.get(name).target
  if hasattr(target, 'from_config'):
    return target.from_config(config, steps_per_epoch)
  return target(config.augment, steps_per_epoch)


# ----------------------------------------------------------------------------
# The pipeline.

# fold_in data of the key of an image for the i-th extra augmentation's own key (the built-in
# ones split the image's key, one part each).
_EXTRA_STREAM = 2**30


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The training distortions of a run: `built_in` (one instance of each of `BUILT_IN`, in
  order), `extra` (config.augment.extra's, in order), then `normalization`."""

  built_in: tuple[Any, ...]
  extra: tuple[Any, ...] = ()
  normalization: Normalization = Normalization()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int
                  ) -> Augmentation:
    return cls(tuple(_build(name, config, steps_per_epoch) for name in BUILT_IN),
               tuple(_build(name, config, steps_per_epoch) for name in config.augment.extra),
               Normalization.from_config(config))

  @classmethod
  def of(cls, normalization: Normalization | None = None, extra: tuple[Any, ...] = (),
         **built_in: Any) -> Augmentation:
    """The built-in augmentations given by name (`crop=Crop(24)`), the others off (and the
    default normalisation unless given)."""
    unknown = sorted(set(built_in) - set(BUILT_IN))
    if unknown:
      raise TypeError(f'{unknown} are not built-in augmentations ({list(BUILT_IN)})')
    return cls(tuple(built_in.get(name) or AUGMENTATIONS.get(name).target()
                     for name in BUILT_IN), extra, normalization or Normalization())

  @property
  def stages(self) -> tuple[Any, ...]:
    return self.built_in + self.extra

  def check(self, image_shape: Sequence[int], what: str) -> None:
    """Refuses training images the augmentations cannot take (`what` names them), at load time."""
    for stage in self.stages:
      if hasattr(stage, 'check'):
        stage.check(image_shape, what)
    self.normalization.check(image_shape, what)


def augment_train_image(key: jax.Array, image: jax.Array, augmentation: Augmentation,
                        step: jax.Array | int = 0, examples: Sequence[Any] = ()) -> jax.Array:
  """One training image of training step `step`, distorted and normalised.

  `examples[i]` is the i-th stage's value for this image (its `per_example`), or None.
  """
  built_in_keys = list(jax.random.split(key, len(augmentation.built_in)))
  keys = built_in_keys + [jax.random.fold_in(key, _EXTRA_STREAM + index)
                          for index in range(len(augmentation.extra))]
  image = image.astype(jnp.float32)
  for index, stage in enumerate(augmentation.stages):
    example = examples[index] if examples else None
    image = (stage(keys[index], image, step) if example is None
             else stage(keys[index], image, step, example=example))
  return augmentation.normalization(image)


def augment_batch(images: jax.Array, example_ids: jax.Array, rng: jax.Array, step: jax.Array,
                  augmentation: Augmentation) -> jax.Array:
  """Augments uint8 images [B, H, W, C] for training step `step`.

  Image i uses fold_in(fold_in(rng, step), example_ids[i]): keying by the
  example (not by its position or device) makes the augmented global batch the
  same whatever the number of devices or processes.
  """
  key = jax.random.fold_in(rng, step)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)
  examples = tuple(stage.per_example(example_ids, rng, step) if hasattr(stage, 'per_example')
                   else None for stage in augmentation.stages)
  augment_one = functools.partial(augment_train_image, augmentation=augmentation, step=step)
  return jax.vmap(lambda k, x, e: augment_one(k, x, examples=e))(keys, images, examples)


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
