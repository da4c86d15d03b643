"""Models, looked up by `config.model.name`: the registry, and how a model is built from the config.

One module per family: `tutorial` (the TensorFlow tutorial's CNN),
`airbench` (airbench94), `resnet` (ResNet and pre-activation ResNet),
`wide_resnet` (WRN-d-k); `layers` holds what they share (PyTorch's BatchNorm
over the global batch, pooling, PyTorch's initialisers).

`config.model.name` is registered in `MODELS` or, for a model outside the
package, 'package.module:ClassName' (any importable flax module that keeps
the contract below); either way the name is saved with the checkpoints, and
the evaluator and `experiment.load_checkpoint` build the same model again
from it. The other fields of `config.model` are the module's dataclass
fields (validated against them at the entry).

The contract (docs/development.md walks through adding a model both ways):

* `__call__(self, images, train: bool = False)`: float32 NHWC images, as
  the input pipeline makes them, -> float32 logits [N, num_classes];
* a `num_classes: int` field (set from the data) and, for BatchNorm over
  the global batch, an `axis_name: str | None` field (set to
  `cifar_jax.core.parallel.AXIS_NAME`; statistics that average over it are the
  same for any number of devices); mutable state lives in `batch_stats`;
* a `dtype` field (optional) receives `jnp.float32` or `jnp.bfloat16` from
  `config.model.dtype`; parameters stay float32;
* optionally `data_init(params, images) -> params`: a data-dependent
  initialisation from `config.model_init_examples` preprocessed training
  images (airbench's whitening).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cifar_jax.core import fields as spec
from cifar_jax.core import registry
from cifar_jax.core.errors import UserError
from cifar_jax.core.parallel import AXIS_NAME
from cifar_jax.core.registry import Registry
from cifar_jax.models.airbench import (
  HEAD_INITS,
  WHITEN_BIAS_INITS,
  Airbench94,
  image_patches,
  whitening_kernel,
)
from cifar_jax.models.layers import (
  FORMULATIONS,
  BatchNorm,
  dirac_init,
  max_pool,
  max_pool_2x2,
  pytorch_default_uniform,
)
from cifar_jax.models.nnx_models import as_linen, is_nnx_model, missing_contract, nnx_options
from cifar_jax.models.resnet import (
    DEPTHS,
    STEMS,
    PreActResNet,
    ResNet,
    TorchvisionResNet18,
    TorchvisionResNet50,
)
from cifar_jax.models.tutorial import TutorialCNN, local_response_normalization
from cifar_jax.models.wide_resnet import WideResNet, blocks_per_group

__all__ = [
    'AXIS_NAME', 'DEPTHS', 'DTYPES', 'FORMULATIONS', 'HEAD_INITS', 'MODELS', 'STEMS',
    'WHITEN_BIAS_INITS', 'Airbench94', 'BatchNorm', 'PreActResNet', 'ResNet', 'TutorialCNN',
    'WideResNet', 'blocks_per_group', 'count_parameters', 'create_model', 'default_fields',
    'dirac_init',
    'fill_added', 'image_patches', 'is_external', 'local_response_normalization', 'max_pool',
    'max_pool_2x2', 'model_class', 'model_fields', 'parameter_paths',
    'pytorch_default_uniform', 'whitening_kernel',
]



# config.model.dtype: what activations, convolutions and matmuls compute in.
# Parameters are created in float32 whatever it is (flax's param_dtype), and
# every model returns float32 logits, so the loss is computed in float32.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


# Module fields that are not options of the config's `model` group.
_NOT_OPTIONS = ('parent', 'name', 'num_classes', 'axis_name')


is_external = registry.is_external  # 'package.module:ClassName', not a registered model


def _check_outside_model(name: str, model: Any, where: str) -> Any:
  """`model` (a Linen or NNX class from outside) if it keeps the model contract; else one
  sentence."""
  module_name, _, class_name = name.partition(':')
  if is_nnx_model(model):
    missing = missing_contract(model)
    if missing:
      raise UserError(f'{where}, but {class_name}.__init__ takes no {", ".join(missing)}; the '
                      'NNX model contract (docs/development.md, "Adding a model") needs '
                      'num_classes, in_channels and rngs.')
    return model
  if not (inspect.isclass(model) and issubclass(model, nn.Module)):
    raise UserError(f'{where}, but {module_name} has no flax module {class_name!r}; name a '
                    'flax.linen.Module or flax.nnx.Module subclass there.')
  fields = {f.name for f in dataclasses.fields(model)}
  if 'num_classes' not in fields:
    raise UserError(f'{where}, but {class_name} has no num_classes field; the model contract '
                    '(docs/development.md) needs one: it is set from the data.')
  return model


MODELS = Registry('model', 'config.model.name', 'docs/development.md, "Adding a model"',
                  check_outside=_check_outside_model)
for _name, _family in (('tutorial_cnn', TutorialCNN), ('airbench94', Airbench94),
                       ('resnet', ResNet), ('preact_resnet', PreActResNet),
                       ('wide_resnet', WideResNet), ('torchvision_resnet18', TorchvisionResNet18),
                       ('torchvision_resnet50', TorchvisionResNet50)):
  MODELS.register(_name)(_family)


def model_class(name: str) -> Callable[..., nn.Module]:
  """The class `name` names: registered in `MODELS` (`@MODELS.register(name)`, as every
  family here), or 'package.module:ClassName' from outside; else one sentence."""
  return MODELS.get(name).target


def model_fields(name: str) -> dict[str, Any]:
  """{field: default (dataclasses.MISSING if none)} that `config.model` may set."""
  cls = model_class(name)
  if is_nnx_model(cls):
    return nnx_options(cls)
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.name not in _NOT_OPTIONS and f.init}


def default_fields(name: str) -> dict[str, Any]:
  """{field: default} of the model's options a config can hold (numbers, strings, flags, tuples
  of them; `dtype` by its name): what naming the model brings to `config.model`."""
  names = {value: key for key, value in DTYPES.items()}
  simple = (bool, int, float, str)
  fields = {}
  for field, default in model_fields(name).items():
    if field == 'dtype' and default in names:
      fields[field] = names[default]
    elif isinstance(default, simple) or (
        isinstance(default, tuple) and all(isinstance(x, simple) for x in default)):
      fields[field] = default
  return fields


def create_model(model_config: ml_collections.ConfigDict, num_classes: int,
                 in_channels: int = 3) -> nn.Module:
  """The model `model_config.name` names, the other fields its arguments (a valid config).

  An NNX model comes as a Linen module (`nnx_models.as_linen`), built for `in_channels`.
  """
  options = dict(model_config)
  name = options.pop('name')
  if 'dtype' in options:
    options['dtype'] = DTYPES[options['dtype']]
  for key, value in options.items():
    if isinstance(value, list):  # tuples come back from JSON (saved configs) as lists
      options[key] = tuple(value)
  model = model_class(name)
  if is_nnx_model(model):
    return as_linen(model, num_classes, in_channels, options)
  if is_external(name) and 'axis_name' in {f.name for f in dataclasses.fields(model)}:
    options['axis_name'] = AXIS_NAME  # the registered models default to it
  return model(num_classes=num_classes, **options)


def parameter_paths(params: Any) -> list[str]:
  """'module/param' path of every leaf, in tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return ['/'.join(str(getattr(k, 'key', k)) for k in path) for path, _ in flat]


# The families whose `formulation` field came with the fast BatchNorm: a config saved before
# then trained with what is now 'reference'.
_FORMULATION_ADDED = ('airbench94', 'resnet', 'preact_resnet', 'wide_resnet')


def fill_added(saved: dict[str, Any]) -> None:
  """A saved config's model group with the fields its family gained since: what the run did."""
  model = saved.get('model', {})
  if model.get('name') in _FORMULATION_ADDED and 'formulation' not in model:
    model['formulation'] = 'reference'


def count_parameters(params: Any) -> int:
  """Total number of scalars in a parameter tree."""
  return sum(x.size for x in jax.tree.leaves(params))


def has_empty_parameters(params: Any) -> bool:
  """Whether a parameter has a zero-size dimension: the network pooled its input to nothing
  (recent Flax initialises a layer of no inputs; older Flax divides by zero instead)."""
  return any(0 in getattr(leaf, 'shape', ()) for leaf in jax.tree.leaves(params))


def _initialises(model: nn.Module, side: int, channels: int) -> bool:
  """Whether `model` takes side x side images of `channels` (shapes only, no compute)."""
  images = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
  try:
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  except (ArithmeticError, ValueError, TypeError):  # a side pooled to nothing: 0 / 0 in an init
    return False
  return not has_empty_parameters(variables.get('params', {}))


def minimum_input_side(model: nn.Module, channels: int, largest: int = 1024) -> int | None:
  """The smallest square side `model` initialises on (None: none up to `largest`).

  Found by bisection over shape-only traces (assumes every side above it fits, as the
  pooling networks here do); called only after an initialisation failed.
  """
  if not _initialises(model, largest, channels):
    return None
  low, high = 0, largest  # low does not fit (or is 0), high does
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (low, middle) if _initialises(model, middle, channels) else (middle, high)
  return high


# ----------------------------------------------------------------------------
# The config fields of the model.

# Checks of fields several families share; a family's own are its class's FIELD_CHECKS, and a
# field checked by neither is checked against the type of the class's default.
COMMON_CHECKS = {
    'dtype': spec.choice(tuple(DTYPES)),
    'batch_norm_momentum': spec.number(0.0, below=1.0),
    'batch_norm_epsilon': spec.number(above=0.0),
}
FIELDS = {
    'model_init_examples': spec.Field(5000, spec.integer(1), 'images a data-dependent init sees'),
    'model': spec.Field({'name': 'tutorial_cnn'}, lambda c, path: check_model_fields(c),
                     'the model (name) and its fields'),
}


spec.declare(__name__, FIELDS, upgrade=fill_added)


def check_model_fields(c: spec.Checker) -> None:
  """config.model: a known model and its fields, each in range."""
  name = c.text('model.name')
  cls = model_class(name)  # an unknown name is model_class's sentence
  accepted = model_fields(name)
  # A model from outside means by its fields what its author says: its own checks, and types.
  checks = {'dtype': COMMON_CHECKS['dtype']} if is_external(name) else dict(COMMON_CHECKS)
  checks.update(getattr(cls, 'FIELD_CHECKS', {}))
  c.groups.add('model')
  for field, value in c.config.model.items():
    if field == 'name':
      continue
    if field not in accepted:
      raise UserError(f'config.model does not fit model {name!r}: it has no field {field!r} '
                      f'(its fields: {sorted(accepted)}).')
    if field in checks:
      checks[field](c, f'model.{field}')
    elif (accepted[field] is not dataclasses.MISSING and accepted[field] is not None
          and not isinstance(value, type(accepted[field]))):
      raise UserError(f'config.model.{field} is {value!r}; model {name!r} takes a '
                      f'{type(accepted[field]).__name__} there.')
  required = sorted(field for field, default in accepted.items()
                    if default is dataclasses.MISSING and field not in c.config.model)
  if required:
    raise UserError(f'Model {name!r} needs config.model.{required[0]} (it has no default); set '
                    'it in the config.')

