"""The research evaluator on any recipe: calibration, corruptions, out-of-distribution detection.

Scores a run of RECIPE (a file of experiments/, default cifar10_jpeg) with
top-5 precision, NLL, ECE and the Brier score beside precision@1, on its own
evaluation split and on every corruption of the CIFAR-10-C protocol at every
severity (generated from that split where tfds' CIFAR-10-C is not there), and
the maximum-softmax-probability detection of out-of-distribution images:

  python -m cifar_jax.main --mode=eval --workdir=/tmp/cifar10_jpeg \
      --config=experiments/research_evaluation.py:cifar10_jpeg \
      --config.dataset.path=../shared/data/cifar10-jpeg-train.tar.gz \
      --config.eval.run_once=true

For tfds CIFAR-10 recipes it adds CIFAR-10.1 (tfds `cifar10_1`, the
distribution-shift test set) and SVHN as the out-of-distribution set; for
others, generated images (`source='synthetic'`) stand in as a far
out-of-distribution set. docs/evaluation.md has the figures and the cost.
"""

import importlib

import ml_collections


def get_config(recipe: str = 'cifar10_jpeg') -> ml_collections.ConfigDict:
  config = importlib.import_module(f'experiments.{recipe}').get_config()
  config.eval.metrics = ('top5_precision', 'nll', 'ece', 'brier')
  sets = {'corrupted': {'corruptions': 'benchmark', 'split': '', 'severities': (1, 2, 3, 4, 5),
                        'corruption_source': 'auto'}}
  if config.dataset.source == 'tfds' and config.dataset.name == 'cifar10':
    sets['cifar10_1'] = {'source': 'tfds', 'name': 'cifar10_1', 'split': 'test'}
    sets['svhn'] = {'source': 'tfds', 'name': 'svhn_cropped', 'split': 'test', 'ood': True}
  else:
    # Its own seed (--config.eval.sets.noise.seed=N): on a synthetic run, the run's seed would
    # draw the training data's own class templates, in distribution by construction.
    sets['noise'] = {'source': 'synthetic', 'split': 'test', 'synthetic_train_size': 1,
                     'synthetic_test_size': 5000, 'synthetic_image_size': 32, 'ood': True,
                     'seed': config.dataset.seed + (config.dataset.source == 'synthetic')}
  config.eval.sets = sets
  return config
