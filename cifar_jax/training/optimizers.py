"""Optimizers from the config: learning-rate schedules, parameter groups, Muon.

Without `config.optimizer_groups` every parameter gets `config.optimizer`
with `config.learning_rate` scaled by `config.schedule` (the tutorial: plain
SGD, 0.1, staircase decay). With groups, each group -- parameters whose path
('group1_norm1/bias', ...) matches one of its glob patterns -- has its own
optimizer, learning rate, momentum, weight decay and training length, and
the parameters no group matches form the default group of the top-level
fields. Groups must not overlap.

Hyper-parameter forms (`config.hyperparameter_form`):

* ``plain``: learning rates are optax's; `weight_decay` is the decay per
  example of the global batch: each step adds (weight_decay * B / lr) * p
  to the gradient of a group with peak learning rate lr, before momentum --
  PyTorch's `weight_decay` = wd / lr, as airbench94_muon writes it.
* ``pytorch``: learning rates are optax's; `weight_decay` is PyTorch's SGD
  `weight_decay` and optax's `add_decayed_weights`: each step adds
  weight_decay * p to the gradient, before momentum (the ResNet recipes'
  5e-4). A group's `lr_multiplier` scales the decayed step with the rest, as
  a PyTorch parameter group's lr does.
* ``decoupled`` (airbench94, after Myrtle.ai's "how to train your ResNet"):
  learning rates and `weight_decay` are per 1024 examples and normalised
  by the momentum: lr_optax = lr / (1024 (1 + 1 / (1 - momentum))), decay per
  step = weight_decay * B / (1024 (1 + 1 / (1 - momentum))). A group's
  `lr_multiplier` (BatchNorm biases: x64) scales its learning rate but not its
  weight decay.

Muon (`optimizer = 'muon'`, airbench94_muon's conv filters) is `muon` below:
Nesterov momentum, then the update orthogonalised by a few Newton-Schulz
iterations, with the weights renormalised to norm sqrt(out_channels) before
every step.

The config is valid (`validation`): names, fields and group patterns were
checked at the entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import fnmatch
import math
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax import models
from cifar_jax.core import fields as spec
from cifar_jax.core import sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.training import freezing, schedules

# ----------------------------------------------------------------------------
# Muon.


def newton_schulz(matrix: jax.Array, steps: int, coefficients: Sequence[float],
                  eps: float = 1e-7) -> jax.Array:
  """airbench's quintic Newton-Schulz iteration towards the orthogonal factor of `matrix`.

  X = G / (|G|_F + eps), transposed to be wide; then `steps` times
  A = X X^T, X = a X + (b A + c A A) X. In float32 (the original runs it in
  bfloat16 on GPUs).
  """
  a, b, c = coefficients
  x = matrix.astype(jnp.float32)
  x = x / (jnp.linalg.norm(x) + eps)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


class MuonState(NamedTuple):
  count: jax.Array
  momentum: Any


def muon(learning_rate: optax.ScalarOrSchedule, momentum: float, nesterov: bool = True,
         ns_steps: int = 3, ns_coefficients: Sequence[float] = (3.4445, -4.7750, 2.0315),
         eps: float = 1e-7, renormalize: bool = True) -> optax.GradientTransformation:
  """airbench94_muon's `Muon` as an optax transformation (needs `params`).

  For every parameter p with gradient g (conv kernels HWIO [.., out]):
    buf = momentum * buf + g;  u = g + momentum * buf (Nesterov) or buf
    p <- p * sqrt(out) / |p|_F (renormalize)
    p <- p - lr * NS(u viewed as [out, fan_in])
  The update returned is new p - p. `optax.contrib.muon` differs (no weight
  renormalisation, shape-dependent scaling, other defaults), hence this one.
  """
  schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

  def init(params):
    return MuonState(count=jnp.zeros([], jnp.int32),
                     momentum=jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('muon needs the parameters (optax update(..., params)).')
    buffers = jax.tree.map(lambda b, g: momentum * b + g, state.momentum, grads)
    directions = (jax.tree.map(lambda g, b: g + momentum * b, grads, buffers) if nesterov
                  else buffers)
    lr = schedule(state.count)

    def step(p, u):
      out_channels = p.shape[-1]
      matrix = u.reshape(-1, out_channels).T  # [out, fan_in]; column order does not matter
      orthogonal = newton_schulz(matrix, ns_steps, ns_coefficients, eps).T.reshape(p.shape)
      if renormalize:
        p_new = p * (math.sqrt(out_channels) / jnp.linalg.norm(p))
      else:
        p_new = p
      return p_new - lr * orthogonal.astype(p.dtype) - p

    updates = jax.tree.map(step, params, directions)
    return updates, MuonState(count=optax.safe_increment(state.count), momentum=buffers)

  return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Groups.


def _groups(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """Every group with the top-level fields filled in for what it leaves out."""
  defaults = {'optimizer': config.optimizer, 'learning_rate': config.learning_rate,
              'lr_multiplier': 1.0, 'momentum': config.momentum, 'nesterov': config.nesterov,
              'weight_decay': config.weight_decay, 'train_epochs': 0.0,
              'schedule_over': 'run', 'params': ()}
  groups = {name: ml_collections.ConfigDict({**defaults, **dict(group)})
            for name, group in dict(config.optimizer_groups).items()}
  groups['default'] = ml_collections.ConfigDict({**defaults, 'params': ('*',)})
  return groups


GROUP_FIELDS = ('optimizer', 'learning_rate', 'momentum', 'nesterov', 'weight_decay')


def warn_given_fields_groups_keep(config: ml_collections.ConfigDict, given: Iterable[str]
                                  ) -> None:
  """One warning line for each top-level field the user gave (`given`: dotted names from the
  command line or the notebook's overrides) that groups setting their own value keep.

  A group's own `learning_rate` (airbench94_muon's filters: 0.24) wins over the top-level
  one, which then moves only the parameters outside such groups: a given value is not
  silently shadowed.
  """
  given = set(given)
  for field in GROUP_FIELDS:
    if field not in given:
      continue
    keeping = [name for name, group in config.optimizer_groups.items()
               if field in group and f'optimizer_groups.{name}.{field}' not in given]
    if keeping:
      logging.warning('config.%s=%s, as given, applies outside the optimizer groups that set '
                      'their own (%s); set config.optimizer_groups.NAME.%s to change theirs.',
                      field, config[field], ', '.join(keeping), field)


def group_labels(config: ml_collections.ConfigDict, params: Any) -> Any:
  """The group name of every parameter (a tree like `params`; groups are disjoint)."""
  groups = _groups(config)
  labels = []
  for path in models.parameter_paths(params):
    matches = [name for name, group in groups.items() if name != 'default'
               and any(fnmatch.fnmatchcase(path, pattern) for pattern in group.params)]
    labels.append(matches[0] if matches else 'default')
  return jax.tree.unflatten(jax.tree.structure(params), labels)


def _group_optimizer(config, group, num_train_examples, global_batch_size, steps_per_epoch
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, its learning-rate schedule) of one group."""
  if group.optimizer == 'frozen':
    return optax.set_to_zero(), lambda _: jnp.zeros([], jnp.float32)
  uses_momentum = group.optimizer in ('momentum', 'muon')
  scale = 1.0
  if config.hyperparameter_form == 'decoupled':
    scale = 1.0 / (1024 * (1 + 1 / (1 - group.momentum))) if uses_momentum else 1.0 / 1024
  peak = group.learning_rate * scale * group.lr_multiplier
  train_steps = int(round(group.train_epochs * steps_per_epoch))
  num_steps = (train_steps if group.schedule_over == 'train_epochs' and train_steps
               else config.num_train_steps)
  learning_rate = schedules.create(config, schedules.Span(
      peak=peak, num_steps=num_steps, batches_per_epoch=num_train_examples / global_batch_size))
  if group.optimizer == 'muon':
    tx = muon(learning_rate, group.momentum, group.nesterov, config.muon.ns_steps,
              tuple(config.muon.ns_coefficients), config.muon.eps, config.muon.renormalize)
  else:
    tx = optax.sgd(learning_rate, momentum=group.momentum if uses_momentum else None,
                   nesterov=group.nesterov and uses_momentum)
    if sweeps.enabled(group.weight_decay):  # a swept decay is on at every point (0: g += 0)
      if config.hyperparameter_form == 'pytorch':
        decay = group.weight_decay  # g += wd * p: PyTorch's SGD, optax.add_decayed_weights
      else:
        decay = group.weight_decay * scale * global_batch_size / peak
      tx = optax.chain(optax.add_decayed_weights(decay), tx)
  if train_steps:
    # Like a PyTorch parameter whose requires_grad is switched off (airbench's
    # whitening bias after whiten_bias_epochs): zero updates, the optimizer
    # state (momentum) frozen.
    tx = optax.transforms.conditionally_mask(tx, lambda count: count < train_steps)
  return tx, learning_rate


def create_optimizer(config: ml_collections.ConfigDict, num_train_examples: int,
                     global_batch_size: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(the optimizer of every parameter, the default group's learning rate); see above."""
  steps_per_epoch = num_train_examples // global_batch_size
  groups = _groups(config)
  built = {name: _group_optimizer(config, group, num_train_examples, global_batch_size,
                                  steps_per_epoch)
           for name, group in groups.items()}
  default_tx, default_learning_rate = built['default']
  if len(groups) == 1:
    return freezing.freeze_optimizer(default_tx, config.freeze), default_learning_rate
  tx = optax.multi_transform({name: tx for name, (tx, _) in built.items()},
                             lambda params: group_labels(config, params))
  return freezing.freeze_optimizer(tx, config.freeze), default_learning_rate


# ----------------------------------------------------------------------------
# The config fields of the optimizer.

OPTIMIZERS = ('sgd', 'momentum', 'muon', 'frozen')
HYPERPARAMETER_FORMS = ('plain', 'decoupled', 'pytorch')
# What a group of config.optimizer_groups may set.
GROUP_OPTION_FIELDS = ('params', 'optimizer', 'learning_rate', 'lr_multiplier', 'momentum',
                       'nesterov', 'weight_decay', 'train_epochs', 'schedule_over')
FIELDS = {
    'optimizer': spec.Field('sgd', spec.choice(OPTIMIZERS), 'of the parameters no group matches'),
    'learning_rate': spec.Field(0.1, spec.number(0.0), 'the peak, scaled by config.schedule'),
    'momentum': spec.Field(0.9, spec.number(0.0, below=1.0), 'of momentum and muon'),
    'nesterov': spec.Field(False, spec.flag(), 'Nesterov momentum'),
    'hyperparameter_form': spec.Field('plain', spec.choice(HYPERPARAMETER_FORMS), 'see above'),
    'weight_decay': spec.Field(0.0, spec.number(0.0), 'in the hyper-parameter form\'s units'),
    'schedule': spec.Field({'name': 'constant'}, lambda c, path: schedules.check(c),
                           'the learning rate\'s schedule: a name and its fields'),
    'optimizer_groups': spec.Field({}, lambda c, path: _check_groups(c), 'parameter groups'),
    'muon.ns_steps': spec.Field(3, spec.integer(1), 'Newton-Schulz iterations'),
    'muon.ns_coefficients': spec.Field((3.4445, -4.7750, 2.0315), spec.numbers(length=3),
                                    'their quintic\'s coefficients'),
    'muon.eps': spec.Field(1e-7, spec.number(above=0.0), 'added to the norm'),
    'muon.renormalize': spec.Field(True, spec.flag(), 'weights to norm sqrt(out) before each step'),
}


def _check_group_patterns(config: ml_collections.ConfigDict, paths: Sequence[str]) -> None:
  """Each parameter is in at most one optimizer group, and each group has a parameter."""
  labels = {}
  for path in paths:
    matches = [name for name, group in config.optimizer_groups.items()
               if any(fnmatch.fnmatchcase(path, pattern) for pattern in group.params)]
    if len(matches) > 1:
      raise UserError(f'Parameter {path} is in optimizer groups {matches}; make the groups\' '
                      'params patterns disjoint.')
    labels[path] = matches[0] if matches else 'default'
  for name, group in config.optimizer_groups.items():
    if name not in labels.values():
      raise UserError(f'config.optimizer_groups.{name} matches no parameter (patterns '
                      f'{list(group.params)}); the model has {list(paths)}.')


spec.declare(__name__, FIELDS, check_parameters=_check_group_patterns)


def _check_groups(c: spec.Checker) -> None:
  for name in c.config.optimizer_groups:
    _check_group(c, name)
  c.groups.add('optimizer_groups')


def _check_group(c: spec.Checker, name: str) -> None:
  group = c.config.optimizer_groups[name]
  prefix = f'optimizer_groups.{name}'
  if name == 'default':
    raise UserError('config.optimizer_groups.default is reserved for the parameters no group '
                    'matches (they take the top-level fields); rename that group.')
  if not isinstance(group, ml_collections.ConfigDict):
    raise UserError(f'config.{prefix} is {group!r}; a group is a dict of '
                    f'{list(GROUP_OPTION_FIELDS)}.')
  unknown = sorted(set(group) - set(GROUP_OPTION_FIELDS))
  if unknown:
    raise UserError(f'config.{prefix} has unknown fields {unknown}; a group takes '
                    f'{list(GROUP_OPTION_FIELDS)}.')
  if not group.get('params'):
    raise UserError(f'config.{prefix}.params is empty; give glob patterns of parameter paths '
                    'such as "*norm*/bias".')
  c.sequence(f'{prefix}.params', str, min_length=1)
  optimizer = group.get('optimizer', c.config.optimizer)
  if optimizer not in OPTIMIZERS:
    raise UserError(f'Unknown optimizer {optimizer!r} (group {name}); use one of '
                    f'{list(OPTIMIZERS)}.')
  for field, limits in (('learning_rate', dict(minimum=0.0)), ('lr_multiplier', dict(above=0.0)),
                        ('momentum', dict(minimum=0.0, below=1.0)),
                        ('weight_decay', dict(minimum=0.0)), ('train_epochs', dict(minimum=0.0))):
    if field in group:
      c.number(f'{prefix}.{field}', **limits)
  if 'nesterov' in group:
    c.flag(f'{prefix}.nesterov')
  if group.get('schedule_over', 'run') not in ('run', 'train_epochs'):
    raise UserError(f'config.{prefix}.schedule_over is {group.schedule_over!r}; use run or '
                    'train_epochs.')
  if optimizer == 'muon' and group.get('weight_decay', c.config.weight_decay):
    raise UserError(f'Group {name} uses muon, which has no weight decay; set its weight_decay '
                    'to 0.')
