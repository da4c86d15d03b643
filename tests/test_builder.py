"""The builder: one state, step and schedule per config; replica r is the run of seed + r."""

import functools

import jax
import numpy as np
import pytest

from cifar_jax.core import parallel
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.training import builder, train_state
from tests.conftest import run_steps, tiny_airbench_config, tiny_config

STEPS, BATCH = 4, 16


@functools.cache
def _single_run(config_name, seed, num_devices):
  make = {'tutorial': tiny_config, 'airbench': tiny_airbench_config}[config_name]
  state, _ = run_steps(make(seed=seed, num_devices=num_devices,
                            per_device_batch_size=BATCH // num_devices), STEPS)
  return state


@pytest.mark.parametrize('config_name, num_devices, execution, steps_per_call', [
    pytest.param('tutorial', 1, 'loop', 1, marks=pytest.mark.slow),
    pytest.param('tutorial', 4, 'loop', 1, marks=pytest.mark.slow),
    ('tutorial', 1, 'vmap', 2),  # (the fast tier's proof of replicas)
    pytest.param('airbench', 1, 'loop', 1, marks=pytest.mark.slow),
    pytest.param('airbench', 4, 'vmap', 1, marks=pytest.mark.slow)])
def test_replica_r_is_the_single_run_of_seed_plus_r(config_name, num_devices, execution,
                                                     steps_per_call):
  make = {'tutorial': tiny_config, 'airbench': tiny_airbench_config}[config_name]
  config = make(seed=3, num_replicas=2, replica_execution=execution, num_devices=num_devices,
                per_device_batch_size=BATCH // num_devices, steps_per_call=steps_per_call)
  replicated, losses = run_steps(config, STEPS)
  assert np.shape(losses[0]) == (2,)  # a loss per replica
  assert jax.tree.leaves(replicated)[0].shape[0] == 2  # every leaf leads with the replica axis
  for r in range(2):
    # Initialisation, whitening images, data order and augmentation of seed 3 + r; vmap batches
    # the convolutions over the replicas' weights (grouped), steps_per_call > 1 makes every
    # call a scan: float32 rounding apart, equal.
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-6),
                 train_state.replica(replicated, r), _single_run(config_name, 3 + r, num_devices))


def test_without_a_split_the_state_is_shapes_only_with_the_replica_axis():
  config = tiny_airbench_config(num_replicas=3)
  abstract = builder.build(config, num_classes=10).state
  concrete = builder.build(config, datasets.load_split(config.dataset, 'train')).state
  assert jax.tree.map(np.shape, abstract) == jax.tree.map(np.shape, concrete)
  assert np.shape(concrete.step) == (3,) and np.shape(concrete.rng) == (3, 2)
  # Each replica whitened from its own images: different filters.
  kernels = np.asarray(concrete.params['whiten']['kernel'])
  assert not np.allclose(kernels[0], kernels[1])


def test_a_step_that_does_not_fit_the_device_says_what_to_lower(monkeypatch):
  config = tiny_config(num_replicas=8)
  setup = builder.build(config, datasets.load_split(config.dataset, 'train'),
                        parallel.select_devices(1))

  def exhausted(*args):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                     'allocate 123456789 bytes.')

  mapped = setup.parallel_steps.args[0]  # (the partial binds every run's swept values)
  monkeypatch.setattr(mapped, '_executable', lambda args: exhausted)
  with pytest.raises(UserError, match=r'config.num_replicas=8 runs x config.per_device_batch_'
                                      r'size=8 do not fit the memory of a device; lower '
                                      r'config.num_replicas or config.per_device_batch_size '
                                      r'\(RESOURCE_EXHAUSTED: Out of memory'):
    setup.parallel_steps(None, None, None)


def test_epochs_set_the_steps_when_the_data_are_loaded():
  config = tiny_config(num_train_epochs=2.5)  # 512 examples, batch 8: 64 steps per epoch
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  setup = builder.build(config, split)
  assert setup.config.num_train_steps == 160 and config.num_train_steps == 20
  assert builder.build(tiny_config(), split).config.num_train_steps == 20  # 0 epochs: the steps


def test_a_given_number_of_steps_is_not_shadowed_by_the_recipes_epochs(caplog):
  from experiments import resnet18  # pylint: disable=g-import-not-at-top
  config = resnet18.get_config()  # 200 epochs
  config.num_train_steps = 20
  builder.given_length_wins(config, {'num_train_steps': 20, 'model.width': 4})
  assert (config.num_train_steps, config.num_train_epochs) == (20, 0.0)
  assert "config.num_train_steps=20, as given, decides the run's length" in caplog.text
  # Not given: the recipe's epochs decide, silently, as the recipe says.
  config = resnet18.get_config()
  builder.given_length_wins(config, {'model.width': 4})
  assert config.num_train_epochs == 200.0
  config.num_train_epochs = 3.0
  with pytest.raises(UserError, match=r'config.num_train_steps=.* and config.num_train_epochs=3 '
                                      r'both give the run\'s length; set one'):
    builder.given_length_wins(config, {'num_train_steps': 5, 'num_train_epochs': 3.0})


def test_the_notebooks_overrides_give_the_length_too():
  from cifar_jax import experiment  # pylint: disable=g-import-not-at-top
  config = experiment.load_config('experiments/resnet18.py', {'num_train_steps': 20})
  assert (config.num_train_steps, config.num_train_epochs) == (20, 0.0)


@pytest.mark.parametrize('size, crop_size, field', [
    (8, 0, 'config.dataset.image_size=25'),
    pytest.param(40, 16, 'config.crop_size=25', marks=pytest.mark.slow)])
def test_images_a_network_pools_to_nothing_are_one_sentence_naming_its_smallest_side(
    size, crop_size, field):
  config = tiny_airbench_config(**{'dataset.synthetic_image_size': size, 'crop_size': crop_size,
                                   'augment.translate': 0})
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  with pytest.raises(UserError, match=rf"The model's input is (8x8|16x16) pixels, but airbench94 "
                                      rf'pools images smaller than 25x25 to nothing; set {field} '
                                      'or larger'):
    builder.build(config, split)
  # The tutorial network (SAME pooling) takes them.
  builder.build(tiny_config(**{'dataset.synthetic_image_size': 8, 'crop_size': 0}), split)


def _global_batch_run(num_devices):
  """A tiny airbench94 whose batch is global (the recipe's form): 16 on any number of devices."""
  config = tiny_airbench_config(num_devices=num_devices, per_device_batch_size=0, batch_size=16)
  split = datasets.load_split(config.dataset, 'train')
  setup = builder.build(config, split, parallel.select_devices(num_devices))
  return setup.batches


@pytest.mark.parametrize('num_devices', [1, 2, 4])
def test_a_global_batch_is_the_recipes_on_any_number_of_devices(num_devices):
  batches = _global_batch_run(num_devices)
  assert batches.global_batch_size == 16
  assert batches.per_device_batch_size == 16 // num_devices
  # The batch of a step is the same examples whatever the devices: the same run.
  np.testing.assert_array_equal(np.sort(batches.indices(3).reshape(-1)),
                                np.sort(_global_batch_run(1).indices(3).reshape(-1)))


def test_a_global_batch_that_does_not_divide_over_the_devices_is_one_sentence():
  config = tiny_airbench_config(num_devices=3, per_device_batch_size=0, batch_size=16)
  with pytest.raises(UserError, match=r'config.batch_size=16 \(the global batch\) does not divide '
                                      r'across 3 devices; make it a multiple of 3'):
    builder.build(config, datasets.load_split(config.dataset, 'train'),
                  parallel.select_devices(3))


def test_the_batch_given_wins_over_the_recipes_other_batch_field(caplog):
  import logging  # pylint: disable=g-import-not-at-top
  config = tiny_airbench_config(per_device_batch_size=0, batch_size=1024)
  config.per_device_batch_size = 32
  with caplog.at_level(logging.WARNING):
    builder.respect_given_fields(config, {'per_device_batch_size'})
  assert config.batch_size == 0 and config.per_device_batch_size == 32
  (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert "not the recipe's config.batch_size=1024" in warning
  config = tiny_config()  # per device: 8
  config.batch_size = 64
  builder.respect_given_fields(config, {'batch_size'})
  assert config.per_device_batch_size == 0 and config.batch_size == 64
  both = tiny_config(batch_size=64)
  from cifar_jax.config import validation  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match=r'give the batch one way'):
    validation.validate(both)


def test_a_split_smaller_than_min_steps_per_epoch_batches_trains_on_smaller_ones(caplog):
  import logging  # pylint: disable=g-import-not-at-top
  config = tiny_config(per_device_batch_size=0, batch_size=256, min_steps_per_epoch=10,
                       num_devices=2, **{'dataset.synthetic_train_size': 244})
  split = datasets.load_split(config.dataset, 'train')
  with caplog.at_level(logging.WARNING):
    batches = builder.build(config, split, parallel.select_devices(2)).batches
  assert batches.per_device_batch_size == 12 and batches.steps_per_epoch == 10  # 244 // 20
  assert any('fewer than config.min_steps_per_epoch=10; training with a global batch of 24 '
             '(12 per device)' in r.getMessage() for r in caplog.records)
  # A split large enough keeps the recipe's batch.
  config.dataset.synthetic_train_size = 2560
  large = datasets.load_split(config.dataset, 'train')
  assert builder.build(config, large, parallel.select_devices(2)).batches.global_batch_size == 256
