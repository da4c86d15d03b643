"""Images of any size in the JAX pipeline: whole-image crops, random resized crop, eval resize."""

import jax
import numpy as np
import pytest

from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations, image_ops, input_pipeline
from cifar_jax.training import builder
from tests.conftest import run_steps, tiny_config


def _columns(height=32, width=32):
  """Pixel value = its column index: a crop's values say which columns it took."""
  return np.broadcast_to(np.arange(width, dtype=np.float32)[None, :, None],
                         (height, width, 1)).copy()


def test_crop_size_zero_is_the_whole_image_and_translation_keeps_its_shape():
  image = np.random.default_rng(0).integers(0, 256, (20, 28, 3)).astype(np.float32)
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(image_ops.random_crop(key, image, 0), image)
  np.testing.assert_array_equal(input_pipeline.central_crop(image, 0), image)
  augmentation = augmentations.Augmentation.of(crop=augmentations.Crop(0, translate=2))
  assert augmentations.augment_train_image(key, image, augmentation).shape == (20, 28, 3)
  assert input_pipeline.model_input_shape((20, 28, 1), 0) == (20, 28, 1)
  assert input_pipeline.model_input_shape((64, 64, 3), 24) == (24, 24, 3)


def test_random_resized_crop_of_the_whole_image_is_the_image():
  image = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.float32)
  out = image_ops.random_resized_crop(jax.random.PRNGKey(0), image, 0, (1.0, 1.0),
                                           (1.0, 1.0))
  np.testing.assert_allclose(out, image, atol=1e-3)


@pytest.mark.parametrize('seed', range(5))
def test_random_resized_crop_takes_a_box_of_the_asked_share_and_ratio(seed):
  # A quarter of the area at ratio 1: a 16x16 box of the 32x32 image at full resolution,
  # so the output's columns are 16 consecutive source columns.
  out = np.asarray(image_ops.random_resized_crop(
      jax.random.PRNGKey(seed), _columns(), 16, (0.25, 0.25), (1.0, 1.0)))[..., 0]
  assert out.shape == (16, 16)
  np.testing.assert_allclose(np.diff(out, axis=1)[:, 1:-1], 1.0, atol=1e-4)
  assert 0 <= out[0, 0] and out[0, -1] <= 31
  # Ratio 4 (width / height) at the whole area: clipped to the image's width, all of it seen.
  wide = np.asarray(image_ops.random_resized_crop(
      jax.random.PRNGKey(seed), _columns(), 8, (1.0, 1.0), (4.0, 4.0)))[..., 0]
  assert wide[0, 0] < 2 and wide[0, -1] > 29


def test_random_resized_crops_differ_by_key_and_repeat_by_key():
  image = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.float32)
  crop = lambda seed: np.asarray(image_ops.random_resized_crop(  # noqa: E731
      jax.random.PRNGKey(seed), image, 24, (0.08, 1.0), (3 / 4, 4 / 3)))
  np.testing.assert_array_equal(crop(0), crop(0))
  assert not np.array_equal(crop(0), crop(1))


def test_eval_resize_then_central_crop():
  image = np.broadcast_to(np.arange(64, dtype=np.float32)[None, :, None], (48, 64, 3))
  preprocessing = input_pipeline.EvalPreprocessing(
      crop_size=24, normalization=input_pipeline.Normalization('channel_normalization',
                                                               (0.0,) * 3, (1 / 255,) * 3),
      resize=32)
  out = np.asarray(preprocessing(image))  # resized to 32x43 (shorter side 32), centre 24x24
  assert out.shape == (24, 24, 3)
  np.testing.assert_allclose(np.diff(out[0, :, 0]), 64 / 43, rtol=0.05)


def test_a_small_crop_of_large_images_warns(caplog):
  augmentation = augmentations.Augmentation.of(crop=augmentations.Crop(24))
  augmentation.check((64, 64, 3), 'the training images')
  assert 'config.crop_size=24 shows 14% of each of the training images (64x64)' in caplog.text
  caplog.clear()
  augmentations.Augmentation.of(crop=augmentations.Crop(24)).check((32, 32, 3),
                                                                   'the training images')
  augmentations.Augmentation.of(crop=augmentations.Crop(24, resized=((0.08, 1.0), (0.75, 1.33)))
                                ).check((64, 64, 3), 'the training images')
  assert 'shows' not in caplog.text


def _config(**overrides):
  return tiny_config(**{'dataset.synthetic_image_size': 40, 'crop_size': 0,
                        'num_train_steps': 4, **overrides})


@pytest.mark.parametrize('overrides', [
    {'dataset.channels': 1},
    pytest.param({'dataset.image_size': (24, 32)}, marks=pytest.mark.slow),
    pytest.param({'dataset.image_size': 48, 'augment.random_resized_crop': True,
                  'crop_size': 32, 'eval_resize': 36}, marks=pytest.mark.slow),
])
def test_the_network_follows_the_datas_size_and_channels(overrides):
  config = _config(**overrides)
  validation.validate(config)
  state, losses = run_steps(config, 3)
  first_kernel = state.params['conv1']['kernel']
  channels = overrides.get('dataset.channels', 3)
  assert first_kernel.shape[2] == channels and all(np.isfinite(losses))
  # The restore target built without the split has the same shapes.
  size = overrides.get('dataset.image_size', 40)
  size = (size, size) if isinstance(size, int) else size
  target = builder.build(config, num_classes=10, image_shape=(*size, channels)).state
  assert jax.tree.map(np.shape, target.params) == jax.tree.map(np.shape, state.params)


def test_channel_normalization_must_fit_the_channels():
  """Checked once, where the data are loaded (the images' channels are what they are then)."""
  from cifar_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from cifar_jax.training import builder  # pylint: disable=g-import-not-at-top
  config = _config(**{'dataset.channels': 1, 'preprocess': 'channel_normalization'})
  validation.validate(config)
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  with pytest.raises(UserError, match=r'have 1 channel\(s\) but config.channel_mean and '
                                      r'config.channel_std have 3; give one mean and std per '
                                      r'channel, or set config.dataset.channels=3'):
    builder.build(config, split)
  fitting = _config(**{'dataset.channels': 1, 'preprocess': 'channel_normalization',
                       'channel_mean': (0.5,), 'channel_std': (0.25,)})
  builder.build(fitting, split)


def test_whole_image_evaluation_refuses_another_size():
  preprocessing = input_pipeline.EvalPreprocessing(crop_size=0)
  with pytest.raises(UserError, match=r'are 32x32 but the model was trained on whole 40x40 '
                                      r'images \(config.crop_size=0\)'):
    preprocessing.check((32, 32, 3), 'The images', (40, 40, 3))
  preprocessing.check((40, 40, 3), 'The images', (40, 40, 3))


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_grey_images_of_another_size_train_score_and_predict_end_to_end(tmp_path):
  from cifar_jax import experiment  # pylint: disable=g-import-not-at-top
  from cifar_jax.run import train  # pylint: disable=g-import-not-at-top
  config = _config(**{'dataset.channels': 1, 'dataset.image_size': (24, 32), 'num_train_steps': 6,
                      'checkpoint_every_steps': 6, 'eval_every_steps': 6})
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'eval' / 'metrics.jsonl') as f:
    assert '"precision' in f.read()
  run = experiment.load_checkpoint(str(tmp_path))
  assert run.image_shape == [24, 32, 1]
  images = np.zeros((3, 24, 32, 1), np.uint8)
  assert experiment.predict(run, images).shape == (3, 10)
  with pytest.raises(UserError, match=r'have 3 channel\(s\) but the model was trained on images '
                                      r'of 1'):
    experiment.predict(run, np.zeros((3, 24, 32, 3), np.uint8))
