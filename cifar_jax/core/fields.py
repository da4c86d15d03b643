"""Config fields and how they are checked: `Field` (a default, a check, a line of documentation),
`declare` (a module's fields, registered as it is imported) and `Checker` (reads a config by
dotted path, checks, remembers what it checked).

Every feature declares its fields next to its code -- a schedule, an augmentation, a data
source and a model in their registries (`registry.Registry`), the other groups in the module
that reads them, with

  FIELDS = {'keep_checkpoints': Field(5, integer(1), 'the newest kept')}
  fields.declare(__name__, FIELDS)

The declarations are the schema (`config.schema`): the default config is built from them and
`validation.validate` walks them. A field added after checkpoints were first written says,
with `before`, the value that gives the behaviour from before it existed: a config saved
without it is read with that value (`fill_added`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import copy
import dataclasses
import math
from typing import Any

import ml_collections

from cifar_jax.core.errors import UserError

_SAME = object()  # `Field.before`: the field has always existed (or its default is its past)


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: its default, its check (`check(checker, dotted_path)`), what it means.

  `before` is the value a config saved before the field existed is read with (leave it out
  for a field that has always been there; `upgraded` then leaves such configs alone).
  """

  default: Any
  check: Callable[[Checker, str], Any]
  doc: str = ''
  before: Any = _SAME
  # Values of several types (dataset.image_size: N or (height, width)); else its default's type.
  any_type: bool = False

  @property
  def added_later(self) -> bool:
    return self.before is not _SAME


# Checks most fields use, for `Field(check=...)`.
def integer(minimum: int | None = None, maximum: int | None = None, hint: str = ''):
  return lambda c, path: c.integer(path, minimum, maximum, hint)


def number(minimum: float | None = None, maximum: float | None = None, *, above=None,
           below=None, hint: str = ''):
  return lambda c, path: c.number(path, minimum, maximum, hint, below=below, above=above)


def choice(choices: Sequence[str]):
  return lambda c, path: c.choice(path, choices)


def flag():
  return lambda c, path: c.flag(path)


def text(allow_none: bool = False):
  return lambda c, path: c.text(path, allow_none)


def numbers(length: int | None = None, min_length: int = 0):
  return lambda c, path: c.sequence(path, (int, float), length, min_length)


def positive_integers():
  def check(c: Checker, path: str) -> tuple[int, ...]:
    values = c.sequence(path, int, min_length=1)
    if min(values) < 1:
      raise UserError(f'config.{path} is {values}; every width must be at least 1.')
    return values
  return check


def strings(min_length: int = 0):
  return lambda c, path: c.sequence(path, str, min_length=min_length)


def check_section(c: Checker, prefix: str, fields: Mapping[str, Field]) -> None:
  """Every field of `fields` under `prefix` ('augment', 'schedule'): present and valid."""
  for name, field in fields.items():
    field.check(c, f'{prefix}.{name}' if prefix else name)


def fill_added(saved: dict[str, Any], prefix: str, fields: Mapping[str, Field]) -> None:
  """Sets, in the nested dict `saved`, each field added later (dotted names under `prefix`)
  that it lacks to its `before`: the value that means what the saved run did."""
  for name, field in fields.items():
    if not field.added_later:
      continue
    *parents, leaf = [part for part in f'{prefix}.{name}'.split('.') if part]
    section = saved
    for parent in parents:
      section = section.setdefault(parent, {})
    if leaf not in section:
      section[leaf] = copy.deepcopy(field.before)


@dataclasses.dataclass(frozen=True)
class Section:
  """The config fields one module (`owner`) declares, and what else it knows about them.

  `upgrade(saved)` brings a config saved by an earlier run up to today's fields beyond the
  declarations' `before` values (a schedule's or a source's fields, which depend on its name);
  `check_parameters(config, paths)` checks fields that name parameters against the model's
  ('module/param' paths, from shapes), raising `UserError`.
  """

  owner: str
  fields: Mapping[str, Field]
  upgrade: Callable[[dict[str, Any]], None] | None = None
  check_parameters: Callable[[ml_collections.ConfigDict, Sequence[str]], None] | None = None


_SECTIONS: dict[str, Section] = {}


def declare(owner: str, declared: Mapping[str, Field], *,
            upgrade: Callable[[dict[str, Any]], None] | None = None,
            check_parameters: Callable[[ml_collections.ConfigDict, Sequence[str]], None]
            | None = None) -> Mapping[str, Field]:
  """Registers module `owner`'s fields ({dotted path: Field}) in the schema; returns them.

  A path that another module declares already is cifar_jax's bug (AssertionError): each
  field has one owner. Declaring again under the same owner (a reloaded module) replaces.
  """
  for section in _SECTIONS.values():
    clash = set(section.fields) & set(declared)
    if clash and section.owner != owner:
      raise AssertionError(f'config fields {sorted(clash)} are declared by {section.owner} '
                           f'and {owner}')
  _SECTIONS[owner] = Section(owner, declared, upgrade, check_parameters)
  return declared


def declared_sections() -> list[Section]:
  """The sections of the modules imported so far, in the order they were declared
  (`config.schema.sections` imports every module first)."""
  return list(_SECTIONS.values())


def leaf_paths(fields: dict[str, Any], prefix: str = '') -> list[str]:
  """Dotted paths of the leaves of a nested dict (an empty dict is a leaf)."""
  paths = []
  for name, value in fields.items():
    if isinstance(value, dict) and value:
      paths += leaf_paths(value, f'{prefix}{name}.')
    else:
      paths.append(f'{prefix}{name}')
  return paths


class Checker:
  """Reads fields by dotted path, checks them, and remembers which were checked."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.seen: set[str] = set()
    self.groups: set[str] = set()  # groups whose fields are checked by name elsewhere

  def get(self, path: str) -> Any:
    value = self.config
    for part in path.split('.'):
      if not isinstance(value, ml_collections.ConfigDict) or part not in value:
        raise UserError(f'The config has no field config.{path}; start from a file in '
                        'experiments/ (python -m cifar_jax.config.schema lists every field).')
      value = value[part]
    self.seen.add(path)
    return value

  def integer(self, path: str, minimum: int | None = None, maximum: int | None = None,
              hint: str = '') -> int:
    value = self.get(path)
    if isinstance(value, bool) or not isinstance(value, int):
      raise UserError(f'config.{path} is {value!r}; it must be a whole number.')
    self._range(path, value, minimum, maximum, hint)
    return value

  def number(self, path: str, minimum: float | None = None, maximum: float | None = None,
             hint: str = '', below: float | None = None, above: float | None = None) -> float:
    value = self.get(path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise UserError(f'config.{path} is {value!r}; it must be a finite number.')
    hint = hint.replace('{value}', str(value))
    if above is not None and not value > above:
      raise UserError(hint or f'config.{path} is {value}; it must be greater than {above}.')
    if below is not None and not value < below:
      raise UserError(hint or f'config.{path} is {value}; it must be less than {below}.')
    self._range(path, value, minimum, maximum, hint)
    return value

  @staticmethod
  def _range(path, value, minimum, maximum, hint) -> None:
    hint = hint.replace('{value}', str(value))
    if minimum is not None and value < minimum:
      raise UserError(hint or f'config.{path} is {value}; it must be at least {minimum}.')
    if maximum is not None and value > maximum:
      raise UserError(hint or f'config.{path} is {value}; it must be at most {maximum}.')

  def flag(self, path: str) -> bool:
    value = self.get(path)
    if not isinstance(value, bool):
      raise UserError(f'config.{path} is {value!r}; it must be True or False.')
    return value

  def text(self, path: str, allow_none: bool = False) -> str | None:
    value = self.get(path)
    if not (isinstance(value, str) or (allow_none and value is None)):
      raise UserError(f'config.{path} is {value!r}; it must be a string.')
    return value

  def choice(self, path: str, choices: Sequence[str]) -> str:
    value = self.get(path)
    if value not in choices:
      raise UserError(f'Unknown config.{path} {value!r}; use one of {list(choices)}.')
    return value

  def sequence(self, path: str, item: type | tuple[type, ...], length: int | None = None,
               min_length: int = 0) -> tuple:
    value = self.get(path)
    ok = isinstance(value, (tuple, list)) and all(
        isinstance(x, item) and not isinstance(x, bool) for x in value)
    if not ok or (length is not None and len(value) != length) or len(value) < min_length:
      size = f'{length} ' if length is not None else ''
      kind = {str: 'strings', int: 'whole numbers'}.get(item, 'numbers')
      raise UserError(f'config.{path} is {value!r}; it must be a tuple of {size}{kind}.')
    return tuple(value)

  def refuse_unknown(self) -> None:
    for path in leaf_paths(self.config.to_dict()):
      checked_elsewhere = any(path == group or path.startswith(group + '.')
                              for group in self.groups)
      if path not in self.seen and not checked_elsewhere:
        raise UserError(f'config.{path} is not a field cifar_jax reads; remove it or fix its '
                        'name (python -m cifar_jax.config.schema lists every field).')
