"""Data that cannot mean what the run assumes is one sentence, where the data are loaded.

Mismatched class folders between training and evaluation (in-process, the
evaluator process, a resume), images smaller than the crop (training,
evaluation, `experiment.predict`), a channel count the model was not trained
on; images of another size than the training ones only warn.
"""

import logging
import os

import numpy as np
from PIL import Image
import pytest

from cifar_jax import experiment
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets, splits
from cifar_jax.run import evaluate, train
from tests.conftest import tiny_config


def _folder(root, split, classes, size=32, per_class=12, channels=3):
  for label, name in enumerate(classes):
    os.makedirs(os.path.join(root, split, name), exist_ok=True)
    rng = np.random.default_rng(label)
    for i in range(per_class):
      image = rng.integers(0, 255, (size, size, channels), np.uint8)
      Image.fromarray(image.squeeze(-1) if channels == 1 else image).save(
          os.path.join(root, split, name, f'{i:04d}.png'))
  return str(root)


def _config(path, **overrides):
  config = tiny_config(**{'dataset.source': 'image_folder', 'dataset.path': path,
                          'dataset.train_split': 'train', 'dataset.eval_split': 'test',
                          'num_train_steps': 4, 'checkpoint_every_steps': 4,
                          'eval_every_steps': 4, 'per_device_batch_size': 4, **overrides})
  return config


def test_check_same_classes_names_the_differences():
  trained = {'class_names': ['c0', 'c1', 'c2']}
  split = datasets.Split(np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1, np.int32),
                         ('c0', 'c1', 'zz'))
  with pytest.raises(UserError, match=r"test has classes \['c0', 'c1', 'zz'\] but the model was "
                                      r"trained on \['c0', 'c1', 'c2'\] \(only in training: "
                                      r"\['c2'\]; only here: \['zz'\]\)"):
    splits.check_same_classes(trained, split, 'test')
  reordered = datasets.Split(split.images, split.labels, ('c1', 'c0', 'c2'))
  with pytest.raises(UserError, match='the same names in another order'):
    splits.check_same_classes(trained, reordered, 'test')
  splits.check_same_classes(trained, datasets.Split(split.images, split.labels,
                                                      ('c0', 'c1', 'c2')), 'test')


def test_train_and_eval_refuses_an_eval_split_with_other_classes(tmp_path):
  root = _folder(tmp_path / 'data', 'train', ('c0', 'c1', 'c2'))
  _folder(root, 'test', ('c0', 'c1', 'zz'))
  with pytest.raises(UserError, match=r"Split 'test' of .*data has classes \['c0', 'c1', 'zz'\] "
                                      r"but the model was trained on \['c0', 'c1', 'c2'\]"):
    train.train_and_evaluate(_config(root), str(tmp_path / 'run'), evaluate_in_process=True)
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints' / '4')  # refused before training


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_the_evaluator_refuses_another_folders_classes_before_restoring(tmp_path):
  root = _folder(tmp_path / 'data', 'train', ('c0', 'c1', 'c2'))
  _folder(root, 'test', ('c0', 'c1', 'c2'))
  other = _folder(tmp_path / 'other', 'test', ('c0', 'c1', 'c2', 'c3'))  # another head size
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_config(root), workdir, evaluate_in_process=False)
  with pytest.raises(UserError, match=r"Split 'test' of .*other has classes \['c0', 'c1', 'c2', "
                                      r"'c3'\] but the model was trained on"):
    evaluate.evaluate(_config(root, **{'dataset.eval_path': other, 'eval.run_once': True}),
                      workdir)
  # The folder it trained with scores.
  results = evaluate.evaluate(_config(root, **{'eval.run_once': True}), workdir)
  assert list(results) == [4]


def test_resuming_on_other_classes_is_refused(tmp_path):
  root = _folder(tmp_path / 'data', 'train', ('c0', 'c1', 'c2'))
  renamed = _folder(tmp_path / 'renamed', 'train', ('c0', 'c1', 'c9'))
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_config(root), workdir, evaluate_in_process=False)
  with pytest.raises(UserError, match=r"was trained on classes \['c0', 'c1', 'c2'\] but the "
                                      r"training split now has \['c0', 'c1', 'c9'\]"):
    train.train_and_evaluate(_config(renamed, num_train_steps=8), workdir,
                             evaluate_in_process=False)


def test_a_crop_larger_than_the_training_images_is_refused_at_load_time(tmp_path):
  root = _folder(tmp_path / 'data', 'train', ('c0', 'c1'), size=16)
  with pytest.raises(UserError, match=r'config.crop_size=24 is larger than the training images '
                                      r"of split 'train' of .*data \(16x16\); set "
                                      r'config.crop_size to at most 16'):
    train.train_and_evaluate(_config(root), str(tmp_path / 'run'), evaluate_in_process=False)
  # Translation padding makes room: 16 + 2 * 4 = 24.
  config = _config(root, **{'augment.translate': 4, 'crop_size': 26})
  with pytest.raises(UserError, match=r'\(16x16 padded by 4 \(config.augment.translate\)\); '
                                      'set config.crop_size to at most 24'):
    train.train_and_evaluate(config, str(tmp_path / 'run2'), evaluate_in_process=False)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_scoring_images_smaller_than_the_crop_is_refused(tmp_path):
  root = _folder(tmp_path / 'data', 'train', ('c0', 'c1'))
  small = _folder(tmp_path / 'small', 'test', ('c0', 'c1'), size=16)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_config(root), workdir, evaluate_in_process=False)
  with pytest.raises(UserError, match=r"The images of split 'test' of .*small are 16x16, smaller "
                                      'than the central crop of 24'):
    evaluate.evaluate(_config(root, **{'dataset.eval_path': small, 'eval.run_once': True}),
                      workdir)
  checkpoint = experiment.load_checkpoint(workdir)
  assert checkpoint.image_shape == [32, 32, 3]
  with pytest.raises(UserError, match='The images given to predict are 16x16, smaller than the '
                                      'central crop of 24'):
    experiment.predict(checkpoint, np.zeros((2, 16, 16, 3), np.uint8))
  with pytest.raises(UserError, match=r'have 1 channel\(s\) but the model was trained on images '
                                      r'of 3'):
    experiment.predict(checkpoint, np.zeros((2, 32, 32, 1), np.uint8))


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_other_sized_eval_images_only_warn(tmp_path, caplog):
  root = _folder(tmp_path / 'data', 'train', ('c0', 'c1'))
  larger = _folder(tmp_path / 'larger', 'test', ('c0', 'c1'), size=40)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_config(root), workdir, evaluate_in_process=False)
  with caplog.at_level(logging.WARNING):
    results = evaluate.evaluate(
        _config(root, **{'dataset.eval_path': larger, 'eval.run_once': True}), workdir)
  assert list(results) == [4]
  assert 'are 40x40 but the model was trained on 32x32 images' in caplog.text
  probabilities = experiment.predict(experiment.load_checkpoint(workdir),
                                     np.zeros((3, 40, 40, 3), np.uint8))
  assert probabilities.shape == (3, 2)
