"""The notebook API: each function on a tiny run, checked against the modules it wraps."""

import logging
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

from cifar_jax import experiment
from cifar_jax.core import parallel
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations, datasets, input_pipeline
from cifar_jax.evaluation import scoring
from cifar_jax.training import builder, train_state
from tests.conftest import REPO_ROOT, restore_latest, tiny_airbench_config, tiny_config

SMOKE = os.path.join(REPO_ROOT, 'experiments', 'smoke.py')


def test_load_config_by_path_with_overrides():
  config = experiment.load_config(SMOKE, {'model.conv_features': 8, 'num_train_steps': 7})
  assert config.model.conv_features == 8 and config.num_train_steps == 7
  assert config.dataset.source == 'synthetic'  # smoke.py's own override of its base
  # A variant that imports its base as experiments.<name>.
  assert experiment.load_config(os.path.join(REPO_ROOT, 'experiments',
                                             'cifar10_jpeg_modern.py')).nesterov
  with pytest.raises(UserError, match='config.num_train_steps is 0'):  # checked as on the CLI
    experiment.load_config(SMOKE, {'num_train_steps': 0})
  with pytest.raises(UserError, match="model 'tutorial_cnn' has no field 'depth'"):
    experiment.load_config(SMOKE, {'model.depth': 3})
  with pytest.raises(UserError, match='No config file'):
    experiment.load_config('experiments/nope.py')


def test_augmented_batch_is_the_trainers_first_batch():
  config = tiny_config()
  split = experiment.load_data(config, 'train')
  images, labels = experiment.augmented_batch(config, split, step=3, count=5)
  setup = builder.build(config, split)
  indices = setup.batches.indices(3)[0, 0]
  expected = augmentations.train_batch(
      input_pipeline.DeviceData(split.images, split.labels), indices, setup.state.rng, 3,
      setup.pieces.options.augmentation)
  np.testing.assert_allclose(images, expected['image'][:5], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(labels, expected['label'][:5])
  assert experiment.load_data(config, 'eval').num_examples == 200


def test_create_train_state_is_the_trainers_initial_state():
  config = tiny_config()
  split = experiment.load_data(config)
  model, state = experiment.create_train_state(config, split)
  assert int(state.step) == 0
  expected = builder.build(config, split, parallel.select_devices(1)).state  # the trainer's
  jax.tree.map(np.testing.assert_array_equal, state.params, expected.params)
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, expected.params)
  logits = model.apply(state.variables(), np.zeros((2, 24, 24, 3), np.float32))
  assert logits.shape == (2, 10)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('notebook_run'))
  logged = []
  state = experiment.train(tiny_config(eval_every_steps=10), workdir, num_steps=20,
                           on_log=lambda step, metrics: logged.append((step, metrics)))
  return workdir, state, logged


def test_train_reports_every_log_line_and_writes_a_normal_run(tiny_run):
  workdir, state, logged = tiny_run
  assert int(state.step) == 20
  assert [step for step, _ in logged] == [5, 10, 15, 20]
  assert {'loss', 'cross_entropy', 'precision', 'learning_rate', 'examples_per_sec'} <= set(
      logged[0][1])
  metrics = experiment.read_metrics(workdir)
  assert list(metrics.index) == [5, 10, 15, 20]
  np.testing.assert_allclose(metrics['loss'], [m['loss'] for _, m in logged], rtol=1e-6)


def test_load_checkpoint_latest_and_by_step(tiny_run):
  workdir, state, _ = tiny_run
  run = experiment.load_checkpoint(workdir)
  assert run.step == 20 and run.config.num_train_steps == 20
  assert len(run.class_names) == 10
  expected = restore_latest(workdir)
  jax.tree.map(np.testing.assert_array_equal, run.params('ema'), expected.ema_params)
  jax.tree.map(np.testing.assert_array_equal, run.params('raw'), state.params)
  assert experiment.load_checkpoint(workdir, step=10).step == 10
  with pytest.raises(UserError, match='No checkpoint of step 7'):
    experiment.load_checkpoint(workdir, step=7)
  with pytest.raises(UserError, match='ema or raw'):
    run.params('best')


def test_load_checkpoint_prints_no_library_warnings_into_a_notebook(tiny_run, caplog):
  caplog.set_level(logging.INFO)
  experiment.load_checkpoint(tiny_run[0])
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_load_checkpoint_without_checkpoints_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='No checkpoints'):
    experiment.load_checkpoint(str(tmp_path))


def test_predict_agrees_with_the_evaluator(tiny_run):
  workdir, _, _ = tiny_run
  run = experiment.load_checkpoint(workdir)
  split = datasets.load_split(run.config.dataset, run.config.dataset.eval_split)
  probabilities = experiment.predict(run, split.images, which='raw', batch_size=64)
  assert probabilities.shape == (200, 10)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
  evaluator = scoring.Evaluator(run.config, split, run.model, parallel.select_devices(1))
  predictions, _ = evaluator.predict(run.variables('raw'))
  np.testing.assert_array_equal(probabilities.argmax(-1), predictions)


def test_read_evaluations_and_plot_run(tiny_run):
  workdir, _, _ = tiny_run
  table = experiment.read_evaluations(workdir)
  assert list(table.index) == [10, 20]
  assert set(table['status']) == {'scored'}
  assert ((table['precision'] >= 0) & (table['precision'] <= 1)).all()
  figure = experiment.plot_run(workdir, title='tiny')
  loss_axis, precision_axis = figure.axes
  assert len(loss_axis.lines) == 2 and len(precision_axis.lines) == 2
  np.testing.assert_allclose(precision_axis.lines[0].get_ydata(), table['precision'])
  np.testing.assert_allclose(precision_axis.lines[1].get_ydata(), table['precision_raw'])


def test_reading_an_empty_workdir_gives_empty_tables(tmp_path):
  assert len(experiment.read_metrics(str(tmp_path))) == 0
  assert len(experiment.read_evaluations(str(tmp_path))) == 0




def test_tables_of_a_killed_run_skip_the_cut_line(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 5, "loss": 2.0}\n{"step": 10, "lo')
  table = experiment.read_metrics(str(tmp_path))
  assert list(table.index) == [5] and table['loss'].tolist() == [2.0]


@pytest.mark.slow
def test_an_airbench_checkpoint_predicts_with_batch_stats_and_tta(tmp_path):
  workdir = str(tmp_path / 'airbench')
  experiment.train(tiny_airbench_config(), workdir, num_steps=4, evaluate_in_process=False)
  run = experiment.load_checkpoint(workdir)
  split = datasets.load_split(run.config.dataset, run.config.dataset.eval_split)
  assert run.config.eval.tta == 'mirror_translate'
  evaluator = scoring.Evaluator(run.config, split, run.model, parallel.select_devices(1))
  predictions, _ = evaluator.predict(run.variables('raw'))
  tta = experiment.predict(run, split.images, which='raw')
  np.testing.assert_array_equal(tta.argmax(-1), predictions)
  plain = experiment.predict(run, split.images, which='raw', tta='none')
  assert not np.allclose(plain, tta)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_checkpoint_of_replicas_gives_each_run_on_its_own(tmp_path):
  workdir = str(tmp_path / 'replicas')
  state = experiment.train(tiny_config(num_replicas=2), workdir, num_steps=4,
                           evaluate_in_process=False)
  run = experiment.load_checkpoint(workdir)
  images = experiment.load_data(run.config, 'eval').images[:10]
  assert run.num_replicas == 2
  with pytest.raises(UserError, match='holds 2 runs; predict with one'):
    experiment.predict(run, images)
  second = experiment.load_checkpoint(workdir, replica=1)
  jax.tree.map(np.testing.assert_array_equal, second.state, train_state.replica(state, 1))
  assert second.num_replicas == 1 and second.config.seed == 1  # the run of seed 0 + 1
  assert experiment.predict(second, images).shape == (10, 10)
  with pytest.raises(UserError, match='replica is 0 to 1, not 2'):
    experiment.load_checkpoint(workdir, replica=2)


def test_a_checkpoint_of_an_unregistered_model_is_one_sentence(tmp_path, monkeypatch):
  from cifar_jax import models  # pylint: disable=g-import-not-at-top
  from cifar_jax.run import train  # pylint: disable=g-import-not-at-top

  class MyNet(models.TutorialCNN):  # a model registered by the code that trained it
    pass

  models.MODELS.register('my_net')(MyNet)
  try:
    config = tiny_config(num_train_steps=2, checkpoint_every_steps=2)
    config.model.name = 'my_net'
    train.train_and_evaluate(config, str(tmp_path), evaluate_in_process=False)
  finally:
    models.MODELS.unregister('my_net')  # a fresh process without that code
  with pytest.raises(UserError, match=r"Unknown model 'my_net' \(config.model.name\): the "
                                      r"registered ones are \['tutorial_cnn', 'airbench94', "
                                      r"'resnet', 'preact_resnet', 'wide_resnet', "
                                      r"'torchvision_resnet18', 'torchvision_resnet50'\]; "
                                      r"name one, "
                                      r"or code outside cifar_jax as 'package.module:Name'"):
    experiment.load_checkpoint(str(tmp_path))


# A model outside the package: any importable flax module that keeps the contract
# (cifar_jax/models/__init__.py, docs/development.md).
_OUTSIDE_MODEL = """
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class TinyNet(nn.Module):
  num_classes: int
  features: int = 8
  axis_name: str | None = None  # cifar_jax sets its device axis: statistics of the global batch
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = nn.Conv(self.features, (3, 3), dtype=self.dtype)(images.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
"""


def test_a_model_outside_the_package_trains_is_saved_scored_and_loaded(tmp_path, monkeypatch):
  from cifar_jax.run import evaluate, train  # pylint: disable=g-import-not-at-top

  (tmp_path / 'my_models.py').write_text(_OUTSIDE_MODEL)
  monkeypatch.syspath_prepend(str(tmp_path))
  workdir = str(tmp_path / 'run')

  def outside_config(**overrides):
    config = tiny_config(num_train_steps=4, checkpoint_every_steps=4, num_devices=2,
                         l2_penalty_modules=(), **overrides)
    config.model = ml_collections.ConfigDict({'name': 'my_models:TinyNet', 'features': 4,
                                              'dtype': 'float32'})
    return config

  state = train.train_and_evaluate(outside_config(), workdir, evaluate_in_process=False)
  assert set(state.batch_stats) == {'BatchNorm_0'} and state.params['Conv_0']['kernel'].shape[
      -1] == 4
  scored = evaluate.evaluate(outside_config(**{'eval.run_once': True}), workdir)
  assert 0 <= scored[4].precision_raw <= 1  # the evaluator built it from the saved config
  run = experiment.load_checkpoint(workdir)
  assert run.config.model.name == 'my_models:TinyNet'
  jax.tree.map(np.testing.assert_array_equal, run.state.params, state.params)
  assert experiment.predict(run, np.zeros((3, 32, 32, 3), np.uint8)).shape == (3, 10)
  # Elsewhere, without the module: one sentence.
  monkeypatch.delitem(sys.modules, 'my_models')
  monkeypatch.setattr(sys, 'path', [p for p in sys.path if p != str(tmp_path)])
  with pytest.raises(UserError, match=r"'my_models' cannot be imported .*put its folder on "
                                      'PYTHONPATH'):
    experiment.load_checkpoint(workdir)


def test_an_outside_model_that_breaks_the_contract_is_one_sentence(tmp_path, monkeypatch):
  (tmp_path / 'bad_models.py').write_text(_OUTSIDE_MODEL + """

class NoClasses(nn.Module):
  @nn.compact
  def __call__(self, images, train=False):
    return images


class Broken(TinyNet):
  @nn.compact
  def __call__(self, images, train=False):
    return nn.Dense(self.num_classes)(images.reshape(-1))[None].reshape(3, 3, 3)
""")
  monkeypatch.syspath_prepend(str(tmp_path))
  from cifar_jax.config import validation  # pylint: disable=g-import-not-at-top
  for name, words in [('bad_models:Missing', "bad_models has no 'Missing'"),
                      ('bad_models:NoClasses', 'has no num_classes field'),
                      ('bad_models:Broken', 'cannot be built on')]:
    config = tiny_config(l2_penalty_modules=())
    config.model = ml_collections.ConfigDict({'name': name})
    with pytest.raises(UserError, match=words):
      validation.validate(config)
  config = tiny_config()
  config.model = ml_collections.ConfigDict({'name': 'bad_models:TinyNet', 'feature': 3})
  with pytest.raises(UserError, match="has no field 'feature'"):
    validation.validate(config)
