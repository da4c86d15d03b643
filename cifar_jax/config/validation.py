"""The one check of a config, walking the fields each feature declares; migrations of old configs.

`validate(config)` runs at every entry -- `python -m cifar_jax.main`,
`python -m cifar_jax.benchmark`, `experiment.load_config`,
`train.train_and_evaluate`, `evaluate.evaluate` -- and raises `UserError` with
one sentence naming the field, its value and what it accepts. The code behind
the entries trusts the config (what can still fail there is data, disk,
checkpoints and peers: what only the data reveal is checked where they are loaded).

Every field is declared, with its default, check and documentation, by the
module that reads it (`OWNERS`: each has `FIELDS` and `check_config`); the
features chosen by name -- schedules, augmentations, data sources, models --
declare theirs in their registries (`registry.Registry`). A field no owner
knows is refused, and a field renamed since earlier releases (`RENAMED`) is
refused with its new name. Checkpoints written under old names, or before a
field existed, are read through `upgrade_saved_config`, which takes the values
of fields added since from the same declarations (`fields.Field.before`).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax import models
from cifar_jax.core import fields as spec
from cifar_jax.core import parallel, summaries, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations, datasets, input_pipeline
from cifar_jax.evaluation import eval_sets, metrics, scoring
from cifar_jax.training import loop, optimizers, schedules, train_state, train_step

# The modules that declare config fields, in the order they are checked.
OWNERS = (train_state, datasets, input_pipeline, augmentations, models, parallel, sweeps, loop,
          summaries, optimizers, train_step, scoring, metrics, eval_sets)

# Old name -> new name, for configs and checkpoints written before the names changed.
RENAMED = {
    'lr_schedule': 'schedule.name',
    'lr_decay_factor': 'schedule.decay_factor',
    'num_epochs_per_decay': 'schedule.epochs_per_decay',
    'warmup_epochs': 'schedule.warmup_epochs',
    'lr_warmup_fraction': 'schedule.warmup_fraction',
    'lr_start_scale': 'schedule.start_scale',
    'lr_end_scale': 'schedule.end_scale',
    'weight_decay_modules': 'l2_penalty_modules',
    'sgd_weight_decay': 'weight_decay',
    'optimizer_groups.*.sgd_weight_decay': 'optimizer_groups.*.weight_decay',
}
# `weight_decay` itself changed meaning: before, the tutorial's L2 term in the loss (now
# `l2_penalty`); now the optimizer's decay (before, `sgd_weight_decay`).


def declared_fields() -> dict[str, spec.Field]:
  """Every top-level declaration of the owners ({dotted path: field})."""
  declared: dict[str, spec.Field] = {}
  for owner in OWNERS:
    for path, field in owner.FIELDS.items():
      if path in declared:
        raise AssertionError(f'config.{path} is declared twice ({owner.__name__})')
      declared[path] = field
  return declared


# ----------------------------------------------------------------------------
# Entry point.

def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `UserError` for the first field the code does not accept; see the module doc.

  About a millisecond (the model's parameter paths, traced once per model, are cached), so
  every entry checks again rather than trusting a config that passed before: an outside
  module it names may have changed since.
  """
  _check_renamed(config.to_dict())
  checker = spec.Checker(config)
  for owner in OWNERS:
    owner.check_config(checker)
  checker.refuse_unknown()
  _check_model_structure(config)
  # A sweep's every point must be a valid config: the ranges above, for each swept value.
  for point in sweeps.check_sweep(config, _fail):
    validate(point)


def _fail(message: str) -> None:
  raise UserError(message)


def _check_renamed(fields: dict[str, Any]) -> None:
  old = _old_names(fields)
  if old:
    renamed = [f'config.{path} is now config.{_new_name(path, pattern)}' for path, pattern in old]
    if 'weight_decay_modules' in fields:
      renamed.insert(0, 'config.weight_decay (the L2 term in the loss) is now config.l2_penalty')
    raise UserError(f'This config uses field names of an earlier cifar_jax ({"; ".join(renamed)}); '
                    'rename them (docs/development.md, "Renamed config fields").')


def _old_names(fields: dict[str, Any]) -> list[tuple[str, str]]:
  """(field path, RENAMED pattern) of every old name in `fields` (a nested dict)."""
  return [(path, pattern) for path in spec.leaf_paths(fields) for pattern in RENAMED
          if fnmatch.fnmatchcase(path, pattern)]


def _new_name(path: str, pattern: str) -> str:
  if '*' not in pattern:
    return RENAMED[pattern]
  group = path.split('.')[1]
  return RENAMED[pattern].replace('*', group)


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
  """A config saved with a checkpoint, in today's fields.

  Old names (`RENAMED`) become the new ones; fields added since get the values
  that mean what the run did (each declaration's `before`).
  """
  upgraded = copy.deepcopy(saved)
  for owner in OWNERS:
    spec.fill_added(upgraded, '', owner.FIELDS)
  for fill in (schedules.fill_added, augmentations.fill_added, datasets.fill_added,
               models.fill_added):
    fill(upgraded)
  if not _old_names(saved):
    return saved if upgraded == saved else upgraded
  # Before the renames, `weight_decay` was the L2 term in the loss.
  upgraded['l2_penalty'] = upgraded.pop('weight_decay', 0.0)
  schedule = {}
  for old, new in RENAMED.items():
    if old in upgraded:
      section, _, field = new.rpartition('.')
      if section == 'schedule':
        schedule[field] = upgraded.pop(old)
      else:
        upgraded[new] = upgraded.pop(old)
  for group in upgraded.get('optimizer_groups', {}).values():
    if 'sgd_weight_decay' in group:
      group['weight_decay'] = group.pop('sgd_weight_decay')
  name = schedule.get('name')
  upgraded['schedule'] = {'name': name, **{k: schedule[k] for k in (
      schedules.SCHEDULES.get(name).fields if name in schedules.SCHEDULES else ())}}
  return upgraded


# ----------------------------------------------------------------------------
# Fields checked against the model's parameters (their paths, from shapes only).


def model_parameter_paths(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """'module/param' of every parameter of config.model, traced for shapes on one image of the
  configured size (a model from outside that cannot be built there is one sentence)."""
  size = config.crop_size or min(datasets.configured_image_size(config) or (32, 32))
  try:
    return _parameter_paths(config.model.to_json_best_effort(sort_keys=True), size,
                            config.dataset.channels or 3)
  except (TypeError, ValueError, AttributeError, KeyError) as error:
    if not models.is_external(config.model.name):
      raise  # a registered model that cannot build is cifar_jax's bug: its traceback helps
    raise UserError(f'Model {config.model.name!r} (config.model.name) cannot be built on '
                    f'[1, {size}, {size}, {config.dataset.channels or 3}] images: '
                    f'{type(error).__name__}: {error}; check it against the model contract '
                    '(docs/development.md, "Adding a model").') from None


def _check_model_structure(config: ml_collections.ConfigDict) -> None:
  paths = model_parameter_paths(config)
  modules = {path.rsplit('/', 1)[0] for path in paths}
  for module in config.l2_penalty_modules:
    if f'{module}/kernel' not in paths:
      raise UserError(f'config.l2_penalty_modules names {module!r}, which is no module with a '
                      f'kernel; the model has {sorted(modules)}.')
  labels = {}
  for path in paths:
    matches = [name for name, group in config.optimizer_groups.items()
               if any(fnmatch.fnmatchcase(path, pattern) for pattern in group.params)]
    if len(matches) > 1:
      raise UserError(f'Parameter {path} is in optimizer groups {matches}; make the groups\' '
                      'params patterns disjoint.')
    labels[path] = matches[0] if matches else 'default'
  for name, group in config.optimizer_groups.items():
    if name not in labels.values():
      raise UserError(f'config.optimizer_groups.{name} matches no parameter (patterns '
                      f'{list(group.params)}); the model has {paths}.')


@functools.lru_cache(maxsize=16)
def _parameter_paths(model_json: str, crop_size: int, channels: int) -> tuple[str, ...]:
  """'module/param' of every parameter of the model (traced for shapes, nothing computed)."""
  model = models.create_model(ml_collections.ConfigDict(json.loads(model_json)), num_classes=10,
                             in_channels=channels)
  # Abstract arguments: nothing is computed and no backend starts (a multi-process run
  # joins its peers after this check, before JAX may touch a device).
  variables = jax.eval_shape(model.init, jax.ShapeDtypeStruct((2,), jnp.uint32),
                             jax.ShapeDtypeStruct((1, crop_size, crop_size, channels),
                                                  jnp.float32))
  return tuple(models.parameter_paths(variables['params']))
