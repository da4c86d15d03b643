"""Learning-rate schedules, registered by name with their fields (`config.schedule`).

`config.schedule.name` picks one of `SCHEDULES` (or code outside the package as
'package.module:Name'); the other fields of `config.schedule` are that schedule's own,
declared where it is registered. A schedule is a function

  schedule(settings: ConfigDict, span: Span) -> optax.Schedule

of its settings (`config.schedule`: the values of the fields it declares) and the span it
scales: the peak learning rate, the optimizer steps it runs
over and the (float) batches per epoch that epochs-based fields convert with. It returns the
learning rate at an optimizer step. The peak may be a swept value (an array in the step):
write the schedule with jnp, not Python comparisons of it.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import jax.numpy as jnp
import ml_collections
import optax

from cifar_jax.core import fields as spec
from cifar_jax.core.errors import UserError
from cifar_jax.core.registry import Registry

SCHEDULES = Registry('schedule', 'config.schedule.name',
                     'docs/development.md, "Adding a schedule"')


@dataclasses.dataclass(frozen=True)
class Span:
  """What a schedule scales: `peak` learning rate over `num_steps`, `batches_per_epoch` (a float,
  as in the tutorial) for fields given in epochs."""

  peak: float
  num_steps: int
  batches_per_epoch: float


def create(config: ml_collections.ConfigDict, span: Span) -> optax.Schedule:
  """`config.schedule` over `span`."""
  return SCHEDULES.get(config.schedule.name).target(config.schedule, span)


def of_config(config: ml_collections.ConfigDict, num_train_examples: int,
              global_batch_size: int) -> optax.Schedule:
  """`config.schedule` at `config.learning_rate` over `config.num_train_steps`."""
  return create(config, Span(config.learning_rate, config.num_train_steps,
                             num_train_examples / global_batch_size))


def check(c: spec.Checker) -> None:
  """config.schedule: a known name and exactly its fields, each valid."""
  name = c.text('schedule.name')
  entry = SCHEDULES.get(name)
  given = sorted(k for k in c.config.schedule if k != 'name')
  if given != sorted(entry.fields):
    raise UserError(f'config.schedule {name!r} takes the fields {list(entry.fields)}, not '
                    f'{given}; set config.schedule in the config file (see experiments/).')
  c.groups.add('schedule')
  spec.check_section(c, 'schedule', entry.fields)


def upgrade(saved: dict) -> None:
  """A saved config's schedule with exactly its schedule's fields: those it gained since at
  their `Field.before`, and without those a config from before the schedule group had for
  every schedule (lr_decay_factor beside a cosine schedule)."""
  schedule = saved.get('schedule')
  if isinstance(schedule, dict) and schedule.get('name') in SCHEDULES:
    fields = SCHEDULES.get(schedule['name']).fields
    for name in set(schedule) - set(fields) - {'name'}:
      del schedule[name]
    spec.fill_added(saved, 'schedule', fields)


# config.schedule itself is the optimizer's field (`optimizers.FIELDS`); its group follows the name.
spec.declare(__name__, {}, upgrade=upgrade)


# ----------------------------------------------------------------------------
# The registered schedules.


@SCHEDULES.register('constant')
def constant(settings: ml_collections.ConfigDict, span: Span) -> optax.Schedule:
  """The peak learning rate at every step."""
  del settings
  return optax.constant_schedule(span.peak)


def _check_boundaries(c: spec.Checker, path: str) -> None:
  boundaries = c.sequence(path, (int, float), min_length=1)
  pairs = zip(boundaries, boundaries[1:], strict=False)
  if min(boundaries) < 0 or any(earlier >= later for earlier, later in pairs):
    raise UserError(f'config.{path} is {boundaries}; give the epochs where the learning rate '
                    'drops, increasing and not negative.')


DECAY_FACTOR = spec.Field(0.1, spec.number(above=0.0), 'the factor of each drop')


@SCHEDULES.register('staircase_exponential', fields={
    'decay_factor': DECAY_FACTOR,
    'epochs_per_decay': spec.Field(350.0, spec.number(above=0.0), 'epochs between drops')})
def staircase_exponential_schedule(settings: ml_collections.ConfigDict, span: Span
                                   ) -> optax.Schedule:
  """The tutorial's: multiplied by decay_factor every epochs_per_decay epochs."""
  return staircase_exponential(span.peak, max(1, int(span.batches_per_epoch
                                                     * settings.epochs_per_decay)),
                               settings.decay_factor)


@SCHEDULES.register('warmup_cosine', fields={
    'warmup_epochs': spec.Field(0.0, spec.number(0.0), 'linear warm-up from 0, in epochs')})
def warmup_cosine(settings: ml_collections.ConfigDict, span: Span) -> optax.Schedule:
  """Linear warm-up from 0, then a cosine to 0 at the last step (the ResNet recipes)."""
  warmup_steps = int(span.batches_per_epoch * settings.warmup_epochs)
  # The shape at peak 1, scaled: the peak may be a swept value (an array in the step), which
  # optax's schedule would compare with 0 in Python.
  shape = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=1.0,
      warmup_steps=warmup_steps,
      decay_steps=max(span.num_steps, warmup_steps + 1),
      end_value=0.0,
  )
  peak = span.peak
  return lambda count: peak * shape(count)


@SCHEDULES.register('linear_warmup_decay', fields={
    'warmup_fraction': spec.Field(0.0, spec.number(0.0, 1.0), 'share of the steps warming up'),
    'start_scale': spec.Field(1.0, spec.number(0.0), 'the first step\'s share of the peak'),
    'end_scale': spec.Field(0.0, spec.number(0.0), 'the last step\'s share of the peak')})
def linear_warmup_decay_schedule(settings: ml_collections.ConfigDict, span: Span
                                 ) -> optax.Schedule:
  """airbench's triangle: start_scale -> 1 over the warm-up, -> end_scale at the last step."""
  return linear_warmup_decay(span.peak, span.num_steps, settings.warmup_fraction,
                             settings.start_scale, settings.end_scale)


@SCHEDULES.register('piecewise_constant', fields={
    'boundaries_epochs': spec.Field((100.0, 150.0), _check_boundaries,
                                 'epochs where the rate drops'),
    'decay_factor': DECAY_FACTOR})
def piecewise_constant_schedule(settings: ml_collections.ConfigDict, span: Span
                                ) -> optax.Schedule:
  """PyTorch's MultiStepLR: multiplied by decay_factor at each of boundaries_epochs."""
  return piecewise_constant(span.peak, [int(span.batches_per_epoch * epoch)
                                        for epoch in settings.boundaries_epochs],
                            settings.decay_factor)


# ----------------------------------------------------------------------------
# The shapes, as functions of numbers.


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
