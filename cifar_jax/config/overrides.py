"""Overrides of a config's fields by dotted path: the command line's `--config.PATH=VALUE` and the
notebook's `{PATH: value}`, with what naming an extension brings.

`apply(config, overrides)` sets them in this order, so that they may come in any order:

1. the fields that name extensions (`extensions.NAMING`: `model.name`, `schedule.name`,
   `augment.extra`, `dataset.source`, `eval.metrics`);
2. `extensions.complete`: the named extensions' declared fields join the config with their
   defaults, and what a given name replaced leaves with it;
3. every other field.

Fields that do not exist yet are created only where a config holds entries of its own choosing:
`sweep.FIELD` (a tuple of values), `eval.sets.NAME.FIELD` (creates the set NAME),
`optimizer_groups.NAME.FIELD` (creates the group NAME) and `model.FIELD` (a field of the named
model). Any other unknown field is one sentence. Text from the command line is read by the type
of the field it sets (a number, a flag, a string, a tuple as `'(a, b)'` or `a,b`).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
import difflib
from typing import Any

import ml_collections

from cifar_jax import models
from cifar_jax.config import extensions
from cifar_jax.core import fields as spec
from cifar_jax.core.errors import UserError
from cifar_jax.evaluation import eval_sets
from cifar_jax.training import optimizers

# Groups whose entries a config names itself: an override may create an entry and its fields.
_OPEN_GROUPS = ('eval.sets', 'optimizer_groups')


class Text(str):
  """A value as typed on the command line: read by the type of the field it sets."""


def apply(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
          where: str = '--config.') -> None:
  """Sets `overrides` ({dotted path: value or `Text`}) in `config`, in place; see the module doc.

  `where` prefixes a path in messages: '--config.' (the command line) or 'override ' (notebook).
  """
  naming = {path: value for path, value in overrides.items() if path in extensions.NAMING}
  replaced = {path: extensions.get_path(config, path) for path in naming}
  with config.unlocked():
    for path, value in naming.items():
      _set(config, path, value, where)
    extensions.complete(config, replaced, given=set(overrides))
    for path, value in overrides.items():
      if path not in naming:
        _set(config, path, value, where)


def _describe(where: str, path: str, value: Any) -> str:
  return f'{where}{path}={value}' if isinstance(value, Text) else f'{where}{path}={value!r}'


def _set(config: ml_collections.ConfigDict, path: str, value: Any, where: str) -> None:
  said = _describe(where, path, value)
  *parents, leaf = path.split('.')
  if path.startswith('sweep.') and parents:
    target = _group(config, parents, create=True, said=said)
    target[leaf] = _sweep_values(value, said)
    return
  target = _group(config, parents, create=_creates(parents), said=said)
  if leaf not in target:
    _check_creatable(config, parents, leaf, said)
    target[leaf] = _read(value, _new_field_type(config, parents, leaf), said)
    return
  current_type = target.get_type(leaf)
  if isinstance(target[leaf], ml_collections.ConfigDict) and not isinstance(
      value, (Mapping, ml_collections.ConfigDict)):
    raise UserError(f'{said}: config.{path} is a group of fields (a dict); set its fields, '
                    f'--config.{path}.FIELD=VALUE.')
  try:
    target[leaf] = _read(value, current_type, said)
  except TypeError as error:
    raise UserError(f'{said}: {error}') from None


def _creates(parents: list[str]) -> bool:
  return any('.'.join(parents[:2]) == group or '.'.join(parents[:1]) == group
             for group in _OPEN_GROUPS)


def _group(config: ml_collections.ConfigDict, parents: list[str], create: bool, said: str
           ) -> ml_collections.ConfigDict:
  target = config
  for depth, part in enumerate(parents):
    if part not in target and create:
      target[part] = ml_collections.ConfigDict()
    if part not in target:
      _unknown(config, '.'.join(parents[:depth + 1]), said)
    target = target[part]
    if not isinstance(target, ml_collections.ConfigDict):
      raise UserError(f'{said}: config.{".".join(parents[:depth + 1])} is {target!r}, not a '
                      'group of fields.')
  return target


def _check_creatable(config: ml_collections.ConfigDict, parents: list[str], leaf: str,
                     said: str) -> None:
  """A new field is a field of the named model, of an evaluation set or of an optimizer group."""
  group = '.'.join(parents)
  if group == 'eval.sets':  # a whole set as a dict: its fields are checked with the config
    return
  if group == 'model':
    accepted = models.model_fields(config.model.name)
    if leaf not in accepted:
      raise UserError(f'{said}: model {config.model.name!r} has no field {leaf!r} (its fields: '
                      f'{sorted(accepted)}).')
  elif len(parents) == 3 and '.'.join(parents[:2]) == 'eval.sets':
    known = set(eval_sets.SET_FIELDS) | eval_sets.dataset_fields()
    if leaf not in known:
      raise UserError(f'{said}: an evaluation set has no field {leaf!r}; use '
                      f'{sorted(eval_sets.SET_FIELDS)} or fields of config.dataset.')
  elif len(parents) == 2 and parents[0] == 'optimizer_groups':
    if leaf not in optimizers.GROUP_OPTION_FIELDS:
      raise UserError(f'{said}: an optimizer group has no field {leaf!r}; use '
                      f'{list(optimizers.GROUP_OPTION_FIELDS)}.')
  else:
    _unknown(config, '.'.join([*parents, leaf]), said)


def _unknown(config: ml_collections.ConfigDict, path: str, said: str) -> None:
  known = spec.leaf_paths(config.to_dict())
  close = difflib.get_close_matches(path, known, n=1)
  hint = f'did you mean config.{close[0]}? ' if close else ''
  raise UserError(f'{said}: the config has no field config.{path}; {hint}'
                  'python -m cifar_jax.config.schema lists every field, and naming an extension '
                  'brings its fields.')


def _new_field_type(config: ml_collections.ConfigDict, parents: list[str], leaf: str) -> type:
  """The type a new field's text is read as: its declared default's, else a literal's."""
  if parents == ['model']:
    default = models.model_fields(config.model.name).get(leaf)
  elif parents[:2] == ['eval', 'sets'] and len(parents) == 3:
    field = eval_sets.SET_FIELDS.get(leaf)
    default = field.default if field else extensions.get_path(config, f'dataset.{leaf}')
  elif parents[:1] == ['optimizer_groups']:  # the top-level field of that name
    default = extensions.get_path(config, leaf) if leaf != 'params' else ()
  else:  # a whole evaluation set, as a dict
    default = None
  if isinstance(default, (bool, int, float, str, tuple)):
    return type(default)
  return object


def _read(value: Any, field_type: type, said: str) -> Any:
  """`value` for a field of `field_type`: command-line text read by the type; lists as tuples."""
  if not isinstance(value, Text):
    return tuple(value) if isinstance(value, list) else value
  text = str(value)
  if field_type is bool:
    lowered = text.lower()
    if lowered not in ('true', 'false', '1', '0', 'yes', 'no'):
      raise UserError(f'{said}: a flag takes true or false.')
    return lowered in ('true', '1', 'yes')
  if field_type in (int, float):
    try:
      return field_type(text)
    except ValueError as error:
      raise UserError(f'{said}: {error}') from None
  if field_type is str:
    return text
  literal = _literal(text)
  if field_type in (tuple, list):
    if literal is _NOT_LITERAL:  # a,b,c of names
      return tuple(part.strip() for part in text.split(',') if part.strip())
    return tuple(literal) if isinstance(literal, (tuple, list)) else (literal,)
  if isinstance(literal, dict):
    return ml_collections.ConfigDict(literal)
  return text if literal is _NOT_LITERAL else literal


_NOT_LITERAL = object()


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return _NOT_LITERAL


def _sweep_values(value: Any, said: str) -> tuple:
  values = _literal(value) if isinstance(value, Text) else value
  if not isinstance(values, (tuple, list)):
    raise UserError(f"{said}: a sweep field takes a tuple of values, e.g. "
                    f"--config.sweep.learning_rate='(0.02, 0.1)' (see docs/replicas.md#sweeps).")
  return tuple(values)
