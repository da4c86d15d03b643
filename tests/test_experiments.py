"""Every config in experiments/ loads and builds; SVHN trains and evaluates (mock tfds)."""

import glob
import importlib
import os
import re

import numpy as np
from PIL import Image
import pytest

from cifar_jax.config import validation
from cifar_jax.core import sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import tfds_source
from cifar_jax.run import train
from cifar_jax.training import builder
from tests.conftest import REPO_ROOT, tiny_config

CONFIGS = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(os.path.join(REPO_ROOT, 'experiments', '*.py'))
                 if not p.endswith('__init__.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_valid_and_builds_a_model_and_optimizer(name):
  config = importlib.import_module(f'experiments.{name}').get_config()
  validation.validate(config)
  setup = builder.build(config, num_classes=10)
  # One step counter per run: a sweep's points x seeds, or the replicas.
  assert int(setup.state.step.size) == sweeps.num_runs(config) and setup.model is not None


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_svhn_trains_and_evaluates_on_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds_source, '_download_server_reachable', lambda: True)
  config = tiny_config(importlib.import_module('experiments.svhn').get_config(),
                       num_train_steps=6, checkpoint_every_steps=6, **{'eval.batch_size': 16})
  with tfds.testing.mock_data(num_examples=40):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  assert state.params['local3']['kernel'].shape[0] == 7 * 7 * 8  # 28x28 crops
  assert os.path.exists(tmp_path / 'eval' / 'metrics.jsonl')


# Every recipe on an image folder it was not written for: grey or colour, images smaller than,
# equal to or larger than its input, or of mixed sizes in both orientations (JPEG photos'
# sizes). Each trains two steps and is scored, or ends in one UserError naming the config
# field to set -- never another exception. Tiny widths: the recipe's other fields are its own.
SIZE_CASES = ('smaller', 'equal', 'larger', 'mixed')
FAST_CASES = {  # the rest of the matrix is in the slow tier
    ('image_folder', 1, 'smaller'), ('image_folder', 3, 'mixed'), ('cifar10', 1, 'mixed'),
    ('resnet18', 1, 'larger'), ('airbench94', 1, 'equal')}


def _tiny_widths(config):
  model = config.model
  if model.name == 'tutorial_cnn':
    model.conv_features, model.local3_features, model.local4_features = 8, 16, 8
  elif model.name == 'airbench94':
    model.widths = (8, 16, 16)
  elif model.name == 'wide_resnet':
    model.depth, model.width_factor, model.stem_width = 10, 1, 4
  else:
    model.width = 4


def _input_side(config):
  return config.crop_size or 32


def _write_folder(root, channels, size_case, side):
  rng = np.random.default_rng(channels * 10 + SIZE_CASES.index(size_case))
  sizes = {'smaller': [(side // 2, side // 2)], 'equal': [(side, side)],
           'larger': [(side + 9, side + 9)],
           'mixed': [(side + 5, side - 3), (side - 3, side + 5), (side + 8, side + 8)]}[size_case]
  mode = 'L' if channels == 1 else 'RGB'
  for label in range(3):
    folder = root / 'train' / f'class_{label}'
    folder.mkdir(parents=True)
    for i in range(12):
      height, width = sizes[i % len(sizes)]
      pixels = rng.integers(0, 256, (height, width, channels), np.uint8)
      Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(
          folder / f'{i:04d}.jpg', quality=85)


def _matrix():
  for name in CONFIGS:
    for channels in (1, 3):
      for size_case in SIZE_CASES:
        marks = () if (name, channels, size_case) in FAST_CASES else (pytest.mark.slow,)
        yield pytest.param(name, channels, size_case, marks=marks,
                           id=f'{name}-{"grey" if channels == 1 else "colour"}-{size_case}')


@pytest.mark.parametrize("name, channels, size_case", list(_matrix()))
def test_every_recipe_trains_on_any_folder_or_names_the_field_to_set(name, channels, size_case,
                                                                      tmp_path):
  config = importlib.import_module(f'experiments.{name}').get_config()
  _write_folder(tmp_path / 'data', channels, size_case, _input_side(config))
  _tiny_widths(config)
  config.dataset.update(source='image_folder', path=str(tmp_path / 'data'), cache_dir='',
                        train_split='train[:75%]', eval_split='train[75%:]')
  config.num_devices = 2 if config.num_devices == 2 else 1  # the multi-GPU exercise keeps its 2
  config.update(num_train_steps=2, num_train_epochs=0.0, per_device_batch_size=8, batch_size=0,
                eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1,
                histogram_every_steps=2, model_init_examples=16, compilation_cache_dir='')
  config.eval.batch_size = 16
  try:
    validation.validate(config)
    state = train.train_and_evaluate(config, str(tmp_path / 'run'))
  except UserError as e:
    # Only the images' size, or a grey folder under a recipe's per-channel colour statistics,
    # can stop a recipe; the sentence names the field that fits the data.
    if re.search(r'have 1 channel\(s\) but config\.channel_mean', str(e)):
      assert channels == 1 and 'config.dataset.channels=3' in str(e), str(e)
    else:
      assert size_case in ('smaller', 'mixed'), str(e)
      assert re.search(r'config\.(dataset\.image_size|crop_size)\b', str(e)), str(e)
    return
  assert int(np.asarray(state.step).reshape(-1)[0]) == 2
  with open(tmp_path / 'run' / 'eval' / 'metrics.jsonl') as f:
    assert '"precision"' in f.read()


@pytest.mark.slow
def test_the_folder_recipe_learns_a_small_grey_folder_of_tiny_images(tmp_path):
  # Shapes on clutter, grey, 10-14 px (under airbench94's 25): resized to 32 when loaded. The
  # recipe's own optimizer, schedule, crops and whitening; only the widths are small.
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
  import make_image_folder  # pylint: disable=g-import-not-at-top
  make_image_folder.write_folder(str(tmp_path / 'data'), per_class=40, size=0, min_size=10,
                                 max_size=14, grey=True)
  config = importlib.import_module('experiments.image_folder').get_config()
  config.model.widths = (16, 32, 32)
  config.dataset.update(path=str(tmp_path / 'data'), cache_dir='', image_size=32)
  config.update(num_devices=1, per_device_batch_size=32, batch_size=0,  # the recipe's 30 epochs
                model_init_examples=64, compilation_cache_dir='', log_every_steps=1)
  losses = []
  train.train_and_evaluate(config, str(tmp_path / 'run'), evaluate_in_process=False,
                           on_log=lambda step, metrics: losses.append(metrics['loss']))
  # 180 images are fewer than the recipe's 10 batches of 32 per epoch (min_steps_per_epoch):
  # batches of 18, 10 per epoch, 30 epochs.
  assert len(losses) == 300 and np.all(np.isfinite(losses))
  # Chance is ln 5 = 1.61: it learns (label smoothing 0.2 keeps the loss far above 0).
  assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.15, losses


def test_the_research_evaluations_generated_far_set_has_a_seed_of_its_own():
  """On a synthetic run the run's own seed would draw the training data's class templates (an
  AUROC of 0.5 by construction); elsewhere it keeps the seed its figures were measured with."""
  from experiments import research_evaluation  # pylint: disable=g-import-not-at-top
  synthetic = research_evaluation.get_config('smoke')
  assert synthetic.eval.sets.noise.seed == synthetic.dataset.seed + 1
  assert research_evaluation.get_config('cifar10_jpeg').eval.sets.noise.seed == 0
  validation.validate(synthetic)
