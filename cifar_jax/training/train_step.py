"""The pure training step, and the device's share of a call of several steps.

`train_step` is a pure function of (state, batch) -> (state, metrics):
softmax cross-entropy (mean over the batch, or summed as airbench does) plus
the tutorial's L2 penalty (0.004 * l2_loss of the local3 and local4 kernels),
gradients combined over all devices (`lax.pmean` of means, `lax.psum` of
sums: the gradient of the global batch's loss either way), an optax update,
the model's new BatchNorm statistics, the EMA of the parameters and airbench's
lookahead. `device_steps` runs n of them on one device's part of n batches,
gathering and augmenting each batch on the device first; `builder.build` maps
it over the devices (`parallel.pmap`).

The step reads no config: it is built from `StepPieces` (optimizer, learning
rate, `StepOptions`), which `builder` makes from the config once -- or, in a
sweep, inside the step from each run's swept values (`PiecesOf`) -- and runs
as `StepPlan` says. Single runs, replicas and sweeps take the same path
(`run_steps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax.core import fields as spec
from cifar_jax.core import parallel, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations, input_pipeline
from cifar_jax.training import freezing
from cifar_jax.training import train_state as train_state_lib
from cifar_jax.training.train_state import TrainState


def l2_penalty(params: Any, modules: tuple[str, ...], weight: float) -> jax.Array:
  """weight * sum over `modules` of tf.nn.l2_loss(kernel) = sum(w^2) / 2."""
  return weight * sum(0.5 * jnp.sum(jnp.square(params[m]['kernel'])) for m in modules)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                       reduction: str = 'mean') -> jax.Array:
  """Softmax cross-entropy over the batch (mean or sum), with optional label smoothing.

  Label smoothing is PyTorch's and optax's: targets (1 - s) one_hot + s / K.
  """
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if sweeps.enabled(label_smoothing):  # a swept 0 smooths by 0: the targets unchanged
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  return jnp.sum(per_example) if reduction == 'sum' else jnp.mean(per_example)


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """The loss's config fields: label smoothing, reduction, the L2 penalty and its modules."""

  label_smoothing: float = 0.0
  reduction: str = 'mean'  # mean | sum over the global batch
  l2_penalty: float = 0.0
  l2_penalty_modules: tuple[str, ...] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> LossOptions:
    return cls(config.label_smoothing, config.loss_reduction, config.l2_penalty,
               tuple(config.l2_penalty_modules))


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """Everything a training step needs of the config."""

  loss: LossOptions
  ema: train_state_lib.EmaOptions
  lookahead: train_state_lib.LookaheadOptions
  augmentation: augmentations.Augmentation
  frozen: tuple[str, ...] = ()  # config.freeze: what keeps its statistics and EMA too
  frozen_batch_norm: bool = False  # config.freeze_batch_norm: running statistics, kept

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> StepOptions:
    return cls(loss=LossOptions.from_config(config),
               ema=train_state_lib.EmaOptions.from_config(config),
               lookahead=train_state_lib.LookaheadOptions.from_config(config),
               augmentation=augmentations.Augmentation.from_config(config, steps_per_epoch),
               frozen=tuple(config.freeze), frozen_batch_norm=config.freeze_batch_norm)


class StepPieces(NamedTuple):
  """What one run's step is built from: its optimizer, its (default group's) learning rate, and
  its options. `builder` makes them from the config (a sweep's run: from its values)."""

  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  options: StepOptions


# A run's swept values ({field: scalar}; {} outside a sweep) -> its step's pieces.
PiecesOf = Callable[[dict[str, jax.Array]], StepPieces]


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               apply_fn: Callable[..., jax.Array], pieces: StepPieces
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One synchronous SGD step on this device's part of the global batch.

  Must run under `parallel.pmap` (it combines over `parallel.AXIS_NAME`;
  BatchNorm layers average their statistics over it). The reported loss and
  cross-entropy are per example whatever the reduction.
  """
  tx, learning_rate_fn, options = pieces
  loss_options = options.loss
  summed = loss_options.reduction == 'sum'

  def loss_fn(params):
    with freezing.running_statistics(options.frozen_batch_norm):
      logits, model_state = apply_fn(state.variables(params), batch['image'], train=True,
                                     mutable=['batch_stats'])
    cross_entropy = cross_entropy_loss(logits, batch['label'], loss_options.label_smoothing,
                                       loss_options.reduction)
    penalty = l2_penalty(params, loss_options.l2_penalty_modules, loss_options.l2_penalty)
    return cross_entropy + penalty, (cross_entropy, logits, model_state)

  (loss, (cross_entropy, logits, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = (jax.lax.psum if summed else jax.lax.pmean)(grads, parallel.AXIS_NAME)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  ema_params = train_state_lib.update_ema(state.ema_params, params, step, options.ema)
  batch_stats = model_state.get('batch_stats', state.batch_stats)
  new_state = state.replace(
      step=step, params=params, opt_state=opt_state,
      ema_params=freezing.keep_frozen(ema_params, state.ema_params, options.frozen),
      batch_stats=freezing.keep_frozen(batch_stats, state.batch_stats, options.frozen))
  new_state = train_state_lib.apply_lookahead(new_state, options.lookahead)
  batch_size = batch['label'].shape[0]
  per_example = (lambda x: x / batch_size) if summed else (lambda x: x)  # noqa: E731
  metrics = {
      'loss': per_example(loss),
      'cross_entropy': per_example(cross_entropy),
      'precision': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      'learning_rate': learning_rate_fn(state.step),
  }
  metrics = jax.lax.pmean(metrics, parallel.AXIS_NAME)
  return new_state, metrics


def _augmented_step(state: TrainState, images: jax.Array, labels: jax.Array,
                    indices: jax.Array, *, apply_fn: Callable[..., jax.Array],
                    pieces: StepPieces) -> tuple[TrainState, dict[str, jax.Array]]:
  """Augment this device's gathered examples (uint8 `images` at `indices`), then `train_step`."""
  # Keyed by the example's index, not the device, so that any number of
  # devices sees the same augmented global batch.
  batch = {'image': augmentations.augment_batch(images, indices, state.rng, state.step,
                                                pieces.options.augmentation),
           'label': labels}
  return train_step(state, batch, apply_fn=apply_fn, pieces=pieces)


def map_replicas(fn: Callable[..., Any], execution: str, unroll: bool) -> Callable[..., Any]:
  """`fn(*per_replica, *shared)` of every replica: `per_replica` leaves lead with the replica axis.

  ``vmap`` batches the replicas (a convolution over batched weights becomes a
  grouped one); ``loop`` runs them one after the other (a scan, unrolled where
  `unroll`). Each replica's collectives (gradient pmean, BatchNorm statistics)
  stay its own. Outputs lead with the replica axis.
  """
  def mapped(per_replica: tuple, *shared):
    one = lambda xs: fn(*xs, *shared)  # noqa: E731
    if execution == 'vmap':
      return jax.vmap(one)(per_replica)
    return jax.lax.scan(lambda carry, xs: (carry, one(xs)), None, per_replica,
                        unroll=unroll)[1]
  return mapped


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """How a device call runs its steps: `runs` (None: one run, no run axis; else the run axis's
  `execution`, vmap or loop), `scan` (several steps in a `lax.scan`, `unroll`ed on CPUs) and
  `gathered` (the call's rows come gathered on the host rather than as the split)."""

  scan: bool
  unroll: bool
  gathered: bool = False
  runs: int | None = None
  execution: str = 'loop'


def run_steps(state: TrainState, data: input_pipeline.DeviceData, indices: jax.Array,
              values: dict[str, jax.Array], *, apply_fn: Callable[..., jax.Array],
              pieces_of: PiecesOf, plan: StepPlan) -> tuple[TrainState, dict[str, jax.Array]]:
  """This device's share of a call: every run's steps, each from `pieces_of(its values)`.

  One run (`plan.runs` None): `indices` [n, B], metrics [n]. Several runs --
  replicas and/or a sweep's points -- lead every state leaf, `indices`,
  gathered rows and `values` ({field: [R]}) with the run axis, and the metrics
  come back [R, n]; a split on the device is shared by the runs.
  """
  def steps(state, indices, run_values, data):
    return device_steps(state, data, indices, apply_fn=apply_fn, pieces=pieces_of(run_values),
                        plan=plan)
  if plan.runs is None:
    return steps(state, indices, values, data)
  mapped = map_replicas(steps, plan.execution, plan.unroll)
  if plan.gathered:
    return mapped((state, indices, values, data))
  return mapped((state, indices, values), data)


def device_steps(state: TrainState, data: input_pipeline.DeviceData, indices: jax.Array, *,
                 apply_fn: Callable[..., jax.Array], pieces: StepPieces, plan: StepPlan
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One training step for each row of this device's `indices` [n, B]; metrics stacked [n].

  `data` is the split on this device, or (`plan.gathered`: host placement) the
  rows of `indices` themselves, [n, B, ...]. With `plan.scan`, a `lax.scan`
  over the rows (every step's examples gathered first; `unroll`: as
  straight-line code); without, the one row of a single step with no loop.
  """
  step = functools.partial(_augmented_step, apply_fn=apply_fn, pieces=pieces)
  images, labels = ((data.images, data.labels) if plan.gathered
                    else (data.images[indices], data.labels[indices]))
  if not plan.scan:
    state, metrics = step(state, images[0], labels[0], indices[0])
    # asarray: a metric can be a Python number (a constant schedule's learning rate).
    return state, jax.tree.map(lambda x: jnp.asarray(x)[None], metrics)
  return jax.lax.scan(lambda carry, xs: step(carry, *xs), state, (images, labels, indices),
                      unroll=plan.unroll)


# ----------------------------------------------------------------------------
# The config fields of the loss.

LOSS_REDUCTIONS = ('mean', 'sum')
FIELDS = {
    'label_smoothing': spec.Field(0.0, spec.number(0.0, below=1.0), 'PyTorch\'s and optax\'s'),
    'loss_reduction': spec.Field('mean', spec.choice(LOSS_REDUCTIONS), 'over the global batch'),
    'l2_penalty': spec.Field(0.0, spec.number(0.0), "the tutorial's L2 term in the loss"),
    'l2_penalty_modules': spec.Field((), spec.strings(), 'the modules whose kernels it covers'),
}


def _check_l2_modules(config: ml_collections.ConfigDict, paths: Sequence[str]) -> None:
  """Each of config.l2_penalty_modules has a kernel among the model's parameters."""
  for module in config.l2_penalty_modules:
    if f'{module}/kernel' not in paths:
      modules = sorted({path.rsplit('/', 1)[0] for path in paths})
      raise UserError(f'config.l2_penalty_modules names {module!r}, which is no module with a '
                      f'kernel; the model has {modules}.')


spec.declare(__name__, FIELDS, check_parameters=_check_l2_modules)
