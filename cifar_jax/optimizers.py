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

from cifar_jax import models, sweeps

# ----------------------------------------------------------------------------
# Learning-rate schedules.


def create_learning_rate_fn(config: ml_collections.ConfigDict, num_train_examples: int,
                            global_batch_size: int, peak: float | None = None,
                            num_steps: int | None = None) -> optax.Schedule:
  """`config.schedule` scaling the peak learning rate, in optimizer steps.

  `peak` (default `config.learning_rate`) and `num_steps` (default
  `config.num_train_steps`) let a parameter group follow the same shape with
  its own learning rate or length.
  """
  peak = config.learning_rate if peak is None else peak
  num_steps = config.num_train_steps if num_steps is None else num_steps
  batches_per_epoch = num_train_examples / global_batch_size  # a float, as in the tutorial
  schedule = config.schedule
  if schedule.name == 'constant':
    return optax.constant_schedule(peak)
  if schedule.name == 'staircase_exponential':
    return staircase_exponential(peak, max(1, int(batches_per_epoch * schedule.epochs_per_decay)),
                                 schedule.decay_factor)
  if schedule.name == 'warmup_cosine':
    warmup_steps = int(batches_per_epoch * schedule.warmup_epochs)
    # The shape at peak 1, scaled: the peak may be a swept value (an array in the step), which
    # optax's schedule would compare with 0 in Python.
    shape = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=1.0,
        warmup_steps=warmup_steps,
        decay_steps=max(num_steps, warmup_steps + 1),
        end_value=0.0,
    )
    return lambda count: peak * shape(count)
  if schedule.name == 'piecewise_constant':
    return piecewise_constant(peak, [int(batches_per_epoch * epoch)
                                     for epoch in schedule.boundaries_epochs],
                              schedule.decay_factor)
  return linear_warmup_decay(peak, num_steps, schedule.warmup_fraction, schedule.start_scale,
                             schedule.end_scale)


def staircase_exponential(peak: float, transition_steps: int, decay_factor: float
                          ) -> optax.Schedule:
  """peak x decay_factor ** floor(count / transition_steps): the tutorial's staircase decay.

  optax's `exponential_decay(..., staircase=True)`, written out so that the
  factor may be a swept value (optax checks it in Python).
  """
  def schedule(count):
    decays = jnp.floor(jnp.asarray(count, jnp.float32) / transition_steps)
    return peak * jnp.power(jnp.asarray(decay_factor, jnp.float32), decays)

  return schedule


def piecewise_constant(peak: float, boundary_steps: Sequence[int], decay_factor: float
                       ) -> optax.Schedule:
  """peak x decay_factor ** (boundaries reached): PyTorch's MultiStepLR, in steps.

  The step that starts an epoch in `boundaries_epochs` already has the lower
  rate, as the first step of that epoch has under MultiStepLR (optax's
  `piecewise_constant_schedule` lowers it one step later).
  """
  boundaries = jnp.asarray(boundary_steps, jnp.int32)

  def schedule(count):
    reached = jnp.sum(jnp.asarray(count, jnp.int32) >= boundaries)
    return peak * jnp.power(jnp.asarray(decay_factor, jnp.float32), reached.astype(jnp.float32))

  return schedule


def linear_warmup_decay(peak: float, num_steps: int, warmup_fraction: float,
                        start_scale: float, end_scale: float) -> optax.Schedule:
  """airbench's triangle: start_scale -> 1 over int(warmup_fraction * num_steps), -> end_scale.

  In units of `peak`; at step num_steps it reaches end_scale (airbench94:
  0.2, 23%, 0.07; airbench94_muon: no warm-up, to 0).
  """
  warmup_steps = int(num_steps * warmup_fraction)

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    warming = start_scale + (1.0 - start_scale) * count / max(warmup_steps, 1)
    decaying = 1.0 + (end_scale - 1.0) * (count - warmup_steps) / max(num_steps - warmup_steps, 1)
    return peak * jnp.where(count < warmup_steps, warming, decaying)

  return schedule


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
  learning_rate = create_learning_rate_fn(config, num_train_examples, global_batch_size,
                                          peak=peak, num_steps=num_steps)
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
    return default_tx, default_learning_rate
  tx = optax.multi_transform({name: tx for name, (tx, _) in built.items()},
                             lambda params: group_labels(config, params))
  return tx, default_learning_rate
