"""A fork's extensions from outside the package, one file each: a schedule, an augmentation, a
data source (and, in test_experiment.py, a model). Each is named 'module:Name' in a config and
trains, checkpoints, resumes, is scored by the evaluator and loads like a built-in one."""

import sys

import jax
import ml_collections
import numpy as np
import pytest

from cifar_jax import experiment
from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations
from cifar_jax.run import evaluate, train
from cifar_jax.training import schedules
from tests.conftest import tiny_config

# Each string is one file of the fork, as docs/development.md describes them.
FORK_FILES = {
    'fork_schedule.py': '''
"""A one-cycle schedule: up linearly to the peak at `peak_fraction` of the run, down to 0."""
import jax.numpy as jnp
from cifar_jax.core import fields


def one_cycle(settings, span):
  """Linear up to the peak at peak_fraction of the steps, linear down to 0 at the last."""
  top = max(1, int(span.num_steps * settings.peak_fraction))
  def rate(count):
    count = jnp.asarray(count, jnp.float32)
    up, down = count / top, (span.num_steps - count) / max(1, span.num_steps - top)
    return span.peak * jnp.clip(jnp.minimum(up, down), 0.0, 1.0)
  return rate


one_cycle.FIELDS = {'peak_fraction': fields.Field(0.3, fields.number(0.0, 1.0),
                                                   'where the peak is')}
''',
    'fork_cutout.py': '''
"""Cutout (DeVries & Taylor, 2017): a random square of every training image set to grey."""
import jax
import jax.numpy as jnp
from cifar_jax.core import fields


class Cutout:
  """A random cutout_size x cutout_size square of the image set to 127.5."""
  FIELDS = {'cutout_size': fields.Field(8, fields.integer(0), 'side of the square; 0: off')}

  def __init__(self, augment, steps_per_epoch):
    del steps_per_epoch
    self.size = augment.cutout_size

  def __call__(self, key, image, step):
    height, width = image.shape[:2]
    top, left = jax.random.randint(key, (2,), 0, jnp.array([height, width]))
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    inside = ((rows >= top) & (rows < top + self.size) & (cols >= left)
              & (cols < left + self.size))
    return jnp.where(inside, 127.5, image)
''',
    'fork_metric.py': '''
"""The mean confidence: the largest softmax probability of each example."""
import jax


def confidence(logits, labels):
  """The largest softmax probability of each example (of any class)."""
  del labels
  return jax.nn.softmax(logits).max(axis=-1)
''',
    'fork_source.py': '''
"""Stripes: class k is horizontal stripes of period k + 2 (a source with no files)."""
import numpy as np
from cifar_jax.core import fields
from cifar_jax.data import datasets


class Stripes:
  """Images of stripes whose period is the class."""
  FIELDS = {'stripes_per_class': fields.Field(16, fields.integer(1), 'examples per class')}

  def __init__(self, dataset):
    self.dataset = dataset

  def load(self, split):
    count = self.dataset.stripes_per_class
    rng = np.random.default_rng(0 if split.startswith('train') else 1)
    labels = np.repeat(np.arange(3), count).astype(np.int32)
    rows = np.arange(32)[None, :, None, None]
    period = labels[:, None, None, None] + 2
    noise = rng.integers(0, 20, (len(labels), 1, 32, 3))
    images = np.where((rows // period) % 2 == 0, 200, 40) + noise
    images = np.broadcast_to(images, (len(labels), 32, 32, 3)).astype(np.uint8)
    return datasets.Split(images, labels, ('two', 'three', 'four'))
''',
}


@pytest.fixture
def fork(tmp_path, monkeypatch):
  for name, text in FORK_FILES.items():
    (tmp_path / name).write_text(text)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield tmp_path
  for name in FORK_FILES:
    sys.modules.pop(name[:-3], None)


def fork_config(**overrides):
  config = tiny_config(**{'num_train_steps': 6, 'checkpoint_every_steps': 3, 'num_devices': 2,
                          **overrides})
  config.schedule = ml_collections.ConfigDict({'name': 'fork_schedule:one_cycle',
                                               'peak_fraction': 0.5})
  config.augment.extra = ('fork_cutout:Cutout',)
  config.augment.cutout_size = 6
  config.dataset.source = 'fork_source:Stripes'
  config.dataset.stripes_per_class = 16
  config.eval.metrics = ('fork_metric:confidence', 'top5_precision')
  return config


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_forks_schedule_augmentation_and_source_train_resume_score_and_load(fork, tmp_path):
  workdir = str(tmp_path / 'run')
  config = fork_config()
  validation.validate(config)
  rates = []
  train.train_and_evaluate(config, workdir, evaluate_in_process=False,
                           on_log=lambda step, metrics: rates.append(metrics['learning_rate']))
  # The schedule is the fork's: up to the peak at step 3 of 6, down to 0.
  expected = schedules.create(config, schedules.Span(config.learning_rate, 6, 1.0))
  np.testing.assert_allclose(rates[-1], float(expected(5)), rtol=1e-6)
  resumed = train.train_and_evaluate(fork_config(num_train_steps=9), workdir,
                                     evaluate_in_process=False)
  assert int(resumed.step) == 9
  scored = evaluate.evaluate(fork_config(**{'eval.run_once': True}), workdir)
  assert 0 <= scored[9].precision <= 1
  run = experiment.load_checkpoint(workdir)
  # The fork's metric, scored by the evaluator, is the mean top probability of the held-out split.
  split = experiment.load_data(config, 'eval')
  probabilities = experiment.predict(run, split.images)
  np.testing.assert_allclose(scored[9].ema[0].metrics['confidence'],
                             probabilities.max(axis=-1).mean(), rtol=1e-5)
  assert scored[9].ema[0].metrics['top5_precision'] == 1.0  # 3 classes: always among the top 5
  records = experiment.read_evaluations(workdir)
  assert {'confidence', 'confidence_raw', 'top5_precision'} <= set(records.columns)
  assert run.class_names == ['two', 'three', 'four']
  assert run.config.augment.extra == ['fork_cutout:Cutout'] or tuple(
      run.config.augment.extra) == ('fork_cutout:Cutout',)
  jax.tree.map(np.testing.assert_array_equal, run.state.params, resumed.params)


def test_the_forks_augmentation_runs_in_the_trainers_pipeline(fork):
  # (per-pixel normalisation: only the square differs, where per-image standardisation would
  # shift every pixel)
  config = fork_config(preprocess='channel_normalization')
  split = experiment.load_data(config)
  with_cutout, _ = experiment.augmented_batch(config, split, count=8)
  config.augment.extra = ()
  without, _ = experiment.augmented_batch(config, split, count=8)
  # [8, H, W]: the square, per image (elsewhere the same within float32 rounding: XLA fuses
  # the pipeline around the square differently)
  changed = np.any(np.abs(with_cutout - without) > 1e-3, axis=-1)
  assert changed.any(axis=(1, 2)).all()
  assert (changed.sum(axis=(1, 2)) <= 36).all()  # at most a 6x6 square (less at the edges)
  assert isinstance(augmentations.Augmentation.from_config(fork_config(), 1).extra[0],
                    sys.modules['fork_cutout'].Cutout)


@pytest.mark.parametrize('field, value, words', [
    ('schedule.name', 'fork_schedule:missing', r"fork_schedule has no 'missing'"),
    ('schedule.name', 'cosine', r"Unknown schedule 'cosine' \(config.schedule.name\): the "
                                r"registered ones are \['constant', "),
    ('augment.extra', ('nowhere:Cutout',), r"'nowhere' cannot be imported"),
    ('augment.extra', ('flip',), r"names 'flip', which always runs"),
    ('augment.cutout_size', -1, r'config.augment.cutout_size is -1; it must be at least 0'),
    ('dataset.stripes_per_class', 0, r'stripes_per_class is 0; it must be at least 1'),
])
def test_a_wrong_extension_is_one_sentence(fork, field, value, words):
  config = fork_config()
  *parents, leaf = field.split('.')
  target = config
  for parent in parents:
    target = target[parent]
  target[leaf] = value
  if field == 'schedule.name':
    del config.schedule.peak_fraction
  with pytest.raises(UserError, match=words):
    validation.validate(config)


def test_a_saved_config_gets_the_extensions_newer_fields_from_their_declarations(fork):
  """A checkpoint saved before the fork's Cutout gained a field reads it as its `before`."""
  from cifar_jax.core import fields  # pylint: disable=g-import-not-at-top
  cutout = sys.modules.get('fork_cutout') or __import__('fork_cutout')
  cutout.Cutout.FIELDS = {**cutout.Cutout.FIELDS,
                          'cutout_fill': fields.Field(0.0, fields.number(), before=127.5)}
  saved = fork_config().to_dict()
  saved['augment']['extra'] = ['fork_cutout:Cutout']
  upgraded = validation.upgrade_saved_config(saved)
  assert upgraded['augment']['cutout_fill'] == 127.5 and 'cutout_fill' not in saved['augment']
