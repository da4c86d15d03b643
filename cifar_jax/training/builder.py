"""The one builder: model, optimizer, schedule, options, state and the mapped steps of a config.

  setup = builder.build(config, train_split, devices)

is what the trainer, the benchmark and the notebook API train with; the
evaluator and `experiment.load_checkpoint` use `build(config,
num_classes=...)` for the state's shapes, the target a checkpoint is restored
into. Whatever model the config names goes through the same state, step,
checkpoints and evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import functools
import math
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax import models
from cifar_jax.core import parallel, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets, input_pipeline
from cifar_jax.training import optimizers, placement, train_step
from cifar_jax.training.train_state import TrainState, create_train_state, stack_replicas

ParallelSteps = Callable[[TrainState, input_pipeline.DeviceData, jax.Array],
                         tuple[TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run is built from.

  `state` is the fresh state on the host (data-dependent initialisation
  done), or only its shapes and dtypes when built without a training split.
  `parallel_steps(state, data, indices)` runs the training steps of indices
  [devices, n, B] (`batches.indices(step, n)`) in one call on every device;
  the state and data carry a leading device axis (`parallel.replicate`) and
  the metrics come back [devices, n]. It exists when built with devices.
  With several runs -- `config.num_replicas` R > 1 and/or a sweep of P points
  (`sweeps`), P x R runs -- every state leaf has a run axis after the device
  axis, indices are [devices, runs, n, B] and metrics [devices, runs, n].
  `run_values` holds a sweep's values of every run ({field: float32 [runs]};
  {} otherwise) and `pieces_of(values)` builds one run's optimizer, schedule
  and step options (`train_step.StepPieces`) from them, inside the step;
  `pieces` are run 0's (every run's outside a sweep).
  `placement` (device or host: `placement.choose`) says whether `data` is the
  split on every device or the rows of `indices` gathered on the host;
  `feed(split)` gives the matching source of each call's data and indices.
  """

  config: ml_collections.ConfigDict  # what was built: num_train_steps from the epochs, if given
  model: nn.Module
  pieces: train_step.StepPieces  # its learning_rate_fn: the default group's (the log's)
  pieces_of: train_step.PiecesOf
  batches: input_pipeline.BatchSchedule | None
  state: TrainState
  parallel_steps: ParallelSteps | None = None
  placement: str = 'device'
  devices: tuple[jax.Device, ...] = ()
  run_values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def feed(self, split: datasets.Split) -> placement.DeviceFeed | placement.HostFeed:
    """Each call's data and indices of `split` (the training split), as `placement` says."""
    return placement.create_feed(self.placement, split, self.devices, self.batches)


def build(config: ml_collections.ConfigDict, train_split: datasets.Split | None = None,
          devices: Sequence[jax.Device] | None = None, *, num_classes: int | None = None,
          image_shape: Sequence[int] | None = None) -> Setup:
  """Everything `config` trains with; see `Setup`. `config` is valid (`validation.validate`).

  Without `train_split`, `num_classes` gives the head's size, `image_shape`
  (H, W, C) the training images' (default: what the config fixes, else
  32x32, with config.dataset.channels or 3), and `state` holds shapes only
  (the optimizer is built for a one-example epoch: its state has the same
  shapes).
  """
  config, batches, (num_examples, global_batch, steps_per_epoch) = _batches(
      config, train_split, len(devices) if devices else 1)
  if train_split is not None:
    image_shape, num_classes = train_split.image_shape, train_split.num_classes
  elif image_shape is None:
    image_shape = (*(datasets.configured_image_size(config) or (32, 32)),
                   config.dataset.channels or 3)
  model = models.create_model(config.model, num_classes, in_channels=image_shape[-1])
  run_values = sweeps.run_values(config)
  pieces_of = functools.partial(_step_pieces, config, num_examples, global_batch,
                                steps_per_epoch)
  # A sweep's optimizer has the structure of every point's (`sweeps.enabled`): run 0's values
  # as arrays build the state's optimizer state.
  pieces = pieces_of({path: jnp.asarray(values[0]) for path, values in run_values.items()})
  if train_split is not None:
    pieces.options.augmentation.check(train_split.image_shape, 'the training images of ' +
                               datasets.split_label(config.dataset, config.dataset.train_split))
  make_state = functools.partial(
      create_train_state, model, pieces.tx, with_lookahead=config.lookahead.every_steps > 0,
      input_shape=input_pipeline.model_input_shape(image_shape, config.crop_size))
  # Run r = p * R + s is point p of a sweep with seed + s: its initialisation, whitening
  # images, order, augmentation.
  seeds = sweeps.run_seeds(config)
  try:
    if train_split is None:
      state = jax.eval_shape(lambda: stack_replicas([make_state(seed=s) for s in seeds]))
    else:
      uses_data = hasattr(model, 'data_init')
      state = stack_replicas([make_state(seed=s, init_images=input_pipeline.init_images(
          train_split, config, s) if uses_data else None) for s in seeds])
  except (ArithmeticError, ValueError, TypeError) as e:
    _raise_if_too_small(config, model, make_state.keywords['input_shape'], e)
    raise
  if models.has_empty_parameters(state.params):
    _raise_if_too_small(config, model, make_state.keywords['input_shape'])
  where = (placement.choose(config.dataset.placement, train_split, devices)
           if train_split is not None and devices else 'device')
  steps = (_parallel_steps(config, model, pieces_of, devices, gathered=where == 'host',
                           run_values=run_values)
           if devices else None)
  return Setup(config=config, model=model, pieces=pieces, pieces_of=pieces_of, batches=batches,
               state=state, parallel_steps=steps, placement=where,
               devices=tuple(devices or ()), run_values=run_values)


def _raise_if_too_small(config: ml_collections.ConfigDict, model: nn.Module,
                        input_shape: Sequence[int], error: Exception | None = None) -> None:
  """A `UserError` naming the model's smallest side if `input_shape` is below it (the network
  pools it to nothing: its initialisation fails); returns if the size is not the cause."""
  height, width, channels = input_shape
  smallest = models.minimum_input_side(model, channels)
  if smallest is None or min(height, width) >= smallest:
    return
  if config.crop_size:
    remedy = (f'config.crop_size={smallest} or larger (and config.dataset.image_size at least as '
              'large, which resizes the images when they are loaded)')
  else:
    remedy = (f'config.dataset.image_size={smallest} or larger, which resizes the images when '
              'they are loaded')
  raise UserError(
      f'The model\'s input is {height}x{width} pixels, but {config.model.name} pools images '
      f'smaller than {smallest}x{smallest} to nothing; set {remedy}.') from error


def _batches(config: ml_collections.ConfigDict, train_split: datasets.Split | None,
             num_devices: int
             ) -> tuple[ml_collections.ConfigDict, input_pipeline.BatchSchedule | None,
                        tuple[int, int, int]]:
  """`config` with its epochs as steps, the batch schedule and the schedule's sizes.

  The sizes are (examples, global batch, steps per epoch), which the
  optimizer's schedule needs; without `train_split` there is no schedule and
  they are (1, 1, 1): the state then holds shapes only.
  """
  if train_split is None:
    return config, None, (1, 1, 1)
  per_device = _fitted_batch(config, train_split.num_examples,
                             num_devices * jax.process_count())
  batches = input_pipeline.BatchSchedule(
      num_examples=train_split.num_examples, per_device_batch_size=per_device,
      num_local_devices=num_devices, seed=config.seed, num_processes=jax.process_count(),
      process_index=jax.process_index(), num_replicas=sweeps.num_runs(config),
      replica_seeds=tuple(sweeps.run_seeds(config)))
  if batches.steps_per_epoch < 1:
    raise UserError(
        f'The training split has {train_split.num_examples} examples, fewer than one global '
        f'batch ({batches.global_batch_size}); lower {_batch_field(config)}.')
  return (steps_from_epochs(config, batches.steps_per_epoch), batches,
          (train_split.num_examples, batches.global_batch_size, batches.steps_per_epoch))


def _fitted_batch(config: ml_collections.ConfigDict, num_examples: int, num_devices: int
                  ) -> int:
  """The per-device batch: the config's, or smaller where the split gives an epoch fewer than
  `config.min_steps_per_epoch` batches of it (said in one warning line)."""
  per_device = input_pipeline.per_device_batch(config.batch_size, config.per_device_batch_size,
                                               num_devices)
  wanted = config.min_steps_per_epoch
  if not wanted or num_examples // (per_device * num_devices) >= wanted:
    return per_device
  fitted = max(1, num_examples // (wanted * num_devices))
  logging.warning('The training split has %d examples: a global batch of %d gives %d step(s) '
                  'per epoch, fewer than config.min_steps_per_epoch=%d; training with a global '
                  'batch of %d (%d per device) instead.', num_examples, per_device * num_devices,
                  num_examples // (per_device * num_devices), wanted, fitted * num_devices,
                  fitted)
  return fitted


def _step_pieces(config: ml_collections.ConfigDict, num_examples: int, global_batch: int,
                 steps_per_epoch: int, values: dict[str, Any]) -> train_step.StepPieces:
  """The optimizer, schedule and step options of the run whose swept fields are `values`."""
  point = sweeps.with_values(config, values) if values else config
  tx, learning_rate_fn = optimizers.create_optimizer(point, num_examples, global_batch)
  return train_step.StepPieces(tx, learning_rate_fn,
                               train_step.StepOptions.from_config(point, steps_per_epoch))


def _batch_field(config: ml_collections.ConfigDict) -> str:
  """The field that gives this config's batch."""
  return 'config.batch_size' if config.batch_size else 'config.per_device_batch_size'


def respect_given_fields(config: ml_collections.ConfigDict, given: Iterable[str]) -> None:
  """What the user gave (`given`: dotted fields from the command line or the notebook's
  overrides) is never silently shadowed by another field: the run length, and top-level
  optimizer fields that groups override (`optimizers.warn_given_fields_groups_keep`)."""
  given = set(given)
  given_length_wins(config, given)
  given_batch_wins(config, given)
  optimizers.warn_given_fields_groups_keep(config, given)


def given_batch_wins(config: ml_collections.ConfigDict, given: Iterable[str]) -> None:
  """A batch the user gave is never shadowed by the recipe's other batch field.

  A config gives its batch one way: the global `batch_size` (the recipe's on any number of
  devices) or the tutorial's `per_device_batch_size`. The one given wins and the recipe's other
  is set to 0; a per-device batch given over a recipe's global one (a global batch that now
  follows the device count) says so in one warning line.
  """
  given = set(given)
  if 'per_device_batch_size' in given and 'batch_size' not in given and config.batch_size:
    logging.warning('config.per_device_batch_size=%d, as given, decides the batch: the global '
                    'batch is %d x the devices, not the recipe\'s config.batch_size=%d (set '
                    'aside: 0).', config.per_device_batch_size, config.per_device_batch_size,
                    config.batch_size)
    config.batch_size = 0
  elif 'batch_size' in given and 'per_device_batch_size' not in given and config.batch_size:
    config.per_device_batch_size = 0


def given_length_wins(config: ml_collections.ConfigDict, given: Iterable[str]) -> None:
  """A run length the user gave (`given`: the dotted fields set on the command line or in the
  notebook's overrides) is never shadowed by the recipe's other length field.

  `num_train_epochs` > 0 decides the length over `num_train_steps` (`steps_from_epochs`): a
  recipe's 200 epochs would silently outlast a `--config.num_train_steps=20`. Given steps alone
  set the recipe's epochs to 0, said in one warning line; both given, and both set, is refused.
  """
  given = set(given)
  if 'num_train_steps' not in given or not config.num_train_epochs:
    return
  if 'num_train_epochs' in given:
    raise UserError(
        f'config.num_train_steps={config.num_train_steps} and config.num_train_epochs='
        f'{config.num_train_epochs:g} both give the run\'s length; set one (steps: '
        'config.num_train_epochs=0).')
  logging.warning('config.num_train_steps=%d, as given, decides the run\'s length; the '
                  'recipe\'s config.num_train_epochs=%g is set aside (0).',
                  config.num_train_steps, config.num_train_epochs)
  config.num_train_epochs = 0.0


def steps_from_epochs(config: ml_collections.ConfigDict, steps_per_epoch: int
                      ) -> ml_collections.ConfigDict:
  """`config` with num_train_steps = ceil(num_train_epochs x steps per epoch), where epochs > 0.

  Only the data reveal an epoch's steps (a folder's size, the devices'
  batch): the recipe that says "20 epochs" trains 20 epochs on any folder.
  The config saved with the checkpoints holds the steps, which is what the
  evaluator and a resume read.
  """
  if not config.num_train_epochs:
    return config
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.num_train_steps = max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
  return resolved


def _parallel_steps(config: ml_collections.ConfigDict, model: nn.Module,
                    pieces_of: train_step.PiecesOf, devices: Sequence[jax.Device],
                    gathered: bool, run_values: dict[str, np.ndarray]) -> ParallelSteps:
  """`train_step.run_steps` mapped over `devices`, with every run's values as its argument."""
  runs = sweeps.num_runs(config)
  plan = train_step.StepPlan(
      # Several steps per call are a lax.scan; XLA's CPU backend runs a loop body several
      # times slower than the same step as straight-line code, so on CPUs it is unrolled.
      scan=config.steps_per_call > 1, unroll=devices[0].platform == 'cpu', gathered=gathered,
      runs=runs if runs > 1 else None, execution=config.replica_execution)
  steps = functools.partial(train_step.run_steps, apply_fn=model.apply, pieces_of=pieces_of,
                            plan=plan)
  what, lower = ((f'{sweeps.num_points(config)} sweep points x {config.num_replicas} seeds',
                  'config.num_replicas, the sweep\'s points') if run_values
                 else (f'config.num_replicas={runs}', 'config.num_replicas'))
  batch = _batch_field(config)
  memory = (f'{what} runs x {batch}={config[batch.removeprefix("config.")]} do not fit the '
            f'memory of a device; lower {lower} or {batch}')
  mapped = parallel.pmap(steps, devices, donate_argnums=(0,), out_of_memory=memory)
  return functools.partial(_with_values, mapped, parallel.replicate(run_values, devices))


def _with_values(mapped: Callable[..., Any], device_values: dict[str, jax.Array],
                 state: TrainState, data: input_pipeline.DeviceData, indices: jax.Array
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
  """The mapped steps with every run's swept values (a sweep's; else {}) as their last
  argument."""
  return mapped(state, data, indices, device_values)
