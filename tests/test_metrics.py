"""Metrics beside precision@1, checked against hand computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.evaluation import metrics
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
              r"\['top5_precision'\]"),
])
def test_a_wrong_metric_is_one_sentence(names, words):
  with pytest.raises(UserError, match=words):
    validation.validate(tiny_config(**{'eval.metrics': names}))


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
  assert all(s.precision <= s.metrics['top5_precision'] for s in result.ema + result.raw)
