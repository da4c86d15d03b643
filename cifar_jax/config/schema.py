"""The default config, built from the fields every module declares: a default exists in one place.

Each module that reads config fields declares them (`fields.Field`: default, check, one line of
documentation, `before`) in its `FIELDS`, and each feature chosen by name in its registry
(`validation.OWNERS` lists the modules). `default_config()` is the config of those defaults
alone, every option off -- what `experiments/base.py` returns and every recipe overrides; the
model group holds the default model's own fields (the tutorial network's widths).

  python -m cifar_jax.config.schema            # every field: its default and what it means
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections

from cifar_jax import models
from cifar_jax.config import validation

# The model a config names when it names none, and the fields of a model group that are a
# run's choice rather than the model's (kept when another model is named; config.model.dtype).
DEFAULT_MODEL = 'tutorial_cnn'


def _group(value: Any) -> Any:
  """A declared default as a config value: a dict becomes a group of its own."""
  if isinstance(value, dict):
    return ml_collections.ConfigDict({k: _group(v) for k, v in value.items()})
  return copy.deepcopy(value)


def default_config() -> ml_collections.ConfigDict:
  """Every declared field at its default (a new `ConfigDict` each call)."""
  config = ml_collections.ConfigDict()
  for path, field in validation.declared_fields().items():
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
  for path, field in validation.declared_fields().items():
    default = (models.default_fields(DEFAULT_MODEL) | {'name': DEFAULT_MODEL}
               if path == 'model' else field.default)
    lines.append(f'config.{path} = {default!r}  # {field.doc}')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(describe())
