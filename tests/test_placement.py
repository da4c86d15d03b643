"""Where the training split lives: device and host placement give bit-identical parameters."""

import logging
import os

import jax
import numpy as np
from PIL import Image
import pytest

from cifar_jax.core import parallel
from cifar_jax.data import datasets, input_pipeline
from cifar_jax.evaluation import scoring
from cifar_jax.run import train
from cifar_jax.training import builder, placement
from tests.conftest import run_steps, tiny_airbench_config, tiny_config


def _split(num_examples=64, size=8):
  rng = np.random.default_rng(0)
  return datasets.Split(rng.integers(0, 256, (num_examples, size, size, 3), dtype=np.uint8),
                        rng.integers(0, 10, num_examples).astype(np.int32),
                        tuple(f'c{i}' for i in range(10)))


def test_auto_keeps_a_split_on_the_device_while_it_fits_a_quarter_of_its_memory(monkeypatch,
                                                                                 caplog):
  caplog.set_level(logging.INFO)
  split, devices = _split(), jax.local_devices()[:1]
  need = placement.split_bytes(split)
  assert placement.choose('host', split, devices) == 'host'
  assert placement.choose('device', split, devices) == 'device'
  monkeypatch.setattr(placement, 'device_memory_bytes', lambda device: 4 * need)
  assert placement.choose('auto', split, devices) == 'device'
  monkeypatch.setattr(placement, 'device_memory_bytes', lambda device: 4 * need - 1)
  assert placement.choose('auto', split, devices) == 'host'
  assert 'config.dataset.placement=auto' in caplog.text and 'lives on the host' in caplog.text


def test_a_cpus_memory_is_the_hosts():
  memory = placement.device_memory_bytes(jax.local_devices()[0])
  assert memory == os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def test_the_host_feed_gathers_each_devices_rows_in_the_schedules_order():
  split, devices = _split(), jax.local_devices()[:2]
  schedule = input_pipeline.BatchSchedule(64, 4, 2, seed=0)
  feed = placement.HostFeed(split, devices, schedule)
  try:
    calls = [type('Call', (), {'start': s, 'num_steps': 3})() for s in (0, 3, 6, 9)]
    for call, data, indices in feed.calls(iter(calls)):
      np.testing.assert_array_equal(indices, schedule.indices(call.start, 3))
      assert indices.shape == (2, 3, 4)
      np.testing.assert_array_equal(np.asarray(data.images), split.images[indices])
      np.testing.assert_array_equal(np.asarray(data.labels), split.labels[indices])
      assert [s.device for s in data.images.addressable_shards] == devices
  finally:
    feed.close()


@pytest.mark.parametrize('make_config', [
    pytest.param(lambda: tiny_config(num_devices=2), id='tutorial'),
    pytest.param(lambda: tiny_config(num_devices=2, num_replicas=2),
                 id='tutorial-replicas-loop', marks=pytest.mark.slow),
    pytest.param(
        lambda: tiny_airbench_config(num_devices=2, num_replicas=2, replica_execution='vmap'),
        id='airbench-replicas-vmap', marks=pytest.mark.slow),
])
def test_host_and_device_placement_give_bit_identical_parameters(make_config):
  results = {}
  for where in ('device', 'host'):
    config = make_config()
    config.dataset.placement = where
    results[where] = run_steps(config, 5)
  (device_state, device_losses), (host_state, host_losses) = results['device'], results['host']
  np.testing.assert_array_equal(np.asarray(device_losses), np.asarray(host_losses))
  for a, b in zip(jax.tree.leaves(device_state), jax.tree.leaves(host_state), strict=True):
    np.testing.assert_array_equal(a, b)


def _write_folder(root, per_class=24, size=12):
  rng = np.random.default_rng(0)
  for name in ('a', 'b', 'c'):
    os.makedirs(root / 'train' / name)
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
          root / 'train' / name / f'{i:03d}.png')


@pytest.mark.slow
def test_training_from_the_memory_mapped_cache_on_the_host_matches_the_device(tmp_path):
  """The trainer end to end, several steps per call, prefetching: the same final parameters."""
  _write_folder(tmp_path / 'data')
  states = {}
  for where in ('device', 'host'):
    config = tiny_config(num_devices=2, num_train_steps=6, steps_per_call=3,
                         checkpoint_every_steps=6, crop_size=8, **{
                             'dataset.source': 'image_folder',
                             'dataset.path': str(tmp_path / 'data'),
                             'dataset.cache_dir': str(tmp_path / 'cache'),
                             'dataset.train_split': 'train[:80%]',
                             'dataset.eval_split': 'train[80%:]',
                             'dataset.placement': where})
    states[where] = train.train_and_evaluate(config, str(tmp_path / where),
                                             evaluate_in_process=False)
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  assert isinstance(split.images, np.memmap)
  for a, b in zip(jax.tree.leaves(states['device']), jax.tree.leaves(states['host']),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(states['host'].step) == 6


def test_the_setup_says_where_the_split_lives():
  config = tiny_config(num_devices=1, **{'dataset.placement': 'host'})
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  devices = parallel.select_devices(1)
  setup = builder.build(config, split, devices)
  assert setup.placement == 'host' and isinstance(setup.feed(split), placement.HostFeed)
  config.dataset.placement = 'auto'  # 0.5 MB of a CPU host's memory: on the device
  setup = builder.build(config, split, devices)
  assert setup.placement == 'device' and isinstance(setup.feed(split), placement.DeviceFeed)


def test_the_evaluator_scores_the_same_with_the_split_on_the_host():
  config = tiny_config(num_devices=2)
  split = datasets.load_split(config.dataset, config.dataset.eval_split)
  devices = parallel.select_devices(2)
  setup = builder.build(config, num_classes=split.num_classes, image_shape=split.image_shape)
  variables = builder.build(config, datasets.load_split(config.dataset, 'train')).state.variables()
  predictions = {}
  for where in ('device', 'host'):
    config.dataset.placement = where
    evaluator = scoring.Evaluator(config, split, setup.model, devices)
    assert (evaluator._data is None) == (where == 'host')  # pylint: disable=protected-access
    predictions[where] = evaluator.predict(variables)
  for a, b in zip(predictions['device'], predictions['host'], strict=True):
    np.testing.assert_array_equal(a, b)
