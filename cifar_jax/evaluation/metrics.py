"""Metrics of a state on a whole split, registered by name (`config.eval.metrics`).

Precision@1 and the mean cross-entropy (`loss`) are always scored.
`config.eval.metrics` names more: a metric of `METRICS` (`top5_precision`,
`nll`, `brier`, `ece`), or code outside the package as 'package.module:Name'.
Every metric is computed from the logits the evaluator already has -- no second
pass over the data -- in one of two forms:

* per example (the default): `metric(logits, labels) -> values [B]` of one
  device's batch -- float32 logits [B, classes] (after test-time
  augmentation) and int32 labels [B] -- written with jax.numpy (it runs inside
  the jitted evaluation step); its score is the mean over every example;
* of the split (`declare(of_split=True)`): `metric(probabilities, labels) ->
  float` on the host, with the softmax probabilities [N, classes] (float32
  numpy) and labels [N] of the whole split -- for what is not a mean over
  examples, such as the expected calibration error.

Scores are kept for the EMA and the raw parameters and every replica, and land
in WORKDIR/eval/metrics.jsonl and TensorBoard under the metric's name (`NAME`,
`NAME_raw`, `NAME/replica_R`). `declare(lower_is_better=True)` tells `compare`
the direction. A metric's own fields, if it declares a `FIELDS` dict, live in
`config.eval`, which reaches it as the keyword `settings` (the values of the fields declared;
a metric written for an earlier cifar_jax, whose keyword was `fields`, is passed it under that
name with a warning line).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import inspect

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cifar_jax.core import fields as spec
from cifar_jax.core.errors import UserError
from cifar_jax.core.registry import Registry
from cifar_jax.evaluation import calibration

METRICS = Registry('metric', 'config.eval.metrics', 'docs/development.md, "Adding a metric"')
ALWAYS = ('precision', 'loss')  # scored whatever config.eval.metrics says
Metric = Callable[..., jax.Array]
# The directions of the recorded figures that are not metrics of METRICS (those declare
# theirs): precision@1, the loss, and the out-of-distribution sets' AUROC and FPR95.
LOWER_IS_BETTER = {'loss', 'fpr95'}
HIGHER_IS_BETTER = {'precision', 'auroc'}


def declare(*, lower_is_better: bool = False, of_split: bool = False):
  """Decorator: a metric's direction (for `compare`) and form (per example, or of the split)."""
  def mark(metric):
    metric.lower_is_better = lower_is_better
    metric.of_split = of_split
    return metric
  return mark


@METRICS.register('top5_precision')
@declare()
def top5_precision(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether the label is among the 5 largest logits (all of them with 5 classes or fewer)."""
  k = min(5, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


@METRICS.register('nll')
@declare(lower_is_better=True)
def negative_log_likelihood(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log p(label), in float32: the cross-entropy of the (test-time augmented) logits."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@METRICS.register('brier')
@declare(lower_is_better=True)
def brier_score(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """sum over classes of (p_c - [c = label])^2: 0 (certain and right) to 2 (certain and wrong)."""
  probabilities = jax.nn.softmax(logits, axis=-1)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probabilities.dtype)
  return jnp.sum((probabilities - one_hot) ** 2, axis=-1)


ECE_FIELDS = {'calibration_bins': spec.Field(15, spec.integer(2), 'equal-width bins of the '
                                             'confidence (ECE, reliability diagram)', before=15)}


@METRICS.register('ece', fields=ECE_FIELDS)
@declare(lower_is_better=True, of_split=True)
def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, settings
                               ) -> float:
  """The expected calibration error of the top-label confidence (eval.calibration_bins bins)."""
  return calibration.expected_calibration_error(probabilities, labels, settings.calibration_bins)


def _check_names(c: spec.Checker, path: str) -> None:
  names = c.sequence(path, str)
  for name in names:
    if result_name(name) in ALWAYS:
      raise UserError(f'config.eval.metrics names {name!r}, which is always scored; leave it '
                      'out.')
    spec.check_section(c, 'eval', METRICS.get(name).fields)
    check_contract(name, c.config.eval)
  results = [result_name(name) for name in names]
  if len(set(results)) != len(results):
    raise UserError(f'config.eval.metrics is {names}; name each metric once (the part after '
                    "':' names its records).")


FIELDS = {'eval.metrics': spec.Field((), _check_names, 'metrics scored beside precision@1',
                                     before=[]),  # (as JSON keeps it)
          # Always there (not only with 'ece'): the evaluation sets' corrupted ECE uses it too.
          **{f'eval.{name}': field for name, field in ECE_FIELDS.items()}}


spec.declare(__name__, FIELDS)


def named(names, eval_config=None) -> tuple[tuple[str, Metric], ...]:
  """(name, function) of each of `names` (config.eval.metrics), in order; a metric that
  declares fields gets `config.eval` (`eval_config`) as the keyword `settings`."""
  bound = []
  for name in names:
    entry = METRICS.get(name)
    function = entry.target
    if entry.fields:
      keyword = _settings_keyword(name, function)
      function = functools.wraps(function)(functools.partial(function,
                                                             **{keyword: eval_config}))
    bound.append((name, function))
  return tuple(bound)


def _settings_keyword(name: str, function: Callable[..., object]) -> str:
  """'settings', or 'fields' for a metric written for an earlier cifar_jax (a warning line)."""
  try:
    parameters = inspect.signature(function).parameters
  except (TypeError, ValueError):  # no signature to read (a builtin): the documented keyword
    return 'settings'
  if 'settings' not in parameters and 'fields' in parameters:
    if name not in _WARNED_OLD_KEYWORD:
      _WARNED_OLD_KEYWORD.add(name)
      logging.warning('Metric %r takes its settings as the keyword `fields`, the name an '
                      'earlier cifar_jax used; rename it `settings` (docs/development.md, '
                      '"Adding a metric").', name)
    return 'fields'
  return 'settings'


_WARNED_OLD_KEYWORD: set[str] = set()


# The tiny input a metric's contract is checked on: 3 examples of 4 classes.
_CONTRACT_EXAMPLES, _CONTRACT_CLASSES = 3, 4


def check_contract(name: str, eval_config=None) -> None:
  """One sentence unless the metric `name` takes (logits, labels) and returns one value per
  example (`[B]`), or, of the split, (probabilities, labels) and one number; checked on a tiny
  input when the config is checked (shapes only for a per-example metric: nothing computed)."""
  ((_, metric),) = named((name,), eval_config)
  form = ('metric(probabilities [N, classes], labels [N]) -> one number' if is_of_split(metric)
          else 'metric(logits [B, classes], labels [B]) -> values [B]')
  where = (f'Metric {name!r} (config.eval.metrics) breaks the metric contract, {form} '
           '(docs/development.md, "Adding a metric")')
  logits = np.linspace(-1, 1, _CONTRACT_EXAMPLES * _CONTRACT_CLASSES, dtype=np.float32).reshape(
      _CONTRACT_EXAMPLES, _CONTRACT_CLASSES)
  labels = np.arange(_CONTRACT_EXAMPLES, dtype=np.int32) % _CONTRACT_CLASSES
  try:
    if is_of_split(metric):
      result = np.asarray(metric(np.asarray(jax.nn.softmax(logits)), labels))
    else:
      result = jax.eval_shape(metric, jax.ShapeDtypeStruct(logits.shape, jnp.float32),
                              jax.ShapeDtypeStruct(labels.shape, jnp.int32))
  except Exception as error:  # pylint: disable=broad-except (any fault of outside code)
    raise UserError(f'{where}: on {_CONTRACT_EXAMPLES} examples of {_CONTRACT_CLASSES} classes '
                    f'it raised {type(error).__name__}: {error}.') from None
  wanted = () if is_of_split(metric) else (_CONTRACT_EXAMPLES,)
  if tuple(getattr(result, 'shape', ())) != wanted:
    raise UserError(f'{where}: on {_CONTRACT_EXAMPLES} examples it returned shape '
                    f'{tuple(result.shape)}, not {wanted}.')


def is_of_split(metric: Metric) -> bool:
  return bool(getattr(metric, 'of_split', False))


def result_name(name: str) -> str:
  """The key a metric's score has in the records: its name, or the part after ':' from outside."""
  return name.rpartition(':')[2]


def lower_is_better(recorded: str) -> bool | None:
  """Whether a recorded figure ('nll', 'ece_raw', 'cifar10_1/brier') is better low; None for
  one whose direction is not known (a metric from outside that declares none)."""
  # 'SET/FIGURE[_raw]/PART': the figure is the first part that names one.
  for part in recorded.split('/'):
    name = part.removesuffix('_raw')
    if name in LOWER_IS_BETTER:
      return True
    if name in HIGHER_IS_BETTER:
      return False
    if name in METRICS.names():
      return METRICS.get(name).target.lower_is_better
  return None


def of_split_scores(probabilities: np.ndarray, labels: np.ndarray,
                    metrics: tuple[tuple[str, Metric], ...]) -> dict[str, float]:
  """The of-the-split metrics of `metrics` on a whole split's probabilities."""
  return {result_name(name): float(metric(probabilities, labels))
          for name, metric in metrics if is_of_split(metric)}
