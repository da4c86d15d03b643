"""Sweeps: many hyperparameter settings, each with several seeds, trained together in one program.

A sweep is written in a recipe, nested like the fields it varies:

  config.sweep.learning_rate = (0.05, 0.1, 0.2)
  config.sweep.ema = ml_collections.ConfigDict({'decay': (0.99, 0.999)})
  config.sweep_mode = 'cross'  # or 'zip'

``cross`` trains every combination (fields in sorted path order, the first
varying slowest); ``zip`` the i-th value of every field together (equal
lengths). Each point is trained with `config.num_replicas` seeds, seed + s, so
a sweep of P points is P x R runs on the existing replica axis: run
k = p * R + s is point p with seed s -- its initialisation, data order and
augmentation are those of the single run of point p's config
(`point_config`) with seed + s.

Only fields that enter the training step as numbers may vary (`SWEEPABLE`):
the step receives every run's values as arrays with the replica axis and
builds each run's optimizer, schedule, loss, EMA, lookahead and augmentation
from them (`with_values`), so the whole sweep is one compilation. A field
that changes shapes or code (a width, the batch size, an optimizer or
schedule name, a step count, the dtype) is refused by the config check: such
settings are separate runs, compared with `python -m cifar_jax.compare`.

Arithmetic on a swept value happens in float32 inside the step where a single
run does it in Python (double) while building the step, so a run of a sweep
equals the single run of its point within float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import fnmatch
import itertools
from typing import Any

import jax
import ml_collections
import numpy as np

from cifar_jax.core import fields as spec

# Fields that enter the step as numbers (dotted paths; * is any optimizer group's name).
SWEEPABLE = (
    'learning_rate', 'momentum', 'weight_decay', 'l2_penalty', 'label_smoothing',
    'ema.decay', 'lookahead.decay_base', 'lookahead.decay_power',
    'augment.max_brightness_delta', 'augment.contrast_lower', 'augment.contrast_upper',
    'schedule.decay_factor', 'schedule.start_scale', 'schedule.end_scale',
    'optimizer_groups.*.learning_rate', 'optimizer_groups.*.lr_multiplier',
    'optimizer_groups.*.momentum', 'optimizer_groups.*.weight_decay',
)
SWEEP_MODES = ('cross', 'zip')


def is_sweepable(path: str) -> bool:
  return any(fnmatch.fnmatchcase(path, pattern) for pattern in SWEEPABLE)


def fields(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """Swept field path -> its values, in sorted path order; {} for no sweep."""
  sweep = config.get('sweep')
  if not sweep:
    return {}
  out = {}

  def walk(node: Any, prefix: str) -> None:
    for name in sorted(node):
      value = node[name]
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        walk(value, f'{prefix}{name}.')
      else:
        out[f'{prefix}{name}'] = tuple(value) if isinstance(value, (tuple, list)) else value
  walk(sweep, '')
  return out


def points(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Every point of the sweep as {field path: value}; one empty point without a sweep."""
  swept = fields(config)
  if not swept:
    return [{}]
  names = list(swept)
  if config.get('sweep_mode', 'cross') == 'zip':
    combinations = zip(*swept.values(), strict=True)
  else:
    combinations = itertools.product(*swept.values())
  return [dict(zip(names, values, strict=True)) for values in combinations]


def num_points(config: ml_collections.ConfigDict) -> int:
  return len(points(config))


def num_runs(config: ml_collections.ConfigDict) -> int:
  """Networks trained together: points x config.num_replicas (1 for a single run)."""
  return num_points(config) * config.num_replicas


def is_sweep(config: ml_collections.ConfigDict) -> bool:
  return bool(fields(config))


def run_seeds(config: ml_collections.ConfigDict) -> list[int]:
  """The seed of every run k = p * R + s: config.seed + s."""
  return [config.seed + s for _ in range(num_points(config)) for s in range(config.num_replicas)]


def by_point(per_run: Sequence[Any], num_points_: int) -> list[Sequence[Any]]:
  """Per-run values cut into each point's seeds (run k = p * R + s is point p)."""
  if num_points_ < 1 or len(per_run) % num_points_:
    raise ValueError(f'{len(per_run)} runs do not divide into {num_points_} sweep points.')
  seeds = len(per_run) // num_points_
  return [per_run[p * seeds:(p + 1) * seeds] for p in range(num_points_)]


def replica_key(name: str, run: int) -> str:
  """The name of run `run`'s own value of a figure among the runs' means: 'precision/replica_3'
  (one TensorBoard curve per run; `run_of_key` reads it back)."""
  return f'{name}/replica_{run}'


def run_of_key(key: str) -> tuple[str, int] | None:
  """('precision', 3) for 'precision/replica_3'; None for a figure of all the runs."""
  name, _, suffix = key.rpartition('/replica_')
  return (name, int(suffix)) if name and suffix.isdigit() else None


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
  *parents, leaf = path.split('.')
  for parent in parents:
    tree = tree[parent]
  tree[leaf] = value


def point_config(config: ml_collections.ConfigDict, point: int) -> ml_collections.ConfigDict:
  """The config of point `point` alone: its values set, no sweep, the same seeds."""
  fields_ = config.to_dict()
  for path, value in points(config)[point].items():
    _set_path(fields_, path, value)
  fields_['sweep'] = {}
  return ml_collections.ConfigDict(fields_)


def describe(point: Mapping[str, Any]) -> str:
  """'learning_rate=0.1, weight_decay=0.0005' ('' for a single run's point)."""
  return ', '.join(f'{path}={value:g}' if isinstance(value, float) else f'{path}={value}'
                   for path, value in point.items())


def run_values(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Every swept field's value for each run, float32 [num_runs]; {} without a sweep."""
  replicas = config.num_replicas
  return {path: np.repeat(np.asarray([p[path] for p in points(config)], np.float32), replicas)
          for path in fields(config)}


def with_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]
                ) -> ml_collections.ConfigDict:
  """`config` whose swept fields hold `values` (one run's: scalars, jax arrays or tracers).

  What the optimizer, the schedule and the step options are built from inside
  the step; the structure they take from a swept field is that of a non-zero
  value (`enabled`), so every point runs the same operations.
  """
  fields_ = config.to_dict()
  for path, value in values.items():
    _set_path(fields_, path, value)
  return ml_collections.ConfigDict(fields_)


def enabled(value: Any) -> bool:
  """Whether a numeric option is on: a jax array (a swept value: on for every point) or != 0.

  A swept value of 0 then runs the operation with 0 -- adding 0 x p to a
  gradient, smoothing labels by 0 -- which leaves the numbers as they are.
  """
  return isinstance(value, jax.Array) or bool(value)


def check_sweep(config: ml_collections.ConfigDict, fail: Any) -> list[ml_collections.ConfigDict]:
  """Checks config.sweep's shape; returns every point's config (for the field checks).

  `fail(message)` raises the config check's error.
  """
  mode = config.get('sweep_mode', 'cross')
  if mode not in SWEEP_MODES:
    fail(f'Unknown config.sweep_mode {mode!r}; use one of {list(SWEEP_MODES)}.')
  swept = fields(config)
  if not swept:
    return []
  known = config.to_dict()
  for path, values in swept.items():
    if not is_sweepable(path):
      exists = _has_path(known, path)
      why = ('it changes shapes or code, so its settings cannot share one program' if exists
             else 'there is no such field')
      fail(f'config.sweep.{path} cannot be swept ({why}); the fields a sweep may vary are '
           f'{", ".join(SWEEPABLE)}; run separate runs and compare them '
           '(python -m cifar_jax.compare).')
    if not _has_path(known, path):
      fail(f'config.sweep.{path} names no field of this config (config.{path}); add the '
           'optimizer group first or fix the name.')
    if not isinstance(values, tuple) or not values or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
      fail(f'config.sweep.{path} is {values!r}; it must be a tuple of one or more numbers.')
  lengths = {len(v) for v in swept.values()}
  if mode == 'zip' and len(lengths) > 1:
    fail('config.sweep_mode is zip but the swept fields have '
         f'{", ".join(f"{len(v)} values ({p})" for p, v in swept.items())}; give each the same '
         'number of values, or use sweep_mode=cross.')
  if num_points(config) == 1:
    only = describe(points(config)[0])
    fail(f'config.sweep has a single point ({only}); set those fields themselves and leave '
         'config.sweep empty, or give a field two or more values.')
  return [point_config(config, p) for p in range(num_points(config))]


def _has_path(tree: dict[str, Any], path: str) -> bool:
  for part in path.split('.'):
    if not isinstance(tree, dict) or part not in tree:
      return False
    tree = tree[part]
  return True


# ----------------------------------------------------------------------------
# The config fields of replicas and sweeps.

REPLICA_EXECUTIONS = ('vmap', 'loop')
FIELDS = {
    'num_replicas': spec.Field(1, spec.integer(1), 'independent runs with seeds seed + 0, 1, ...',
                            before=1),
    'replica_execution': spec.Field('loop', spec.choice(REPLICA_EXECUTIONS),
                                 'vmap (batched) | loop (one after the other)', before='loop'),
    'sweep_mode': spec.Field('cross', spec.choice(SWEEP_MODES), 'cross | zip', before='cross'),
    'sweep': spec.Field({}, lambda c, path: c.groups.add(path), 'the swept fields (above)',
                     before={}),
}


spec.declare(__name__, FIELDS)
