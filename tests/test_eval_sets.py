"""Named evaluation sets (config.eval.sets): plain, corrupted, out of distribution; their checks.

Each set's figures are checked against the same figures computed another way:
a corruption's precision against that corrupted split scored on its own, the
out-of-distribution AUROC against the rank formula on separately computed
confidences, tfds' CIFAR-10-C and CIFAR-10.1 through tfds' mock data.
"""

import json

import numpy as np
import pytest

from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.data import corruptions, datasets, tfds_source
from cifar_jax.evaluation import eval_sets, ood
from tests.conftest import tiny_config


@pytest.mark.parametrize('sets, words', [
    ({'2bad': {}}, r"name a set with letters"),
    ({'a': {'colour': 1}}, r"config.eval.sets\['a'\] has \['colour'\], not fields"),
    ({'a': {'corruptions': 'fog', 'ood': True}}, r'either corrupted or out of distribution'),
    ({'a': {'corruptions': 'rain'}}, r"unknown corruption\(s\) \['rain'\]"),
    ({'a': {'corruptions': 'fog', 'severities': (0, 6)}}, r'each must be 1 to 5'),
    ({'a': {'source': 'nope'}}, r"unknown data source 'nope'"),
    ({'a': {'split': 'test[oops'}}, r"config.eval.sets\['a'\]: cannot parse split"),
    ({'a': {'ood': 'yes'}}, r"config.eval.sets\['a'\].ood is 'yes'; it must be True or False"),
])
def test_a_wrong_set_is_one_sentence_naming_it(sets, words):
  config = tiny_config()
  config.eval.sets = sets
  with pytest.raises(UserError, match=words):
    validation.validate(config)


def test_corruption_names():
  assert corruptions.names('benchmark') == corruptions.BENCHMARK and len(corruptions.ALL) == 19
  assert corruptions.names('fog, snow') == ('fog', 'snow')


def _train(tmp_path, **overrides):
  from cifar_jax.run import train  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_train_steps=4, checkpoint_every_steps=4, **overrides)
  train.train_and_evaluate(config, str(tmp_path), evaluate_in_process=False)
  config.eval.run_once = True
  return config


def test_every_kind_of_set_is_scored_and_recorded_under_its_name(tmp_path, capsys):
  pytest.importorskip('imagecorruptions')
  from cifar_jax.run import evaluate  # pylint: disable=g-import-not-at-top
  config = _train(tmp_path)
  config.eval.metrics = ('nll',)
  config.eval.sets = {
      'again': {'split': 'train[:40]'},
      'corrupted': {'corruptions': 'gaussian_noise,contrast', 'severities': (1, 5),
                    'split': 'test[:30]'},
      'noise': {'seed': 7, 'split': 'test[:50]', 'ood': True},
  }
  evaluate.evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  with open(tmp_path / 'eval' / 'metrics.jsonl') as f:
    record = [json.loads(line) for line in f][-1]
  # Plain: as the run's own split, under its name.
  assert {'again/precision', 'again/precision_raw', 'again/nll', 'again/count'} <= set(record)
  assert record['again/count'] == 40
  # Corrupted: every corruption x severity, each as if scored on its own.
  assert record['corrupted/count'] == 30 * 4
  # The same figures through the notebook API's own path (experiment.predict).
  from cifar_jax import experiment  # pylint: disable=g-import-not-at-top
  checkpoint = experiment.load_checkpoint(str(tmp_path))
  dataset = eval_sets.set_config(config, 'corrupted').dataset
  per_group = []
  for corruption in ('gaussian_noise', 'contrast'):
    for severity in (1, 5):
      split = corruptions.load(dataset, 'test[:30]', corruption, severity, 'generated')
      probabilities = experiment.predict(checkpoint, split.images)
      per_group.append((corruption, severity,
                        np.mean(probabilities.argmax(-1) == split.labels)))
  assert record['corrupted/precision'] == pytest.approx(np.mean([p for *_, p in per_group]))
  assert record['corrupted/precision/contrast'] == pytest.approx(
      np.mean([p for c, _, p in per_group if c == 'contrast']))
  assert record['corrupted/precision/severity_5'] == pytest.approx(
      np.mean([p for _, s, p in per_group if s == 5]))
  # Out of distribution: AUROC of the maximum softmax probability, by the rank formula.
  inside = experiment.predict(checkpoint, datasets.load_eval_split(config.dataset).images)
  outside = experiment.predict(checkpoint, datasets.load_eval_split(
      eval_sets.set_config(config, 'noise').dataset).images)
  a, b = (ood.maximum_softmax_probability(p) for p in (inside, outside))
  pairs = (a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])
  assert record['noise/auroc'] == pytest.approx(pairs.mean(), abs=1e-6)
  for name in ('again', 'corrupted', 'noise'):
    assert record[f'{name}/eval_seconds'] > 0
  assert 'corrupted: step 4, mean precision @ 1 over 2 corruptions x 2 severities' in out
  assert 'noise: step 4, out of distribution: AUROC' in out


def test_a_set_added_later_scores_the_step_again(tmp_path):
  from cifar_jax.run import evaluate  # pylint: disable=g-import-not-at-top
  config = _train(tmp_path)
  evaluate.evaluate(config, str(tmp_path))
  config.eval.sets = {'again': {'split': 'train[:20]'}}
  assert 4 in evaluate.evaluate(config, str(tmp_path))  # not "already scored"
  assert 4 not in evaluate.evaluate(config, str(tmp_path))  # now it is


def test_corrupted_copies_are_made_once_the_same_everywhere_and_cached(tmp_path):
  pytest.importorskip('imagecorruptions')
  config = tiny_config()
  config.dataset.cache_dir = str(tmp_path / 'cache')
  config.dataset.source = 'image_folder'
  from benchmarks import make_image_folder  # pylint: disable=g-import-not-at-top
  config.dataset.path = str(tmp_path / 'folder')
  make_image_folder.write_folder(config.dataset.path, per_class=2, size=40)
  first = corruptions.load(config.dataset, 'train', 'glass_blur', 2, 'generated')
  again = corruptions.load(config.dataset, 'train', 'glass_blur', 2, 'generated')
  np.testing.assert_array_equal(first.images, again.images)  # per-image seeds
  assert isinstance(again.images, np.memmap)  # read back from the cache
  clean = datasets.load_split(config.dataset, 'train')
  assert first.images.shape == clean.images.shape and not np.array_equal(first.images,
                                                                        clean.images)


@pytest.mark.parametrize('shape', [(32, 32, 1), (33, 45, 3), (45, 33, 3)])
def test_generated_corruptions_keep_odd_sizes_both_orientations_and_grey(shape):
  pytest.importorskip('imagecorruptions')
  rng = np.random.default_rng(0)
  split = datasets.Split(rng.integers(0, 256, (2, *shape), dtype=np.uint8),
                         np.array([0, 1], np.int32), ('a', 'b'))
  for corruption in corruptions.ALL:
    out = corruptions.generate(split, corruption, 3, lambda n, s: np.zeros((n, *s), np.uint8))
    assert out.images.shape == split.images.shape, corruption


def test_images_too_small_to_corrupt_are_refused_in_one_sentence():
  pytest.importorskip('imagecorruptions')
  split = datasets.Split(np.zeros((1, 24, 40, 3), np.uint8), np.zeros(1, np.int32), ('a',))
  with pytest.raises(UserError, match=r'at least 32x32 pixels; these are 24x40'):
    corruptions.generate(split, 'fog', 1, lambda n, s: np.zeros((n, *s), np.uint8))


@pytest.mark.slow  # the slow tier: a second training run (fast tier budget)
def test_cifar10_c_and_cifar10_1_through_tfds_mock_data(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(tfds_source, '_download_server_reachable', lambda: True)
  from cifar_jax.run import evaluate  # pylint: disable=g-import-not-at-top
  overrides = {'dataset.source': 'tfds', 'dataset.name': 'cifar10'}
  with tfds.testing.mock_data(num_examples=24):
    config = _train(tmp_path, **overrides)
    config.eval.sets = {
        'cifar10_1': {'name': 'cifar10_1', 'split': 'test'},
        'c': {'corruptions': 'fog,elastic_transform,glass_blur', 'severities': (2,),
              'corruption_source': 'tfds'},
    }
    evaluate.evaluate(config, str(tmp_path))
  with open(tmp_path / 'eval' / 'metrics.jsonl') as f:
    record = [json.loads(line) for line in f][-1]
  assert record['cifar10_1/count'] == 24
  assert record['c/count'] == 3 * 24  # tfds' frosted_glass_blur and elastic, by our names
  assert {'c/precision/glass_blur', 'c/precision/elastic_transform'} <= set(record)


def test_cifar10_c_from_tfds_is_only_for_the_cifar10_test_split():
  config = tiny_config()
  with pytest.raises(UserError, match=r"corruption_source='tfds' reads CIFAR-10-C"):
    corruptions.load(config.dataset, 'test', 'fog', 1, 'tfds')
