"""The schema: every config field the package declares, the default config built from them.

Each module that reads config fields declares them where it reads them (`fields.declare`:
default, check, one line of documentation, `before`; a feature chosen by name in its registry),
so a field has one owner and a default exists in one place. `sections()` imports every module
of the package's layers and returns their declarations, lowest layer first; `default_config()`
is the config of those defaults alone, every option off -- what `experiments/base.py` returns
and every recipe overrides; the model group holds the default model's own fields (the tutorial
network's widths).

  python -m cifar_jax.config.schema            # every field: its default and what it means
"""

from __future__ import annotations

import copy
import functools
import importlib
import pkgutil
from typing import Any

import ml_collections

import cifar_jax
from cifar_jax import models
from cifar_jax.core import fields as spec

# The model a config names when it names none.
DEFAULT_MODEL = 'tutorial_cnn'


@functools.cache
def _import_every_module() -> None:
  """Imports each module of the package's layers, so that each has declared its fields.

  Found by walking the package rather than listed, so that a module added later cannot be
  forgotten; the entry points (cifar_jax/*.py) declare none and are not imported.
  """
  for layer in cifar_jax.LAYERS:
    package = importlib.import_module(f'cifar_jax.{layer}')
    for module in pkgutil.walk_packages(package.__path__, f'{package.__name__}.'):
      importlib.import_module(module.name)


def sections() -> list[spec.Section]:
  """Every module's declared fields, by layer (lowest first), then by module name."""
  _import_every_module()

  def place(section: spec.Section) -> tuple[int, str]:
    layer = section.owner.split('.')[1] if section.owner.count('.') else ''
    return (cifar_jax.LAYERS.index(layer) if layer in cifar_jax.LAYERS else len(
        cifar_jax.LAYERS), section.owner)
  return sorted(spec.declared_sections(), key=place)


def declared_fields() -> dict[str, spec.Field]:
  """Every declared field ({dotted path: field}), in the order of `sections()`."""
  return {path: field for section in sections() for path, field in section.fields.items()}


def _group(value: Any) -> Any:
  """A declared default as a config value: a dict becomes a group of its own."""
  if isinstance(value, dict):
    return ml_collections.ConfigDict({k: _group(v) for k, v in value.items()})
  return copy.deepcopy(value)


def default_config() -> ml_collections.ConfigDict:
  """Every declared field at its default (a new `ConfigDict` each call)."""
  config = ml_collections.ConfigDict()
  for path, field in declared_fields().items():
    *parents, leaf = path.split('.')
    group = config
    for parent in parents:
      if parent not in group:
        group[parent] = ml_collections.ConfigDict()
      group = group[parent]
    if field.any_type:  # e.g. dataset.image_size: N or (height, width)
      group[leaf] = ml_collections.FieldReference(copy.deepcopy(field.default), field_type=object)
    else:
      group[leaf] = _group(field.default)
  config.model = ml_collections.ConfigDict({'name': DEFAULT_MODEL,
                                            **models.default_fields(DEFAULT_MODEL)})
  return config


def describe() -> str:
  """Every field, one line each: its dotted path, default and documentation."""
  lines = []
  for path, field in declared_fields().items():
    default = (models.default_fields(DEFAULT_MODEL) | {'name': DEFAULT_MODEL}
               if path == 'model' else field.default)
    lines.append(f'config.{path} = {default!r}  # {field.doc}')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(describe())
