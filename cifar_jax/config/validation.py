"""The one check of a config, a walk over the schema; old configs read in today's fields.

`validate(config)` runs at every entry -- `python -m cifar_jax.main`,
`python -m cifar_jax.benchmark`, `experiment.load_config`,
`train.train_and_evaluate`, `evaluate.evaluate` -- and raises `UserError` with
one sentence naming the field, its value and what it accepts. The code behind
the entries trusts the config (what can still fail there is data, disk,
checkpoints and peers: what only the data reveal is checked where they are loaded).

Every field is declared, with its default, check and documentation, by the
module that reads it (`fields.declare`; `schema.sections()` gathers them); the
features chosen by name -- schedules, augmentations, data sources, models --
declare theirs in their registries (`registry.Registry`). A field no module
declares is refused; fields that name parameters are then checked against the
model's (each section's `check_parameters`); a field renamed since earlier
releases (`RENAMED`) is refused with its new name. Checkpoints written under old
names, or before a field existed, are read through `upgrade_saved_config`, which
takes the values of fields added since from the same declarations
(`fields.Field.before`, each section's `upgrade`).
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
from cifar_jax.config import schema
from cifar_jax.core import fields as spec
from cifar_jax.core import sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets

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
  every_section = schema.sections()
  for section in every_section:
    spec.check_section(checker, '', section.fields)
  checker.refuse_unknown()
  paths = model_parameter_paths(config)
  for section in every_section:
    if section.check_parameters is not None:
      section.check_parameters(config, paths)
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
  that mean what the run did (each declaration's `before`, each section's `upgrade`).
  """
  upgraded = _renamed(copy.deepcopy(saved))
  for section in schema.sections():
    spec.fill_added(upgraded, '', section.fields)
    if section.upgrade is not None:
      section.upgrade(upgraded)
  return saved if upgraded == saved else upgraded


def _renamed(saved: dict[str, Any]) -> dict[str, Any]:
  """`saved` (changed in place) with every old name of `RENAMED` moved to its new one."""
  old = _old_names(saved)
  if old:
    # Before the renames, `weight_decay` was the L2 term in the loss.
    saved['l2_penalty'] = saved.pop('weight_decay', 0.0)
  for path, pattern in old:
    *parents, leaf = path.split('.')
    group = functools.reduce(dict.__getitem__, parents, saved)
    value = group.pop(leaf)
    *parents, leaf = _new_name(path, pattern).split('.')
    functools.reduce(lambda group, name: group.setdefault(name, {}), parents, saved)[leaf] = value
  return saved


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
