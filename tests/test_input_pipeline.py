"""Augmentation ops against TensorFlow's tf.image, and the batch schedule."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.config import validation
from cifar_jax.core import parallel
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations, image_ops, input_pipeline
from cifar_jax.data.datasets import Split
from tests.conftest import tiny_config

tf = pytest.importorskip('tensorflow')


@pytest.fixture
def images():
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, size=(6, 32, 32, 3)).astype(np.uint8)
  batch[0] = 77  # a constant image: std 0, TF's 1/sqrt(N) floor applies
  return batch


def test_per_image_standardization_matches_tf(images):
  for image in images:
    expected = tf.image.per_image_standardization(image.astype(np.float32)).numpy()
    actual = input_pipeline.per_image_standardization(image.astype(np.float32))
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_central_crop_matches_tf_resize_with_crop_or_pad(images):
  for size in (24, 25, 31):
    expected = tf.image.resize_with_crop_or_pad(images, size, size).numpy()
    actual = jax.vmap(lambda x: input_pipeline.central_crop(x, size))(images)  # noqa: B023
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_eval_preprocessing_matches_the_tutorials_inputs(images):
  expected = tf.image.per_image_standardization(
      tf.image.resize_with_crop_or_pad(tf.cast(images, tf.float32), 24, 24)).numpy()
  actual = jax.vmap(functools.partial(input_pipeline.preprocess_eval_image, crop_size=24))(
      images)
  np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_brightness_contrast_and_flip_match_tf(images):
  image = images[1].astype(np.float32)
  np.testing.assert_allclose(image_ops.adjust_brightness(image, -40.5),
                             tf.image.adjust_brightness(image, -40.5).numpy(), atol=1e-4)
  np.testing.assert_allclose(image_ops.adjust_contrast(image, 1.7),
                             tf.image.adjust_contrast(image, 1.7).numpy(), atol=1e-3)
  np.testing.assert_array_equal(image[:, ::-1], tf.image.flip_left_right(image).numpy())


def test_random_crop_is_a_window_of_the_image(images):
  image = images[2]
  for seed in range(10):
    crop = np.asarray(image_ops.random_crop(jax.random.PRNGKey(seed), image, 24))
    found = [(top, left) for top in range(9) for left in range(9)
             if np.array_equal(image[top:top + 24, left:left + 24], crop)]
    assert found


def test_every_augmentation_is_a_registered_entry_the_pipeline_runs_in_one_form(images):
  """The built-in augmentations are entries with targets, as cutout and those from outside: the
  pipeline runs the registered classes (off by default: the image as it was), each on its own
  part of the image's key."""
  from experiments import cifar10  # pylint: disable=g-import-not-at-top
  assert all(augmentations.AUGMENTATIONS.get(name).target is not None
             for name in augmentations.AUGMENTATIONS.names())
  tutorial = augmentations.Augmentation.from_config(cifar10.get_config(), 10)
  assert tutorial.built_in == (augmentations.Crop(24), augmentations.Flip(True, False, 10),
                               augmentations.Brightness(63.0), augmentations.Contrast((0.2, 1.8)))
  identity = input_pipeline.Normalization('channel_normalization', (0.0,) * 3, (1 / 255,) * 3)
  nothing = augmentations.Augmentation.of(normalization=identity)
  out = augmentations.augment_batch(images, np.arange(6), jax.random.PRNGKey(0), 3, nothing)
  np.testing.assert_allclose(out, images.astype(np.float32), atol=1e-4)
  # One image by hand: each stage called with its part of the key, in order.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 3), 4)
  keys = jax.random.split(key, 4)
  image = jnp.asarray(images[4], jnp.float32)
  for stage, stage_key in zip(tutorial.built_in, keys, strict=True):
    image = stage(stage_key, image, 3)
  expected = tutorial.normalization(image)
  out = augmentations.augment_batch(images, np.arange(6), jax.random.PRNGKey(0), 3, tutorial)
  np.testing.assert_allclose(out[4], expected, atol=1e-5)
  with pytest.raises(TypeError, match=r"\['blur'\] are not built-in augmentations"):
    augmentations.Augmentation.of(blur=None)


def test_augmentation_ranges(images):
  options = augmentations.Augmentation.of(
      crop=augmentations.Crop(24), flip=augmentations.Flip(True),
      brightness=augmentations.Brightness(63.0), contrast=augmentations.Contrast((0.2, 1.8)))
  out = augmentations.augment_batch(images, np.arange(6), jax.random.PRNGKey(0), 0, options)
  assert out.shape == (6, 24, 24, 3)
  np.testing.assert_allclose(out[1:].mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
  np.testing.assert_allclose(out[1:].std(axis=(1, 2, 3)), 1.0, atol=1e-3)
  # Same key and example ids: same result, whatever the order within the batch.
  permuted = augmentations.augment_batch(images[::-1], np.arange(6)[::-1],
                                          jax.random.PRNGKey(0), 0, options)
  np.testing.assert_allclose(permuted[::-1], out, atol=1e-6)


def test_batch_schedule_permutes_each_epoch_deterministically():
  schedule = input_pipeline.BatchSchedule(num_examples=103, per_device_batch_size=5,
                                          num_local_devices=2, seed=3)
  assert schedule.global_batch_size == 10 and schedule.steps_per_epoch == 10
  epoch0 = schedule.indices(0, 10).transpose(1, 0, 2).ravel()  # [devices, steps, batch]
  epoch1 = schedule.indices(10, 10).transpose(1, 0, 2).ravel()
  assert len(set(epoch0)) == 100 and len(set(epoch1)) == 100  # no repeats in an epoch
  assert not np.array_equal(epoch0, epoch1)
  again = input_pipeline.BatchSchedule(103, 5, 2, seed=3)
  np.testing.assert_array_equal(again.indices(13), schedule.indices(13))
  assert schedule.indices(0).shape == (2, 1, 5)
  np.testing.assert_array_equal(schedule.indices(3, 2)[:, 1], schedule.indices(4)[:, 0])


def test_batch_schedule_splits_the_global_batch_across_processes():
  whole = input_pipeline.BatchSchedule(100, 4, 2, seed=0, num_processes=2, process_index=0)
  other = input_pipeline.BatchSchedule(100, 4, 2, seed=0, num_processes=2, process_index=1)
  single = input_pipeline.BatchSchedule(100, 4, 4, seed=0)
  for step in (0, 7, 31):
    both = np.concatenate([whole.indices(step).ravel(), other.indices(step).ravel()])
    np.testing.assert_array_equal(both, single.indices(step).ravel())


def test_train_batch_gathers_on_each_device():
  devices = jax.local_devices()[:2]
  rng = np.random.default_rng(1)
  split = Split(rng.integers(0, 256, (20, 32, 32, 3)).astype(np.uint8),
                np.arange(20, dtype=np.int32) % 10, tuple('abcdefghij'))
  data = input_pipeline.put_on_devices(split, devices)
  indices = np.array([[3, 4, 5], [17, 18, 19]], np.int32)
  gather = parallel.pmap(
      lambda d, i: input_pipeline.eval_batch(d, i, input_pipeline.EvalPreprocessing(24)),
      devices)
  batch = gather(data, indices)
  np.testing.assert_array_equal(batch['label'], split.labels[indices])
  expected = jax.vmap(functools.partial(input_pipeline.preprocess_eval_image, crop_size=24))(
      split.images[indices.ravel()])
  np.testing.assert_allclose(np.asarray(batch['image']).reshape(expected.shape), expected,
                             atol=1e-5)


# ----------------------------------------------------------------------------
# airbench's options.

AIRBENCH = augmentations.Augmentation.of(
    crop=augmentations.Crop(32), flip=augmentations.Flip(True),
    normalization=input_pipeline.Normalization(
        'channel_normalization', channel_mean=(0.5, 0.25, 0.0), channel_std=(0.5, 0.25, 1.0)))


def _normalized(images):
  return (images.astype(np.float32) / 255 - np.array([0.5, 0.25, 0.0])) / np.array(
      [0.5, 0.25, 1.0])


def test_alternating_flip_schedule():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  ids = np.arange(100, 116)
  key = jax.random.PRNGKey(3)
  options = augmentations.Augmentation.of(
      crop=augmentations.Crop(32), flip=augmentations.Flip(True, alternating=True,
                                                           steps_per_epoch=5),
      normalization=AIRBENCH.normalization)
  flips = {}
  for step in (0, 4, 5, 9, 10, 15):
    out = np.asarray(augmentations.augment_batch(images, ids, key, step, options))
    flipped = np.array([np.allclose(o, _normalized(i[:, ::-1]), atol=1e-5)
                        for o, i in zip(out, images, strict=True)])
    plain = np.array([np.allclose(o, _normalized(i), atol=1e-5)
                      for o, i in zip(out, images, strict=True)])
    assert np.all(flipped ^ plain)
    flips[step] = flipped
  # Epoch 0: a random flip per example, the same at every step of the epoch...
  assert 0 < flips[0].sum() < 16
  np.testing.assert_array_equal(flips[0], flips[4])
  # ...then every example the other way each epoch.
  np.testing.assert_array_equal(flips[5], ~flips[0])
  np.testing.assert_array_equal(flips[9], ~flips[0])
  np.testing.assert_array_equal(flips[10], flips[0])
  np.testing.assert_array_equal(flips[15], ~flips[0])


@pytest.mark.parametrize('padding_mode', ['reflect', 'constant'])
def test_translation_is_a_window_of_the_padded_image(padding_mode):
  """airbench's reflect padding, or torchvision's RandomCrop(padding=2): black (0) borders."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  options = augmentations.Augmentation.of(
      crop=augmentations.Crop(32, translate=2, padding_mode=padding_mode),
      normalization=AIRBENCH.normalization)
  out = np.asarray(augmentations.augment_batch(images, np.arange(8), jax.random.PRNGKey(0), 0,
                                                options))
  shifts = set()
  for o, image in zip(out, images, strict=True):
    padded = _normalized(np.pad(image, ((2, 2), (2, 2), (0, 0)), mode=padding_mode))
    found = [(top, left) for top in range(5) for left in range(5)
             if np.allclose(padded[top:top + 32, left:left + 32], o, atol=1e-5)]
    assert found
    shifts.add(found[0])
  assert len(shifts) > 1


def test_channel_normalization_and_its_bad_name():
  image = np.full((32, 32, 3), 255, np.uint8)
  out = input_pipeline.preprocess_eval_image(image, crop_size=32,
                                             normalization=AIRBENCH.normalization)
  np.testing.assert_allclose(out[0, 0], [1.0, 3.0, 1.0])
  with pytest.raises(UserError, match='config.preprocess'):
    validation.validate(tiny_config(preprocess='imagenet'))


def test_eval_resize_matches_tf_antialiased_resize():
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (64, 48, 3)).astype(np.float32)
  resized = input_pipeline.resize_shorter_side(image, 24)
  assert resized.shape == (32, 24, 3)
  expected = tf.image.resize(image, (32, 24), method='bilinear', antialias=True).numpy()
  np.testing.assert_allclose(resized, expected, atol=1e-3)


def test_cutout_registered_in_the_package_is_named_in_extra_with_its_field():
  """An in-package augmentation with a field (cutout) is named in config.augment.extra like one
  from outside; its size comes with it (16) and can be set; it cuts one square per image, set to
  the image's mean colour, clipped at the edges."""
  from cifar_jax.config import overrides  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  overrides.apply(config, {'augment.extra': ('cutout',)})
  assert config.augment.cutout_size == 16
  overrides.apply(config, {'augment.cutout_size': 5})
  validation.validate(config)
  (cutout,) = augmentations.Augmentation.from_config(config, 1).extra
  image = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (12, 10, 3)), jnp.float32)
  for seed in range(20):
    cut = np.asarray(cutout(jax.random.key(seed), image, 0))
    changed = np.any(cut != np.asarray(image), axis=-1)
    rows, cols = np.nonzero(changed)
    assert 0 < changed.sum() <= 25
    assert changed.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    np.testing.assert_allclose(cut[changed], np.broadcast_to(
        np.asarray(image).mean(axis=(0, 1)), (changed.sum(), 3)), rtol=1e-6)
