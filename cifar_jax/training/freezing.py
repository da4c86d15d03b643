"""Layers that do not train (`config.freeze`), as when fine-tuning loaded weights.

`config.freeze` is a tuple of module names ('conv1', 'layer1') or regular expressions over
parameter paths ('layer[12]_.*', '.*_bn\\d/scale'). A parameter is frozen when a pattern
matches its whole path ('layer1_0_conv1/kernel') or one of the modules it is in ('layer1_0',
in a nested network). A frozen parameter gets no update -- its optimizer's update is zero,
whatever group it is in, so weight decay and momentum leave it alone too -- and its module's
BatchNorm statistics and its EMA stay what they were: after training, a frozen layer equals,
bit for bit, what it started from (`config.init_from`'s weights).

`config.freeze_batch_norm` makes every BatchNorm normalise with its running statistics in
training too, and leaves them as they are (common when fine-tuning with small batches, whose
own statistics are noisy): `running_statistics` around the training forward pass. It reaches
the BatchNorm layers of Linen models -- every family here (`layers.BatchNorm`) and flax's
`nn.BatchNorm` in a model from outside -- not those inside an NNX model.

A different learning rate for the loaded layers is an optimizer group
(`config.optimizer_groups.NAME.lr_multiplier`), not a freeze.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import contextlib
import re
from typing import Any

import flax.linen as nn
import jax
import optax

from cifar_jax.core import fields as spec
from cifar_jax.core.errors import UserError
from cifar_jax.models import layers


def check_patterns(c: spec.Checker, path: str) -> None:
  """A field of module names or path patterns (config.freeze, config.init_exclude)."""
  for pattern in c.sequence(path, str):
    try:
      re.compile(pattern)
    except re.error as error:
      raise UserError(f'config.{path} has {pattern!r}, which is no regular expression '
                      f'({error}); give module names or patterns such as "layer[12]_.*".'
                      ) from None


def path_name(path: Sequence[Any]) -> str:
  """'module/leaf' of a tree path (jax.tree_util keys)."""
  return '/'.join(str(getattr(key, 'key', key)) for key in path)


def matches(name: str, patterns: Sequence[str]) -> bool:
  """Whether a pattern names the variable 'module/.../leaf': its whole path, or a module it is
  in (config.freeze's rule, and config.init_exclude's)."""
  parts = name.split('/')
  candidates = [name] + ['/'.join(parts[:end]) for end in range(1, len(parts))]
  return any(re.fullmatch(pattern, candidate) for pattern in patterns
             for candidate in candidates)


def check_patterns_match(field: str, patterns: Sequence[str], paths: Sequence[str]) -> None:
  """Each of `patterns` (config.`field`) names a parameter of the model ('module/param' paths)."""
  for pattern in patterns:
    if not any(matches(path, (pattern,)) for path in paths):
      modules = sorted({path.rsplit('/', 1)[0] for path in paths})
      raise UserError(f'config.{field} has {pattern!r}, which matches no parameter of '
                      f'config.model; its modules are {modules}.')


FIELDS = {'freeze': spec.Field((), check_patterns, 'modules or path patterns not trained',
                               before=[]),
          'freeze_batch_norm': spec.Field(False, spec.flag(), 'BatchNorm on its running '
                                          'statistics in training too, kept', before=False)}
spec.declare(__name__, FIELDS, check_parameters=lambda config, paths: check_patterns_match(
    'freeze', config.freeze, paths))


def freeze_optimizer(tx: optax.GradientTransformation, patterns: Sequence[str]
                     ) -> optax.GradientTransformation:
  """`tx` for the parameters `patterns` leave free, a zero update for the frozen ones."""
  if not patterns:
    return tx

  def labels(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 'frozen' if matches(path_name(path), patterns) else 'trained', params)
  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)


def keep_frozen(new: Any, old: Any, patterns: Sequence[str]) -> Any:
  """`new` with the frozen variables of `old` (a tree of one collection: params, statistics)."""
  if not patterns:
    return new
  return jax.tree_util.tree_map_with_path(
      lambda path, n, o: o if matches(path_name(path), patterns) else n, new, old)


def _in_inference(next_fun, args, kwargs, context):
  """A BatchNorm's call with its running statistics (a `nn.intercept_methods` interceptor)."""
  if context.method_name == '__call__':
    if isinstance(context.module, layers.BatchNorm):  # __call__(x, train)
      args, kwargs = args[:1], {**kwargs, 'train': False}
    elif isinstance(context.module, nn.BatchNorm) and context.module.use_running_average is None:
      args, kwargs = args[:1], {**kwargs, 'use_running_average': True}
    elif isinstance(context.module, nn.BatchNorm):
      # Set in its constructor (flax's idiom, nn.BatchNorm(use_running_average=not train)):
      # this call's instance, bound for this apply only, gets True.
      object.__setattr__(context.module, 'use_running_average', True)
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def running_statistics(enabled: bool) -> Iterator[None]:
  """Inside, with `enabled`, every Linen BatchNorm normalises with its running statistics and
  leaves them as they are (`config.freeze_batch_norm`); else nothing changes."""
  if not enabled:
    yield
    return
  with nn.intercept_methods(_in_inference):
    yield

