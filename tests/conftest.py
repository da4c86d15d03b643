"""Shared test set-up: eight fake CPU devices, tiny configs, a few training steps.

XLA_FLAGS must be set before jax is first imported, so it is set here.
"""

import atexit
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent compilation cache for the session, in-process and in the commands the
# tests start (they inherit the environment; a cache directory given to JAX wins over
# config.compilation_cache_dir): the same tiny program, compiled once, loads in
# milliseconds in the next test. Results are those of a fresh compilation.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix='cifar_jax_tests_compilation_cache_')
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _COMPILATION_CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import deprecations  # noqa: E402

deprecations.install()  # CIFAR_JAX_STRICT_DEPRECATIONS=1: before the project is imported

import jax  # noqa: E402

from cifar_jax.core import parallel  # noqa: E402
from cifar_jax.data import datasets  # noqa: E402
from cifar_jax.training import builder  # noqa: E402
from cifar_jax.workdir import checkpoints  # noqa: E402
from experiments import (  # noqa: E402
    airbench94_muon,
    airbench94_smoke,
    preact_resnet18,
    resnet18,
    smoke,
    wrn28_10,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope='module')
def _release_compiled_programs():
  """Each test module ends by emptying JAX's in-memory caches (the persistent one stays).

  JAX keeps every compiled program of a live function loaded (up to 2,048 per
  cache), and each loaded CPU executable holds memory maps: one session of all
  the tests otherwise passes Linux's limit of 65,530 maps per process
  (vm.max_map_count) about three quarters of the way through, and XLA's loader
  aborts the process. The next module reloads what it needs from the
  persistent cache in milliseconds.
  """
  yield
  jax.clear_caches()


@pytest.fixture(autouse=True)
def _no_deprecated_calls():
  """With CIFAR_JAX_STRICT_DEPRECATIONS=1, a test fails where the project called something its
  libraries deprecate (tests/deprecations.py)."""
  yield
  if deprecations.ENABLED and (found := deprecations.check()):
    pytest.fail('The project called what its libraries deprecate; change the call (never '
                'filter it):\n  ' + '\n  '.join(found), pytrace=False)


def tiny_config(base=None, **overrides):
  """`base` (default: the smoke config) with a tiny net and data: a step takes milliseconds.

  Overrides take dotted names: tiny_config(**{'eval.run_once': True}).
  """
  config = base if base is not None else smoke.get_config()
  config.dataset.cache_dir = ''
  config.dataset.synthetic_train_size = 512
  config.dataset.synthetic_test_size = 200
  if config.model.name == 'airbench94':
    config.model.widths = (8, 16, 16)
    config.model_init_examples = 256
  elif config.model.name != 'tutorial_cnn':
    pass  # tiny_family_config sets its widths
  else:
    config.model.conv_features = 8
    config.model.local3_features = 16
    config.model.local4_features = 8
  config.per_device_batch_size, config.batch_size = 8, 0
  config.num_devices = 1
  config.num_train_steps = 20
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  config.histogram_every_steps = 10
  config.histogram_sample_size = 4
  config.input_image_grid_size = 4
  config.eval.batch_size = 64
  # In-process runs share one JAX cache per process; the command-line tests use theirs.
  config.compilation_cache_dir = ''
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def tiny_airbench_config(muon=False, **overrides):
  """airbench94 (or airbench94_muon) at widths 8/16/16 on tiny synthetic data, 20 steps.

  Whitening from 256 images, 64 steps per epoch (so the alternating flip and
  the whitening bias's 3 epochs matter only in tests that ask for them).
  """
  base = airbench94_smoke.get_config()
  if muon:
    muon_config = airbench94_muon.get_config()
    for field in ('model', 'hyperparameter_form', 'optimizer', 'momentum', 'nesterov',
                  'learning_rate', 'weight_decay', 'schedule', 'optimizer_groups', 'lookahead'):
      base[field] = muon_config[field]
  return tiny_config(base, **{'eval.batch_size': 50, **overrides})


def tiny_family_config(recipe='resnet18', **overrides):
  """A ResNet-family recipe (experiments/resnet18.py, preact_resnet18.py, wrn28_10.py) at width
  4 (WRN-10-1), 16x16 synthetic images, batch 8, 20 steps: every block kind, a step in ms."""
  module = {'resnet18': resnet18, 'preact_resnet18': preact_resnet18,
            'wrn28_10': wrn28_10}[recipe]
  config = module.get_config()
  config.dataset.source = 'synthetic'
  config.dataset.synthetic_image_size = 16
  config.crop_size = 16
  config.augment.translate = 2
  config.num_train_epochs = 0.0
  if config.model.name == 'wide_resnet':
    config.model.depth, config.model.width_factor, config.model.stem_width = 10, 1, 4
  else:
    config.model.width = 4
  config.eval.poll_secs = 1.0
  return tiny_config(config, **overrides)


def run_steps(config, num_steps, fixed_indices=None):
  """k steps of the parallel train step; returns (host state, per-step losses).

  `fixed_indices` [devices, batch]: the same examples at every step. With
  replicas, each step's loss is an array of the replicas' losses.
  """
  devices = parallel.select_devices(config.num_devices)
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  setup = builder.build(config, split, devices)
  state = parallel.replicate(setup.state, devices)
  feed = setup.feed(split)  # config.dataset.placement: the split on the devices or the host
  losses = []
  for step in range(num_steps):
    indices = (setup.batches.indices(step) if fixed_indices is None
               else np.asarray(fixed_indices)[:, None])
    data = feed.gather(indices) if setup.placement == 'host' else feed.data
    state, metrics = setup.parallel_steps(state, data, indices)
    loss = np.asarray(metrics['loss'][0])[..., 0]  # [devices, (replicas,) steps]
    losses.append(float(loss) if loss.ndim == 0 else loss)
  return parallel.unreplicate(state), losses


def restore_latest(workdir, config=None):
  """The state of the latest checkpoint in WORKDIR (a `config`, default tiny_config(), model)."""
  config = config if config is not None else tiny_config()
  manager = checkpoints.create_manager(workdir, read_only=True)
  template = builder.build(config, num_classes=10).state
  state = checkpoints.load(manager, manager.latest_step(), template, config).state
  return state
