"""Name -> implementation tables of the features a config chooses by name, with their fields.

A schedule (`schedules.SCHEDULES`), an augmentation (`augmentations.AUGMENTATIONS`), a data
source (`datasets.SOURCES`), a model (`models.MODELS`) and a metric (`metrics.METRICS`) are each
registered next to their code, in one form, with the config fields they take (`fields.Field`:
default, check, documentation; a model's are its dataclass fields):

  @SCHEDULES.register('warmup_cosine', fields={'warmup_epochs': Field(5.0, ...)})
  def warmup_cosine(fields, length): ...

A config names a registered entry, or code outside the package as 'package.module:Name'; the
named object then declares its own fields in a `FIELDS` dict of `fields.Field` (and its
documentation in its docstring). Either way the name is what is checkpointed, so the
evaluator, a resume and the notebook API find the same code again. An unknown name is one
sentence listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import importlib
from typing import Any

from cifar_jax.core.errors import UserError
from cifar_jax.core.fields import Field


def is_external(name: str) -> bool:
  """Whether `name` is 'package.module:Name' (code outside cifar_jax), not a registered one."""
  return isinstance(name, str) and ':' in name


def import_named(name: str, where: str) -> Any:
  """The object 'package.module:Name' names (None if the module has no such name); a module
  that cannot be imported is one sentence starting with `where`."""
  module_name, _, attribute = name.partition(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise UserError(f'{where}, but {module_name!r} cannot be imported ({error}); install it '
                    'or put its folder on PYTHONPATH, in the trainer and the evaluator '
                    'alike.') from None
  return getattr(module, attribute, None)


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered (or imported) implementation, the fields it takes and what it is."""

  name: str
  target: Any
  fields: Mapping[str, Field]
  doc: str = ''

  @property
  def external(self) -> bool:
    return is_external(self.name)


class Registry:
  """The entries of one kind (`kind`: 'schedule'), chosen by the config field `where`."""

  def __init__(self, kind: str, where: str, contract: str,
               check_outside: Callable[[str, Any, str], Any] | None = None):
    self.kind = kind
    self.where = where  # 'config.schedule.name'
    self.contract = contract  # where the contract of an outside entry is documented
    # check_outside(name, target, where) -> target: one sentence (UserError) where an imported
    # target breaks the kind's contract (a model that is no flax module, say).
    self._check_outside = check_outside
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, fields: Mapping[str, Field] | None = None, doc: str = ''
               ) -> Callable[[Any], Any]:
    """Decorator: registers its target as `name`, taking `fields`."""
    def decorate(target: Any) -> Any:
      if name in self._entries:
        raise ValueError(f'{self.kind} {name!r} is registered twice')
      text = doc or (target.__doc__ or '').strip().split('\n')[0]
      self._entries[name] = Entry(name, target, dict(fields or {}), text)
      return target
    return decorate

  def unregister(self, name: str) -> None:
    """Removes `name` (a notebook's or a test's entry, as a fresh process without its code)."""
    del self._entries[name]

  def names(self) -> list[str]:
    return list(self._entries)

  def entries(self) -> list[Entry]:
    return list(self._entries.values())

  def __contains__(self, name: str) -> bool:
    return name in self._entries or is_external(name)

  def get(self, name: str) -> Entry:
    """The entry `name` names (registered, or imported from 'package.module:Name')."""
    if is_external(name):
      return self._import(name)
    if name not in self._entries:
      raise UserError(
          f'Unknown {self.kind} {name!r} ({self.where}): the registered ones are '
          f"{self.names()}; name one, or code outside cifar_jax as 'package.module:Name' "
          f'({self.contract}).')
    return self._entries[name]

  def _import(self, name: str) -> Entry:
    where = f"{self.where} is {name!r}, a {self.kind} outside cifar_jax"
    target = import_named(name, where)
    if target is None:
      module_name, _, attribute = name.partition(':')
      raise UserError(f'{where}, but {module_name} has no {attribute!r}; name one of its '
                      f'objects ({self.contract}).')
    if self._check_outside is not None:
      target = self._check_outside(name, target, where)
    declared = getattr(target, 'FIELDS', {})
    if not (isinstance(declared, Mapping)
            and all(isinstance(f, Field) for f in declared.values())):
      raise UserError(f'{where}, but its FIELDS is not a dict of cifar_jax.core.fields.Field '
                      f'({self.contract}).')
    text = (getattr(target, '__doc__', '') or '').strip().split('\n')[0]
    return Entry(name, target, dict(declared), text)
