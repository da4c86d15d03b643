"""Exact precision@1: every example counted once, whatever the batch size."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import evaluate, parallel, train
from cifar_jax.datasets import Split
from cifar_jax.errors import UserError
from tests.conftest import tiny_config


class BrightPixelModel:
  """Predicts class k when flattened crop value k is the largest of the first 10."""

  @staticmethod
  def apply(variables, images):
    del variables
    return images.reshape(images.shape[0], -1)[:, :10]


def _split(num_examples, num_correct):
  rng = np.random.default_rng(0)
  predicted = rng.integers(0, 10, num_examples)
  images = np.zeros((num_examples, 32, 32, 3), np.uint8)
  flat_crop = images[:, 4:28, 4:28, :].reshape(num_examples, -1)
  flat_crop[np.arange(num_examples), predicted] = 255
  images[:, 4:28, 4:28, :] = flat_crop.reshape(num_examples, 24, 24, 3)
  labels = np.where(np.arange(num_examples) < num_correct, predicted, (predicted + 1) % 10)
  return Split(images, labels.astype(np.int32), tuple(str(i) for i in range(10)))


@pytest.mark.parametrize('num_devices,batch_size', [(1, 64), (4, 64), (4, 1000), (3, 7)])
def test_precision_counts_every_example_exactly_once(num_devices, batch_size):
  split = _split(250, num_correct=137)
  config = tiny_config()
  config.eval.batch_size = batch_size
  evaluator = evaluate.Evaluator(config, split, BrightPixelModel(),
                                 parallel.select_devices(num_devices))
  result = evaluator.score({'unused': jnp.zeros(())})
  assert result['count'] == 250
  assert result['precision'] == 137 / 250


def test_padded_batches_cover_each_index_once():
  indices, mask = evaluate.padded_batches(10, 4, 3)  # per device 2, global 6
  assert indices.shape == (2, 3, 2)
  assert sorted(indices[mask].tolist()) == list(range(10))
  assert mask.sum() == 10


def test_result_line_format():
  result = {'precision': 0.8601, 'precision_raw': 0.842}
  assert evaluate.format_result(2000, result) == (
      'step 2000, precision @ 1 = 0.860 (raw parameters: 0.842)')
  assert evaluate.format_result(2000, result, 'raw') == (
      'step 2000, precision @ 1 = 0.842 (EMA parameters: 0.860)')


def test_evaluate_scores_the_latest_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(), workdir)
  with open(os.path.join(workdir, 'eval', 'metrics.jsonl')) as f:
    at_end = json.loads(f.readline())
  result = evaluate.evaluate(tiny_config(), workdir)
  assert result['count'] == 200
  assert result['precision'] == at_end['precision']
  assert result['precision_raw'] == at_end['precision_raw']


def test_evaluate_without_checkpoints_says_so(tmp_path):
  with pytest.raises(UserError, match='no checkpoints'):
    evaluate.evaluate(tiny_config(), str(tmp_path))
