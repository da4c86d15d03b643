"""A Flax NNX model named 'module:ClassName' trains, checkpoints, resumes, is scored by the
evaluator and loads in the notebook API, with BatchNorm statistics over the global batch."""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cifar_jax import experiment, models
from cifar_jax.config import validation
from cifar_jax.core import parallel
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.run import evaluate, train
from cifar_jax.training import builder, loop
from tests.conftest import tiny_config

MY_NNX = '''
from flax import nnx
import jax.numpy as jnp


class TinyNNX(nnx.Module):
  """A convolution, BatchNorm over the global batch, a linear head."""

  def __init__(self, num_classes: int, in_channels: int, *, features: int = 8,
               axis_name: str | None = None, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, features, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(features, axis_name=axis_name, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, images, train: bool = False):
    x = self.norm(self.conv(images), use_running_average=not train)
    return self.head(jnp.mean(nnx.relu(x), axis=(1, 2)))


class NoChannels(nnx.Module):
  def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
    self.head = nnx.Linear(3, num_classes, rngs=rngs)
'''


@pytest.fixture
def my_nnx(tmp_path, monkeypatch):
  (tmp_path / 'my_nnx.py').write_text(MY_NNX)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield
  sys.modules.pop('my_nnx', None)


def nnx_config(**overrides):
  config = tiny_config(**{'num_train_steps': 4, 'checkpoint_every_steps': 2, 'num_devices': 2,
                          'l2_penalty_modules': (), **overrides})
  config.model = ml_collections.ConfigDict({'name': 'my_nnx:TinyNNX', 'features': 4})
  return config


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_an_nnx_model_trains_resumes_is_scored_and_loads(my_nnx, tmp_path):
  workdir = str(tmp_path / 'run')
  state = train.train_and_evaluate(nnx_config(), workdir, evaluate_in_process=False)
  assert state.params['conv']['kernel'].shape == (3, 3, 3, 4)
  assert set(state.batch_stats['norm']) == {'mean', 'var'}
  assert np.any(state.batch_stats['norm']['var'] != 1.0)  # the statistics moved in training
  resumed = train.train_and_evaluate(nnx_config(num_train_steps=6), workdir,
                                     evaluate_in_process=False)
  assert int(resumed.step) == 6
  scored = evaluate.evaluate(nnx_config(**{'eval.run_once': True}), workdir)
  assert 0 <= scored[6].precision_raw <= 1
  run = experiment.load_checkpoint(workdir)
  jax.tree.map(np.testing.assert_array_equal, run.state.params, resumed.params)
  probabilities = experiment.predict(run, np.zeros((3, 32, 32, 3), np.uint8))
  assert probabilities.shape == (3, 10)


def test_nnx_batch_norm_statistics_are_those_of_the_global_batch(my_nnx):
  """One device or two: the same statistics and parameters after a step (the device axis
  reaches nnx.BatchNorm)."""
  split = datasets.load_split(nnx_config().dataset, 'train')
  after = []
  for count in (1, 2):
    config = nnx_config(per_device_batch_size=16 // count)  # one global batch of 16
    devices = parallel.select_devices(count)
    setup = builder.build(config, split, devices)
    feed = setup.feed(split)
    state = parallel.replicate(setup.state, devices)
    (_, data, indices), = feed.calls(iter([loop.Call(0, 1)]))
    state, _ = setup.parallel_steps(state, data, indices)
    after.append(parallel.unreplicate(state))
  np.testing.assert_allclose(after[0].batch_stats['norm']['mean'],
                             after[1].batch_stats['norm']['mean'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(after[0].params['conv']['kernel'],
                             after[1].params['conv']['kernel'], rtol=1e-4, atol=1e-6)


def test_an_nnx_model_takes_its_channels_and_config_fields(my_nnx):
  model = models.create_model(ml_collections.ConfigDict({'name': 'my_nnx:TinyNNX',
                                                         'features': 5}), 7, in_channels=1)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 8, 8, 1)), train=False)
  assert variables['params']['conv']['kernel'].shape == (3, 3, 1, 5)
  assert model.apply(variables, jnp.ones((2, 8, 8, 1))).shape == (2, 7)
  assert models.model_fields('my_nnx:TinyNNX') == {'features': 8}


@pytest.mark.parametrize('model, words', [
    ({'name': 'my_nnx:NoChannels'}, r'NoChannels.__init__ takes no in_channels'),
    ({'name': 'my_nnx:TinyNNX', 'width': 3}, r"has no field 'width'"),
    ({'name': 'my_nnx:TinyNNX', 'features': 2.5}, r'takes a int there'),
])
def test_an_nnx_model_off_the_contract_is_one_sentence(my_nnx, model, words):
  config = nnx_config()
  config.model = ml_collections.ConfigDict(model)
  with pytest.raises(UserError, match=words):
    validation.validate(config)


@pytest.mark.slow  # (the fast tier proves replicas and sweeps on the Linen families)
def test_an_nnx_model_runs_as_replicas_of_a_sweep(my_nnx, tmp_path):
  config = nnx_config(num_replicas=2, **{'sweep.learning_rate': (0.05, 0.2)})
  validation.validate(config)
  state = train.train_and_evaluate(config, str(tmp_path / 'sweep'), evaluate_in_process=False)
  kernels = state.params['conv']['kernel']
  assert kernels.shape == (4, 3, 3, 3, 4) and state.batch_stats['norm']['mean'].shape == (4, 4)
  assert len({kernel.tobytes() for kernel in np.asarray(kernels)}) == 4  # four runs, four fits
  run = experiment.load_checkpoint(str(tmp_path / 'sweep'), point=1, replica=0)
  assert run.config.learning_rate == 0.2
