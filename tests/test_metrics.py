"""Metrics beside precision@1, checked against hand computations (and scipy's)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.evaluation import calibration, metrics, ood
from tests.conftest import tiny_config


def test_top5_precision_is_whether_the_label_is_among_the_five_largest_logits():
  logits = jnp.asarray([[9, 8, 7, 6, 5, 4, 3], [9, 8, 7, 6, 5, 4, 3], [1, 2, 3, 4, 5, 6, 7]],
                       jnp.float32)
  labels = jnp.asarray([4, 5, 0])  # 5th largest: in; 6th: out; the smallest: out
  np.testing.assert_array_equal(metrics.top5_precision(logits, labels), [1.0, 0.0, 0.0])
  few = jnp.asarray([[0.1, 0.2, 0.3]], jnp.float32)  # 3 classes: every label is in the top 5
  np.testing.assert_array_equal(metrics.top5_precision(few, jnp.asarray([0])), [1.0])


@pytest.mark.parametrize('names, words', [
    (('precision',), r"names 'precision', which is always scored"),
    (('top5_precision', 'top5_precision'), r'name each metric once'),
    (('f1',), r"Unknown metric 'f1' \(config.eval.metrics\): the registered ones are "
              r"\['top5_precision', 'nll', 'brier', 'ece'\]"),
])
def test_a_wrong_metric_is_one_sentence(names, words):
  with pytest.raises(UserError, match=words):
    validation.validate(tiny_config(**{'eval.metrics': names}))


CONTRACT_BREAKERS = '''
import jax.numpy as jnp
def one_number(logits, labels):
  return jnp.mean(logits)
def one_argument(logits):
  return logits[:, 0]
def per_class(logits, labels):
  return logits
def raises(logits, labels):
  raise RuntimeError('no GPU here')
def fine(logits, labels):
  return logits[:, 0] * 0
'''


@pytest.mark.parametrize('name, words', [
    ('one_number', r'on 3 examples it returned shape \(\), not \(3,\)'),
    ('one_argument', r'it raised TypeError: one_argument\(\) takes 1 positional argument'),
    ('per_class', r'returned shape \(3, 4\), not \(3,\)'),
    ('raises', r'it raised RuntimeError: no GPU here'),
])
def test_an_outside_metric_that_breaks_its_contract_is_one_sentence_when_named(
    name, words, tmp_path, monkeypatch):
  (tmp_path / 'fork_metrics.py').write_text(CONTRACT_BREAKERS)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(__import__('sys').modules, 'fork_metrics', raising=False)
  validation.validate(tiny_config(**{'eval.metrics': ('fork_metrics:fine',)}))
  with pytest.raises(UserError, match=rf"Metric 'fork_metrics:{name}' \(config.eval.metrics\) "
                                      rf"breaks the metric contract.*{words}"):
    validation.validate(tiny_config(**{'eval.metrics': (f'fork_metrics:{name}',)}))


SETTINGS_READERS = '''
import jax.numpy as jnp
from cifar_jax.core import fields
def margin(logits, labels, *, settings):
  return jnp.maximum(logits[:, 0] - settings.margin, 0.0)
margin.FIELDS = {'margin': fields.Field(0.5, fields.number())}
def old_margin(logits, labels, *, fields):
  return jnp.maximum(logits[:, 0] - fields.margin, 0.0)
old_margin.FIELDS = margin.FIELDS
'''


def test_a_metric_reads_its_fields_from_its_settings_and_the_old_keyword_still_works(
    tmp_path, monkeypatch, caplog):
  """config.eval reaches a metric that declares fields as `settings`; one written with the
  earlier keyword `fields` gets it there, with one warning line."""
  (tmp_path / 'fork_settings.py').write_text(SETTINGS_READERS)
  monkeypatch.syspath_prepend(str(tmp_path))
  logits = np.array([[2.0, 0.0], [0.25, 1.0]], np.float32)
  for name in ('margin', 'old_margin'):
    config = tiny_config(**{'eval.metrics': (f'fork_settings:{name}',)})
    config.eval.margin = 1.0
    validation.validate(config)
    ((_, metric),) = metrics.named(config.eval.metrics, config.eval)
    np.testing.assert_allclose(metric(logits, np.array([0, 1])), [1.0, 0.0])
  assert caplog.text.count("Metric 'fork_settings:old_margin' takes its settings as the keyword "
                           '`fields`') == 1
  assert 'fork_settings:margin\'' not in caplog.text


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_scored_metric_is_recorded_per_replica_like_precision(tmp_path):
  from cifar_jax.run import evaluate, train  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, num_replicas=2,
                       **{'eval.metrics': ('top5_precision',)})
  train.train_and_evaluate(config, str(tmp_path), evaluate_in_process=False)
  config.eval.run_once = True
  result = evaluate.evaluate(config, str(tmp_path))[2]
  scalars = result.scalars()
  per_replica = [scalars['top5_precision/replica_0'], scalars['top5_precision/replica_1']]
  assert scalars['top5_precision'] == pytest.approx(np.mean(per_replica))
  # mean ± the 95% CI over the replicas, t distribution with 1 degree of freedom
  assert scalars['top5_precision_ci95'] == pytest.approx(
      12.706 * np.std(per_replica, ddof=1) / np.sqrt(2), rel=1e-3)
  assert all(s.precision <= s.metrics['top5_precision'] for s in result.ema + result.raw)


def _softmax(logits):
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_nll_and_brier_against_a_hand_computation_on_known_probabilities():
  probabilities = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]])
  logits = jnp.asarray(np.log(probabilities), jnp.float32)  # softmax(log p) = p
  labels = jnp.asarray([0, 1, 2])
  np.testing.assert_allclose(metrics.negative_log_likelihood(logits, labels),
                             [-np.log(0.7), -np.log(0.25), np.log(3)], rtol=1e-6)
  # Brier: sum_c (p_c - y_c)^2, by hand for each row.
  expected = [0.3**2 + 0.2**2 + 0.1**2, 0.25**2 + 0.75**2 + 0.5**2, 2 / 9 + 4 / 9]
  np.testing.assert_allclose(metrics.brier_score(logits, labels), expected, rtol=1e-6)


def test_ece_on_constructed_bins():
  # 15 bins of width 1/15. Four examples with top-label confidences 0.95 (bin 14), 0.95,
  # 0.55 (bin 8) and 0.55; the first bin's two are right and wrong (accuracy 0.5), the
  # second's both right (accuracy 1).
  def row(confidence, top):
    p = np.full(2, 1 - confidence)
    p[top] = confidence
    return p
  probabilities = np.stack([row(0.95, 0), row(0.95, 0), row(0.55, 1), row(0.55, 1)])
  labels = np.array([0, 1, 1, 1])
  # ECE = 2/4 * |0.5 - 0.95| + 2/4 * |1 - 0.55|
  expected = 0.5 * 0.45 + 0.5 * 0.45
  settings = tiny_config().eval
  assert metrics.expected_calibration_error(probabilities, labels, settings=settings) == (
      pytest.approx(expected))
  bins = calibration.bin_confidences(probabilities, labels, 15)
  assert bins.counts.tolist() == [0] * 8 + [2] + [0] * 5 + [2]
  np.testing.assert_allclose(bins.accuracy[[8, 14]], [1.0, 0.5])
  np.testing.assert_allclose(bins.confidence[[8, 14]], [0.55, 0.95])


def test_ece_bins_are_half_open_on_the_left_as_in_the_common_definition():
  # A confidence of exactly 2/3 falls in ((b - 1) / B, b / B] = (1/3, 2/3] with 3 bins.
  probabilities = np.array([[2 / 3, 1 / 3]])
  bins = calibration.bin_confidences(probabilities, np.array([0]), 3)
  assert bins.counts.tolist() == [0, 1, 0]


def test_ece_of_a_calibrated_classifier_is_near_zero_and_of_an_overconfident_one_is_not():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(20000, 10)) * 2
  probabilities = _softmax(logits)
  # Labels drawn from the predicted distribution: calibrated by construction.
  labels = np.array([rng.choice(10, p=p) for p in probabilities])
  assert calibration.expected_calibration_error(probabilities, labels, 15) < 0.015
  sharpened = _softmax(logits * 4)
  assert calibration.expected_calibration_error(sharpened, labels, 15) > 0.1


def test_reliability_diagram_is_an_image():
  probabilities = _softmax(np.random.default_rng(1).normal(size=(100, 10)))
  image = calibration.reliability_diagram(calibration.bin_confidences(
      probabilities, np.zeros(100, int), 15))
  assert image.ndim == 3 and image.shape[-1] == 3 and 0 <= image.min() <= image.max() <= 1


def test_auroc_against_the_rank_formula_and_scipy():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  inside, outside = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
  inside[:10] = outside[:10]  # ties count one half
  pairs = (inside[:, None] > outside[None, :]) + 0.5 * (inside[:, None] == outside[None, :])
  assert ood.auroc(inside, outside) == pytest.approx(pairs.mean())
  u = stats.mannwhitneyu(inside, outside).statistic
  assert ood.auroc(inside, outside) == pytest.approx(u / (300 * 200))
  assert ood.auroc(np.ones(3), np.zeros(3)) == 1.0 and ood.auroc(np.ones(3), np.ones(3)) == 0.5


def test_fpr_at_95_tpr_by_hand():
  inside = np.arange(1, 21) / 20.0  # 0.05 .. 1.0; keeping 95% (19 of 20) sets the threshold 0.1
  outside = np.array([0.05, 0.1, 0.5, 0.02])
  assert ood.fpr_at_tpr(inside, outside) == pytest.approx(0.5)  # 0.1 and 0.5 pass
  assert ood.fpr_at_tpr(inside, np.array([0.0])) == 0.0


@pytest.mark.parametrize('recorded, lower', [
    ('precision', False), ('loss_raw', True), ('nll', True), ('ece', True), ('brier', True),
    ('top5_precision', False), ('svhn/auroc', False), ('svhn/fpr95_raw', True),
    ('corrupted/precision/fog', False), ('some_outside_metric', None)])
def test_every_recorded_figure_has_its_direction(recorded, lower):
  assert metrics.lower_is_better(recorded) is lower


def test_the_calibration_metrics_are_scored_from_the_one_pass_and_shown(tmp_path, capsys):
  from cifar_jax.run import evaluate, train  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2,
                       **{'eval.metrics': ('nll', 'ece', 'brier')})
  train.train_and_evaluate(config, str(tmp_path), evaluate_in_process=False)
  config.eval.run_once = True
  result = evaluate.evaluate(config, str(tmp_path))[2]
  lead = result.lead
  assert lead.metrics['nll'] == pytest.approx(lead.loss, rel=1e-5)  # float32 either way
  assert lead.metrics['ece'] == pytest.approx(calibration.expected_calibration_error(
      lead.probabilities, result_labels(config), 15))
  out = capsys.readouterr().out
  assert f"NLL {lead.metrics['nll']:.3f}, ECE {lead.metrics['ece']:.3f}" in out
  with open(tmp_path / 'eval' / 'metrics.jsonl') as f:
    record = [json.loads(line) for line in f][-1]
  assert {'nll', 'nll_raw', 'ece', 'ece_raw', 'brier', 'brier_raw'} <= set(record)


def result_labels(config):
  return datasets.load_eval_split(config.dataset).labels


@pytest.mark.slow  # the slow tier: a second training run (fast tier budget)
def test_metrics_of_the_split_gather_every_device_and_replica_in_split_order(tmp_path):
  # 2 devices x 2 replicas, a split of 50 (not a multiple of the batch: padding masked out):
  # each replica's ECE from the evaluator's gathered probabilities equals the ECE of that
  # replica's own predictions through the notebook API.
  from cifar_jax import experiment  # pylint: disable=g-import-not-at-top
  from cifar_jax.run import evaluate, train  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2, num_replicas=2,
                       num_devices=2, **{'eval.metrics': ('ece',), 'eval.batch_size': 16,
                                         'dataset.synthetic_test_size': 50})
  train.train_and_evaluate(config, str(tmp_path), evaluate_in_process=False)
  config.eval.run_once = True
  result = evaluate.evaluate(config, str(tmp_path))[2]
  split = datasets.load_eval_split(config.dataset)
  images, labels = split.images, split.labels
  for r in range(2):
    probabilities = experiment.predict(experiment.load_checkpoint(str(tmp_path), replica=r),
                                       images, which='raw')
    np.testing.assert_allclose(result.raw[r].probabilities, probabilities, atol=1e-5)
    assert result.raw[r].metrics['ece'] == pytest.approx(
        calibration.expected_calibration_error(probabilities, labels, 15), abs=1e-5)
