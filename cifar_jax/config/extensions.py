"""What naming an extension brings to a config: its declared fields, with their defaults.

A config names extensions in a few places (`SLOTS`): the schedule (`schedule.name`), the
augmentations from outside (`augment.extra`), the data source (`dataset.source`), the metrics
(`eval.metrics`) and the model (`model.name`). Each named entry declares the fields it reads
(`fields.Field`, in its registry or its `FIELDS` dict); `complete(config)` adds every such field the
config lacks, with its declared default, so that a recipe or a command line that names an
extension need not repeat its defaults, and the saved config records every value the run used.

Where a name was given over a recipe's (`replaced`: the command line, a notebook's overrides),
the fields of what it replaced leave with it: another schedule takes only its own fields; another
model keeps only the recipe's model fields it also has and the recipe set away from the old
model's defaults (the new model's defaults hold for the rest), and the fields that name the old
model's modules (`l2_penalty_modules`, the optimizer groups' `params`) keep only what matches
the new model's parameters, said in one warning line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
import copy
import dataclasses
import fnmatch
from typing import Any

from absl import logging
import ml_collections

from cifar_jax import models
from cifar_jax.config import schema, validation
from cifar_jax.core import summaries
from cifar_jax.core.errors import UserError
from cifar_jax.core.registry import Registry
from cifar_jax.data import augmentations, datasets
from cifar_jax.evaluation import metrics
from cifar_jax.training import schedules


@dataclasses.dataclass(frozen=True)
class Slot:
  """A config field that names extensions (`naming`) and the group their fields live in."""

  naming: str  # 'schedule.name': a name, or a tuple of names ('augment.extra')
  section: str  # 'schedule': where the named entries' fields are
  registry: Registry
  # The section holds the named entry's fields alone (the schedule): another name replaces them.
  exclusive: bool = False


SLOTS = (
    Slot('schedule.name', 'schedule', schedules.SCHEDULES, exclusive=True),
    Slot('augment.extra', 'augment', augmentations.AUGMENTATIONS),
    Slot('dataset.source', 'dataset', datasets.SOURCES),
    Slot('eval.metrics', 'eval', metrics.METRICS),
    Slot('summaries.writers', 'summaries', summaries.WRITERS),
)
MODEL_NAME = 'model.name'
# The fields that name extensions: an override of one is applied before the others.
NAMING = (*(slot.naming for slot in SLOTS), MODEL_NAME)


def get_path(config: ml_collections.ConfigDict, path: str, default: Any = None) -> Any:
  """The value at dotted `path`, or `default` where a group on the way is missing."""
  value = config
  for part in path.split('.'):
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      return default
    value = value[part]
  return value


def _names(value: Any) -> tuple[str, ...]:
  if isinstance(value, str):
    return (value,)
  if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
    return tuple(value)
  return ()  # not names: the config check says what the field takes


def _declared(slot: Slot, names: tuple[str, ...]) -> dict[str, Any]:
  """{field: Field} that the entries `names` of `slot` declare (unknown names: the check's)."""
  declared = {}
  for name in names:
    if name in slot.registry:
      declared.update(slot.registry.get(name).fields)
  return declared


def complete(config: ml_collections.ConfigDict,
             replaced: Mapping[str, Any] | None = None, given: Collection[str] = ()) -> None:
  """Adds to `config`, in place, every field its named extensions declare and it lacks.

  `replaced` maps each naming field given over the recipe (`NAMING`) to the recipe's value:
  the fields only the replaced entries declared are removed (an exclusive section keeps only
  the new entry's). `given` are the dotted fields the user gave, which are never removed.
  """
  replaced = dict(replaced or {})
  always = set(schema.declared_fields())  # (every registered source's, the built-in ones')
  with config.unlocked():
    for slot in SLOTS:
      section = get_path(config, slot.section)
      if not isinstance(section, ml_collections.ConfigDict):
        continue
      names = _names(get_path(config, slot.naming))
      declared = _declared(slot, names)
      if slot.naming in replaced:
        old = _declared(slot, _names(replaced[slot.naming]))
        leaving = set(section.keys()) - {'name'} if slot.exclusive else set(old)
        for field in leaving - set(declared):
          path = f'{slot.section}.{field}'
          if path not in given and path not in always and field in section:
            del section[field]
      for field, declaration in declared.items():
        if field not in section:
          section[field] = copy.deepcopy(declaration.default)
    if MODEL_NAME in replaced and replaced[MODEL_NAME] != get_path(config, MODEL_NAME):
      _follow_the_model(config, replaced[MODEL_NAME], given)
    _model_defaults(config)


def _model_defaults(config: ml_collections.ConfigDict) -> None:
  """config.model with the named model's own fields it lacks, at their defaults (those a config
  can hold: numbers, strings, flags, tuples of them, dtype by its name)."""
  model = get_path(config, 'model')
  if not isinstance(model, ml_collections.ConfigDict) or not isinstance(model.get('name'), str):
    return
  try:
    defaults = models.default_fields(model.name)
  except UserError:
    return  # an unknown model: the config check says so
  for field, default in defaults.items():
    if field not in model:
      model[field] = default


def _follow_the_model(config: ml_collections.ConfigDict, old_name: str,
                      given: Collection[str]) -> None:
  """config.model for a model named over the recipe's `old_name`, and the fields naming modules."""
  name = config.model.name
  accepted = models.model_fields(name)  # an unknown name: model_class's one sentence
  try:
    old_defaults = models.default_fields(old_name)
  except UserError:  # the recipe's model cannot be imported here: keep what fits the new one
    old_defaults = {}
  for field in list(config.model.keys()):  # (one given for it too: its override says so)
    at_old_default = field in old_defaults and config.model[field] == old_defaults[field]
    if field != 'name' and (field not in accepted or at_old_default):
      del config.model[field]  # the old model's, or its default: the new model's default holds
  paths = _parameter_paths_or_none(config)
  if paths is None:  # the model cannot be traced: the config check says why
    return
  set_aside = []
  if 'l2_penalty_modules' not in given:
    kept = tuple(m for m in config.l2_penalty_modules if f'{m}/kernel' in paths)
    if kept != tuple(config.l2_penalty_modules):
      set_aside.append(f'config.l2_penalty_modules {tuple(config.l2_penalty_modules)} -> {kept}')
      config.l2_penalty_modules = kept
  for group in list(config.optimizer_groups.keys()):
    patterns = tuple(config.optimizer_groups[group].get('params', ()))
    if (f'optimizer_groups.{group}.params' not in given
        and not any(fnmatch.fnmatchcase(p, q) for p in paths for q in patterns)):
      set_aside.append(f'config.optimizer_groups.{group}')
      del config.optimizer_groups[group]
  if set_aside:
    logging.warning('config.model.name=%s, as given, replaces the recipe\'s %s: what named its '
                    'modules is set aside (%s); give them for the new model to keep them.',
                    name, old_name, '; '.join(set_aside))


def _parameter_paths_or_none(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  try:
    return validation.model_parameter_paths(config)
  except (UserError, TypeError, ValueError, AttributeError, KeyError):
    return None
