"""The one builder: model, optimizer, schedule, options, state and the mapped steps of a config.

  setup = builder.build(config, train_split, devices)

is what the trainer, the benchmark and the notebook API train with; the
evaluator and `experiment.load_checkpoint` use `build(config,
num_classes=...)` for the state's shapes, the target a checkpoint is restored
into. Whatever model the config names goes through the same state, step,
checkpoints and evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import ml_collections
import optax

from cifar_jax import (
  datasets,
  input_pipeline,
  models,
  optimizers,
  parallel,
  placement,
  train_step,
  validation,
)
from cifar_jax.errors import UserError
from cifar_jax.train_state import TrainState, create_train_state, stack_replicas

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
  With `config.num_replicas` R > 1 every state leaf has a replica axis after
  the device axis, indices are [devices, R, n, B] and metrics [devices, R, n].
  `placement` (device or host: `placement.choose`) says whether `data` is the
  split on every device or the rows of `indices` gathered on the host;
  `feed(split)` gives the matching source of each call's data and indices.
  """

  config: ml_collections.ConfigDict  # what was built: num_train_steps from the epochs, if given
  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule  # the default optimizer group's (what the log reports)
  batches: input_pipeline.BatchSchedule | None
  options: train_step.StepOptions
  state: TrainState
  parallel_steps: ParallelSteps | None = None
  placement: str = 'device'
  devices: tuple[jax.Device, ...] = ()

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
  num_devices = len(devices) if devices else 1
  if train_split is not None:
    image_shape = train_split.image_shape
    num_classes = train_split.num_classes
    batches = input_pipeline.BatchSchedule(
        num_examples=train_split.num_examples, per_device_batch_size=config.per_device_batch_size,
        num_local_devices=num_devices, seed=config.seed, num_processes=jax.process_count(),
        process_index=jax.process_index(), num_replicas=config.num_replicas)
    if batches.steps_per_epoch < 1:
      raise UserError(
          f'The training split has {train_split.num_examples} examples, fewer than one global '
          f'batch ({batches.global_batch_size}); lower config.per_device_batch_size.')
    config = steps_from_epochs(config, batches.steps_per_epoch)
    num_examples, global_batch, steps_per_epoch = (
        train_split.num_examples, batches.global_batch_size, batches.steps_per_epoch)
  else:
    batches, num_examples, global_batch, steps_per_epoch = None, 1, 1, 1
    if image_shape is None:
      image_shape = (*(validation.image_height_width(config) or (32, 32)),
                     config.dataset.channels or 3)
  model = models.create_model(config.model, num_classes)
  tx, learning_rate_fn = optimizers.create_optimizer(config, num_examples, global_batch)
  options = train_step.StepOptions.from_config(config, steps_per_epoch)
  if train_split is not None:
    options.augmentation.check(train_split.image_shape, 'the training images of ' +
                               datasets.split_label(config.dataset, config.dataset.train_split))
  make_state = functools.partial(
      create_train_state, model, tx, with_lookahead=config.lookahead.every_steps > 0,
      input_shape=input_pipeline.model_input_shape(image_shape, config.crop_size))
  # Replica r is the run of seed + r: its initialisation, whitening images, order, augmentation.
  seeds = [config.seed + r for r in range(config.num_replicas)]
  if train_split is None:
    state = jax.eval_shape(lambda: stack_replicas([make_state(seed=s) for s in seeds]))
  else:
    uses_data = hasattr(model, 'data_init')
    state = stack_replicas([make_state(seed=s, init_images=input_pipeline.init_images(
        train_split, config, s) if uses_data else None) for s in seeds])
  where = (placement.choose(config.dataset.placement, train_split, devices)
           if train_split is not None and devices else 'device')
  steps = (_parallel_steps(config, model, tx, learning_rate_fn, options, devices,
                           gathered=where == 'host') if devices else None)
  return Setup(config=config, model=model, tx=tx, learning_rate_fn=learning_rate_fn,
               batches=batches,
               options=options, state=state, parallel_steps=steps, placement=where,
               devices=tuple(devices or ()))


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
                    tx: optax.GradientTransformation, learning_rate_fn: optax.Schedule,
                    options: train_step.StepOptions, devices: Sequence[jax.Device],
                    gathered: bool) -> ParallelSteps:
  """`train_step.device_steps` (of every replica) mapped over `devices`."""
  # Several steps per call are a lax.scan; XLA's CPU backend runs a loop body several
  # times slower than the same step as straight-line code, so on CPUs it is unrolled.
  steps = functools.partial(train_step.device_steps, scan=config.steps_per_call > 1,
                            unroll=devices[0].platform == 'cpu', gathered=gathered,
                            apply_fn=model.apply, tx=tx,
                            learning_rate_fn=learning_rate_fn, options=options)
  replicas = config.num_replicas
  if replicas > 1:
    steps = functools.partial(train_step.replica_steps, execution=config.replica_execution,
                              **steps.keywords)
  memory = (f'config.num_replicas={replicas} runs x config.per_device_batch_size='
            f'{config.per_device_batch_size} do not fit the memory of a device; lower '
            f'config.num_replicas or config.per_device_batch_size')
  return parallel.pmap(steps, devices, donate_argnums=(0,), out_of_memory=memory)
