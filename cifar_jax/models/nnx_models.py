"""Flax NNX models: an `nnx.Module` named in the config trains like a Linen one.

Flax recommends its NNX API for new code, so a researcher's own model is often
an `nnx.Module`. cifar_jax runs one through Flax's Linen bridge
(`nnx.bridge.ToLinen`): the module's parameters land in the `params`
collection and its `nnx.BatchStat` variables (BatchNorm's running statistics)
in `batch_stats`, so the same builder, state, step, EMA, checkpoints, evaluator,
replicas, sweeps and notebook API serve it unchanged.

The contract (docs/development.md, "Adding a model"):

* `__init__(self, num_classes: int, in_channels: int, *, rngs: nnx.Rngs, ...)`:
  the classes come from the data and the input channels from the images the
  model sees; the other keyword arguments are what `config.model` may set
  (each with a default unless the config gives it);
* an `axis_name` argument, if it takes one, receives the device axis
  (`parallel.AXIS_NAME`): `nnx.BatchNorm(..., axis_name=axis_name)` then
  averages its statistics over the global batch, the same on any number of
  devices; a `dtype` argument receives `jnp.float32` or `jnp.bfloat16`;
* `__call__(self, images, train: bool = False)`: float32 NHWC images ->
  float32 logits [N, num_classes]; BatchNorm layers take
  `use_running_average=not train`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from flax import nnx
import flax.linen as nn
from flax.nnx import bridge

from cifar_jax.core.parallel import AXIS_NAME

# Constructor arguments that are not options of the config's `model` group.
CONTRACT_ARGUMENTS = ('self', 'num_classes', 'in_channels', 'rngs', 'axis_name')


def is_nnx_model(target: Any) -> bool:
  """Whether `target` is an `nnx.Module` class."""
  return inspect.isclass(target) and issubclass(target, nnx.Module)


def _parameters(cls: type[nnx.Module]) -> dict[str, inspect.Parameter]:
  return dict(inspect.signature(cls.__init__).parameters)


def missing_contract(cls: type[nnx.Module]) -> list[str]:
  """The contract's constructor arguments `cls` lacks."""
  parameters = _parameters(cls)
  return [name for name in ('num_classes', 'in_channels', 'rngs') if name not in parameters]


def nnx_options(cls: type[nnx.Module]) -> dict[str, Any]:
  """{argument: default (dataclasses.MISSING if none)} that `config.model` may set."""
  return {name: (dataclasses.MISSING if p.default is inspect.Parameter.empty else p.default)
          for name, p in _parameters(cls).items()
          if name not in CONTRACT_ARGUMENTS
          and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def as_linen(cls: type[nnx.Module], num_classes: int, in_channels: int,
             config_options: dict[str, Any]) -> nn.Module:
  """The NNX model as a Linen module, built with the contract's arguments and `config_options`."""
  arguments = {'num_classes': num_classes, 'in_channels': in_channels, **config_options}
  if 'axis_name' in _parameters(cls):
    arguments['axis_name'] = AXIS_NAME
  return bridge.ToLinen(cls, kwargs=arguments)
