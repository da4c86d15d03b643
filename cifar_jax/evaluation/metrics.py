"""Metrics of a state on a whole split, registered by name (`config.eval.metrics`).

Precision@1 and the mean cross-entropy are always scored. `config.eval.metrics`
names more: a metric of `METRICS`, or code outside the package as
'package.module:Name'. A metric is a function

  metric(logits, labels) -> per-example values

of one device's batch -- float32 logits [B, classes] (after test-time
augmentation) and int32 labels [B] -- returning float32 [B], written with
jax.numpy (it runs inside the jitted evaluation step, on the logits the evaluator
already has: no second pass over the data). Its score is the mean over every
example of the split, for the EMA and the raw parameters and every replica, and
lands in WORKDIR/eval/metrics.jsonl and TensorBoard under its name (`NAME`,
`NAME_raw`, `NAME/replica_R`). A metric's own fields, if it declares a `FIELDS`
dict, live in `config.eval`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cifar_jax.core import fields as spec
from cifar_jax.core.errors import UserError
from cifar_jax.core.registry import Registry

METRICS = Registry('metric', 'config.eval.metrics', 'docs/development.md, "Adding a metric"')
ALWAYS = ('precision', 'loss')  # scored whatever config.eval.metrics says
Metric = Callable[[jax.Array, jax.Array], jax.Array]


@METRICS.register('top5_precision')
def top5_precision(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether the label is among the 5 largest logits (all of them with 5 classes or fewer)."""
  k = min(5, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def _check_names(c: spec.Checker, path: str) -> None:
  names = c.sequence(path, str)
  for name in names:
    if result_name(name) in ALWAYS:
      raise UserError(f'config.eval.metrics names {name!r}, which is always scored; leave it '
                      'out.')
    spec.check_section(c, 'eval', METRICS.get(name).fields)
  results = [result_name(name) for name in names]
  if len(set(results)) != len(results):
    raise UserError(f'config.eval.metrics is {names}; name each metric once (the part after '
                    "':' names its records).")


FIELDS = {'eval.metrics': spec.Field((), _check_names, 'metrics scored beside precision@1',
                                     before=[])}  # (as JSON keeps it)


def check_config(c: spec.Checker) -> None:
  spec.check_section(c, '', FIELDS)


def named(names) -> tuple[tuple[str, Metric], ...]:
  """(name, function) of each of `names` (config.eval.metrics), in order."""
  return tuple((name, METRICS.get(name).target) for name in names)


def result_name(name: str) -> str:
  """The key a metric's score has in the records: its name, or the part after ':' from outside."""
  return name.rpartition(':')[2]
