"""Registries: names to implementations with their fields, and code outside the package."""

import sys

import pytest

from cifar_jax.core import fields, registry
from cifar_jax.core.errors import UserError


def _registry():
  things = registry.Registry('thing', 'config.thing.name', 'docs/development.md')

  @things.register('plain', fields={'size': fields.Field(3, fields.integer(1), 'how big')})
  def plain():
    """A plain thing."""

  return things


def test_a_registered_entry_carries_its_fields_and_first_doc_line():
  entry = _registry().get('plain')
  assert entry.doc == 'A plain thing.' and set(entry.fields) == {'size'}
  assert not entry.external and entry.fields['size'].default == 3


def test_a_name_is_registered_once():
  things = _registry()
  with pytest.raises(ValueError, match="thing 'plain' is registered twice"):
    things.register('plain')(lambda: None)


def test_an_unknown_name_lists_the_known_ones():
  with pytest.raises(UserError, match=r"Unknown thing 'fancy' \(config.thing.name\): the "
                                      r"registered ones are \['plain'\]"):
    _registry().get('fancy')


def test_an_outside_entry_is_imported_with_its_declared_fields(tmp_path, monkeypatch):
  (tmp_path / 'outside_things.py').write_text(
      'from cifar_jax.core import fields\n'
      'def shiny():\n  """Shiny."""\n'
      "shiny.FIELDS = {'gloss': fields.Field(0.5, fields.number(0.0, 1.0))}\n"
      'def dull():\n  pass\n'
      "dull.FIELDS = {'gloss': 0.5}\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  try:
    entry = _registry().get('outside_things:shiny')
    assert entry.external and entry.doc == 'Shiny.' and set(entry.fields) == {'gloss'}
    assert 'outside_things:anything' in _registry()
    with pytest.raises(UserError, match=r'outside_things has no \'missing\''):
      _registry().get('outside_things:missing')
    with pytest.raises(UserError, match=r'FIELDS is not a dict of cifar_jax.core.fields.Field'):
      _registry().get('outside_things:dull')
  finally:
    sys.modules.pop('outside_things', None)


def test_fields_added_later_are_filled_with_their_past_values_only():
  declared = {'a.b': fields.Field(1, fields.integer(), before=0),
              'a.c': fields.Field(2, fields.integer())}
  saved = {'a': {}}
  fields.fill_added(saved, '', declared)
  assert saved == {'a': {'b': 0}}  # c has always existed: a config without it is not ours to fix
  saved = {'a': {'b': 5}}
  fields.fill_added(saved, '', declared)
  assert saved == {'a': {'b': 5}}
