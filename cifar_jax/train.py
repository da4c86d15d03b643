"""The pure training step and the training loop (the tutorial's cifar10_train.py).

`train_step` is a pure function of (state, batch) -> (state, metrics): softmax
cross-entropy (mean over the batch, or summed as airbench does) plus the
tutorial's weight decay (0.004 * l2_loss on the local3 and local4 kernels),
gradients combined over all devices (`lax.pmean` of means, `lax.psum` of
sums: the gradient of the global batch's loss either way), an optax update,
the model's new BatchNorm statistics, the EMA of the parameters and
airbench's lookahead. `_device_step` puts the
on-device batch gathering and augmentation in front of it; `parallel.pmap`
maps that over the local devices.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import dataclasses
import functools
import os
import time
from typing import Any

from absl import logging
from clu import parameter_overview
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax import (
  checkpoints,
  datasets,
  evaluate,
  input_pipeline,
  lifecycle,
  parallel,
  profiling,
  summaries,
)
from cifar_jax import train_state as train_state_lib
from cifar_jax.errors import UserError
from cifar_jax.train_state import TrainState


def weight_decay_loss(params: Any, modules: tuple[str, ...], weight_decay: float) -> jax.Array:
  """weight_decay * sum over `modules` of tf.nn.l2_loss(kernel) = sum(w^2) / 2."""
  return weight_decay * sum(0.5 * jnp.sum(jnp.square(params[m]['kernel'])) for m in modules)


LOSS_REDUCTIONS = ('mean', 'sum')


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                       reduction: str = 'mean') -> jax.Array:
  """Softmax cross-entropy over the batch (mean or sum), with optional label smoothing.

  Label smoothing is PyTorch's and optax's: targets (1 - s) one_hot + s / K.
  """
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets)
  return jnp.sum(per_example) if reduction == 'sum' else jnp.mean(per_example)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    apply_fn: Callable[..., jax.Array],
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One synchronous SGD step on this device's part of the global batch.

  Must run under `parallel.pmap` (it combines over `parallel.AXIS_NAME`;
  BatchNorm layers average their statistics over it). The reported loss and
  cross-entropy are per example whatever the reduction.
  """
  summed = config.loss_reduction == 'sum'

  def loss_fn(params):
    logits, model_state = apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                   batch['image'], train=True, mutable=['batch_stats'])
    cross_entropy = cross_entropy_loss(logits, batch['label'], config.label_smoothing,
                                       config.loss_reduction)
    decay = weight_decay_loss(params, tuple(config.weight_decay_modules), config.weight_decay)
    return cross_entropy + decay, (cross_entropy, logits, model_state)

  (loss, (cross_entropy, logits, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = (jax.lax.psum if summed else jax.lax.pmean)(grads, parallel.AXIS_NAME)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  ema_params = train_state_lib.update_ema(state.ema_params, params, step, config.ema.kind,
                                          config.ema.decay)
  new_state = state.replace(step=step, params=params, opt_state=opt_state,
                            ema_params=ema_params,
                            batch_stats=model_state.get('batch_stats', state.batch_stats))
  new_state = train_state_lib.apply_lookahead(new_state, config.lookahead, config.num_train_steps)
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


def _device_step(state: TrainState, images: jax.Array, labels: jax.Array, indices: jax.Array,
                 *, augment: dict, **step_kwargs) -> tuple[TrainState, dict[str, jax.Array]]:
  """Augment this device's gathered examples (uint8 `images` at `indices`), then `train_step`."""
  # Keyed by the example's index, not the device, so that any number of
  # devices sees the same augmented global batch.
  batch = {'image': input_pipeline.augment_batch(images, indices, state.rng, state.step,
                                                 **augment),
           'label': labels}
  return train_step(state, batch, **step_kwargs)


def _device_steps(state: TrainState, data: input_pipeline.DeviceData, indices: jax.Array, *,
                  step: Callable[..., tuple[TrainState, dict[str, jax.Array]]], scan: bool,
                  unroll: bool) -> tuple[TrainState, dict[str, jax.Array]]:
  """`step` for each row of `indices` [n, B] in one call; metrics stacked [n].

  With `scan`, a `lax.scan` over the rows (every step's examples gathered
  first; `unroll`: as straight-line code); without, the one row of a single
  step, with no loop around it.
  """
  if not scan:
    (step_indices,) = indices
    state, metrics = step(state, data.images[step_indices], data.labels[step_indices],
                          step_indices)
    return state, jax.tree.map(lambda x: x[None], metrics)
  return jax.lax.scan(lambda carry, xs: step(carry, *xs), state,
                      (data.images[indices], data.labels[indices], indices), unroll=unroll)


def make_parallel_train_step(config: ml_collections.ConfigDict, model: nn.Module,
                             tx: optax.GradientTransformation,
                             learning_rate_fn: optax.Schedule, devices: list[jax.Device],
                             steps_per_epoch: int):
  """(replicated state, DeviceData, indices) -> (state, metrics).

  indices [D, n, B]: n steps in one mapped call; [D, B] is one step. Metrics
  are stacked per step: [D, n]. With `config.steps_per_call` > 1 every call,
  also one of a single step, is a `lax.scan` over its steps, so a small
  network on a fast device is not bound by per-step dispatch. On GPUs/TPUs
  the scan is a loop whose body is the step; XLA's CPU backend runs such a
  loop body ~8x slower than the same step on its own (measured: the smoke
  network, 540 vs 4,000+ images/s), so on CPUs the scan is unrolled
  (straight-line code, compiled per call length). Results equal those of
  k = 1 up to float32 rounding: XLA fuses a step inside a call differently.
  """
  step = functools.partial(
      _device_step,
      augment=input_pipeline.augment_options(config, steps_per_epoch),
      apply_fn=model.apply,
      tx=tx,
      learning_rate_fn=learning_rate_fn,
      config=config,
  )
  steps = parallel.pmap(
      functools.partial(_device_steps, step=step, scan=config.steps_per_call > 1,
                        unroll=devices[0].platform == 'cpu'),
      devices, donate_argnums=(0,))

  def mapped_train_step(state, data, indices):
    return steps(state, data, indices if np.ndim(indices) == 3 else indices[:, None])

  return mapped_train_step


def _steps_in_call(step: int, config: ml_collections.ConfigDict, evaluating: bool) -> int:
  """Steps of the next call: up to `config.steps_per_call`, ending on every cadence's step."""
  cadences = [config.log_every_steps, config.checkpoint_every_steps,
              config.histogram_every_steps]
  if evaluating and config.eval_every_steps:
    cadences.append(config.eval_every_steps)
  boundary = min([config.num_train_steps] + [(step // c + 1) * c for c in cadences])
  return min(config.steps_per_call, boundary - step)


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.collective_timeout_secs < 0:
    raise UserError(f'config.collective_timeout_secs is {config.collective_timeout_secs}; use 0 '
                    '(never) or a positive number of seconds.')
  if config.checkpoint_every_secs < 0:
    raise UserError(f'config.checkpoint_every_secs is {config.checkpoint_every_secs}; use 0 '
                    '(save by steps only) or a positive number of seconds.')
  for field in ('per_device_batch_size', 'num_train_steps', 'steps_per_call', 'log_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints', 'histogram_every_steps'):
    if config[field] < 1:
      raise UserError(f'config.{field} is {config[field]}; it must be at least 1.')
  if config.eval.tta not in evaluate.TTA:
    raise UserError(f'Unknown config.eval.tta {config.eval.tta!r}; use one of '
                    f'{list(evaluate.TTA)}.')
  if config.loss_reduction not in LOSS_REDUCTIONS:
    raise UserError(f'Unknown config.loss_reduction {config.loss_reduction!r}; use one of '
                    f'{list(LOSS_REDUCTIONS)}.')
  if config.eval_every_steps < 0:
    raise UserError(f'config.eval_every_steps is {config.eval_every_steps}; use 0 (only at '
                    'the end) or a positive number of steps.')


def _fetch_metrics(pending: list[dict[str, jax.Array]], last_good_step: int | None,
                   first_step: int, workdir: str) -> dict[str, float]:
  """Means of the pending per-step metrics; stops training on a non-finite loss.

  Each entry is one call's metrics, [devices, steps in the call].
  """
  # Every device holds the same (pmean-ed) metrics: keep the first replica.
  calls = jax.device_get(pending)
  per_step = {k: np.concatenate([np.reshape(call[k][0], -1) for call in calls])
              for k in calls[0]}
  losses = per_step['loss']
  if not np.all(np.isfinite(losses)):
    bad_step = first_step + int(np.argmin(np.isfinite(losses))) + 1
    kept = (f'the last good checkpoint (step {last_good_step}) in '
            f'{checkpoints.checkpoint_dir(workdir)} is intact'
            if last_good_step is not None else 'no checkpoint was written')
    raise UserError(
        f'Training diverged: the loss became {losses[~np.isfinite(losses)][0]} at step '
        f'{bad_step}; {kept}; lower config.learning_rate and run again.')
  return {k: float(np.mean(v)) for k, v in per_step.items()}


def _write_histograms(writer, step, state_host, model, sample_images) -> None:
  """Weight histograms and activation histograms on a fixed sample."""
  arrays = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state_host.params)[0]:
    arrays['params/' + '/'.join(str(p.key) for p in path)] = np.asarray(leaf)
  _, intermediates = model.apply(
      {'params': state_host.params, 'batch_stats': state_host.batch_stats}, sample_images,
      capture_intermediates=True, mutable=['intermediates'])
  for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    arrays['activations/' + '/'.join(str(getattr(p, 'key', p)) for p in path[1:-1])] = (
        np.asarray(leaf))
  writer.write_histograms(step, arrays)


@dataclasses.dataclass
class TrainingSetup:
  """What a training run is built from; `state` is fresh, on the host."""

  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  schedule: input_pipeline.BatchSchedule
  state: TrainState
  train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def setup_training(config: ml_collections.ConfigDict, train_split: datasets.Split,
                   devices: list[jax.Device]) -> TrainingSetup:
  """Model, optimizer, batch schedule (this process's share), fresh state, parallel step."""
  schedule = input_pipeline.BatchSchedule(
      num_examples=train_split.num_examples,
      per_device_batch_size=config.per_device_batch_size,
      num_local_devices=len(devices),
      seed=config.seed,
      num_processes=jax.process_count(),
      process_index=jax.process_index(),
  )
  if schedule.steps_per_epoch < 1:
    raise UserError(
        f'The training split has {train_split.num_examples} examples, fewer than one global '
        f'batch ({schedule.global_batch_size}); lower config.per_device_batch_size.')
  model, tx, learning_rate_fn = train_state_lib.create_model_and_optimizer(
      config, train_split.num_classes, train_split.num_examples, schedule.global_batch_size)
  init_images = (input_pipeline.init_images(train_split, config)
                 if hasattr(model, 'data_init') else None)
  return TrainingSetup(
      model=model, tx=tx, learning_rate_fn=learning_rate_fn, schedule=schedule,
      state=train_state_lib.create_train_state(config, model, tx, init_images),
      train_step=make_parallel_train_step(config, model, tx, learning_rate_fn, devices,
                                          schedule.steps_per_epoch))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       evaluate_in_process: bool = True,
                       on_log: Callable[[int, dict[str, float]], None] | None = None
                       ) -> TrainState:
  """Trains until `config.num_train_steps`, resuming from WORKDIR if it holds checkpoints.

  With `evaluate_in_process`, the EMA and raw parameters are scored on
  `config.dataset.eval_split` every `config.eval_every_steps` steps (0: never)
  and at the final step, by the same `evaluate.Evaluator` the evaluator
  process uses; results go to WORKDIR/eval. `on_log(step, metrics)` is called
  with every log line's metrics (e.g. a notebook's live plot). Returns the
  final state (host arrays).
  """
  _check_config(config)
  startup = _Startup()
  workdir = summaries.prepare_workdir(workdir)
  parallel.use_compilation_cache(config.compilation_cache_dir, workdir)
  is_main = jax.process_index() == 0
  profiler = profiling.StepProfiler(config.profile_steps, workdir, enabled=is_main)
  devices = parallel.select_devices(config.num_devices)

  train_split = datasets.load_split(config.dataset, config.dataset.train_split)
  startup.lap('data')
  setup = setup_training(config, train_split, devices)
  startup.lap('model')
  model, schedule, state = setup.model, setup.schedule, setup.state
  dataset_info = {'class_names': list(train_split.class_names),
                  'num_train_examples': train_split.num_examples}

  manager = checkpoints.create_manager(workdir, keep=config.keep_checkpoints,
                                       every_steps=config.checkpoint_every_steps,
                                       every_secs=config.checkpoint_every_secs)
  latest = manager.latest_step()
  saved_steps: list[int] = []
  if latest is not None:
    state, _ = checkpoints.restore(manager, latest, state, config)
    saved_steps = [*checkpoints.read_earlier_steps(manager, latest), latest]
    logging.info('Resuming from checkpoint step %d in %s.', latest, manager.directory)
    if is_main:
      summaries.print_line(f'resuming from step {latest}')
  startup.lap('restore')
  start_step = int(state.step)
  if start_step >= config.num_train_steps:
    logging.info('Already trained to step %d >= num_train_steps.', start_step)
    if is_main:
      checkpoints.mark_train_complete(workdir, start_step)
    manager.close()
    return state
  if is_main:
    checkpoints.clear_train_complete(workdir)

  writer = summaries.create_writer(workdir, enabled=is_main)
  if is_main:
    parameter_overview.log_parameter_overview(state.params)
    logging.info('%d devices (%s), global batch %d, %d steps per epoch.', len(devices),
                 devices[0].platform, schedule.global_batch_size, schedule.steps_per_epoch)

  data = input_pipeline.put_on_devices(train_split, devices)
  p_state = parallel.replicate(state, devices)
  p_train_step = setup.train_step
  evaluator = eval_writer = None
  if evaluate_in_process:
    evaluator = evaluate.Evaluator(
        config, datasets.load_split(config.dataset, config.dataset.eval_split), model, devices)
    eval_writer = summaries.create_writer(os.path.join(workdir, 'eval'), enabled=is_main)
  sample_images = np.asarray(jax.vmap(functools.partial(
      input_pipeline.preprocess_eval_image, **input_pipeline.eval_options(config)))(
          train_split.images[:config.histogram_sample_size]))
  startup.lap('devices and writers')

  pending: list[dict[str, jax.Array]] = []
  pending_first_step = start_step
  last_good_checkpoint = latest
  window_start, window_steps = None, 0
  preemption = lifecycle.Preemption(manager.reached_preemption)
  # Multi-process runs only: a single process has no peers to wait for.
  watchdog = lifecycle.Watchdog(
      config.collective_timeout_secs if jax.process_count() > 1 else 0,
      lambda: (f'the checkpoint of step {last_good_checkpoint} in {manager.directory} is intact'
               if last_good_checkpoint is not None else 'no checkpoint was written yet'))
  done = start_step
  try:
    with preemption, watchdog:
      while done < config.num_train_steps:
        step, num_steps = done, _steps_in_call(done, config, evaluator is not None)
        done = step + num_steps
        indices = schedule.call_indices(step, num_steps)
        call_started = time.time()
        with profiler.call(step, done):
          p_state, metrics = p_train_step(p_state, data, indices)
        profiler.after_call(done, metrics)
        pending.append(metrics)
        watchdog.progress(done)
        if step == start_step:
          # The first call compiles: timed on its own and left out of examples/sec.
          jax.block_until_ready(metrics)
          first_call_seconds = time.time() - call_started
          startup.lap('first step')
          if is_main:
            logging.info('First step (compilation included) took %.1f s; from the start of '
                         'training: %s.', first_call_seconds, startup)
            if start_step == 0:  # the first batch's grid, once per run, not per restart
              _write_input_images(writer, 1, train_split, schedule, p_state, config)
          window_start, window_steps = time.time(), 0
        else:
          window_steps += num_steps
        # JAX's preemption protocol counts every step, also those inside a call.
        preempted = any([preemption.reached(s) for s in range(step + 1, done + 1)])
        last = done == config.num_train_steps
        log_now = done % config.log_every_steps == 0 or last
        checkpoint_now = last or preempted or manager.should_save(done)
        if log_now or checkpoint_now:
          means = _fetch_metrics(pending, last_good_checkpoint, pending_first_step, workdir)
          pending, pending_first_step = [], done
          if log_now and is_main:
            # A window of only the first step times the compilation: said, not plotted.
            timed = bool(window_steps)
            sec_per_batch = ((time.time() - window_start) / window_steps if timed
                             else first_call_seconds / num_steps)
            examples_per_sec = schedule.global_batch_size / sec_per_batch
            summaries.print_line(
                f'step {done}, loss = {means["loss"]:.2f} ({examples_per_sec:.1f} '
                f'examples/sec; {sec_per_batch:.3f} sec/batch'
                f'{"" if timed else ", compilation included"})')
            scalars = {**means, 'examples_per_sec': examples_per_sec} if timed else means
            writer.write_scalars(done, scalars)
            if on_log is not None:
              on_log(done, scalars)
        histograms_now = done % config.histogram_every_steps == 0 or last
        if is_main and histograms_now:
          _write_histograms(writer, done, parallel.unreplicate(p_state), model, sample_images)
        if checkpoint_now:
          checkpoints.save(manager, parallel.unreplicate(p_state), config, dataset_info,
                           saved_steps)
          saved_steps.append(done)
          last_good_checkpoint = done
        if preempted:
          checkpoints.wait_until_finished(manager, done)
          raise lifecycle.Preempted(done, os.path.join(str(manager.directory), str(done)),
                                    preemption.signal_number)
        evaluate_now = evaluator is not None and (
            last or (config.eval_every_steps and done % config.eval_every_steps == 0))
        if evaluate_now:
          started = time.time()
          result = evaluator.score_state(parallel.unreplicate(p_state))
          if is_main:
            evaluate.report(eval_writer, done, result, evaluator.split, config,
                            {'eval_seconds': time.time() - started})
        if log_now or checkpoint_now or histograms_now or evaluate_now:
          # The device is idle after these syncs; time the next window from here.
          window_start, window_steps = time.time(), 0
          watchdog.progress(done)
      checkpoints.wait_until_finished(manager, last_good_checkpoint)
  except BaseException:
    profiler.stop()
    # Lets a save in flight finish; a failure of its own would hide this error.
    with contextlib.suppress(Exception):
      manager.close()
    raise
  else:
    profiler.stop()
    manager.close()
  finally:
    writer.close()
    if eval_writer is not None:
      eval_writer.close()
  if is_main:
    checkpoints.mark_train_complete(workdir, config.num_train_steps)
  return parallel.unreplicate(p_state)


class _Startup:
  """Seconds spent in each stage from the start of training to its first step."""

  def __init__(self):
    self._last = time.time()
    self.laps: dict[str, float] = {}

  def lap(self, stage: str) -> None:
    now = time.time()
    self.laps[stage] = now - self._last
    self._last = now

  def __str__(self) -> str:
    return ', '.join(f'{stage} {seconds:.2f} s' for stage, seconds in self.laps.items())


def _write_input_images(writer, step, train_split, schedule, p_state, config) -> None:
  """A grid of the augmented images of the first batch, once."""
  rng = parallel.unreplicate(p_state.rng)
  indices = schedule.indices(step - 1).reshape(-1)[:config.input_image_grid_size]
  images = input_pipeline.augmented_examples(train_split.images[indices], indices, rng, step - 1,
                                             config, schedule.steps_per_epoch)
  writer.write_images(step, {'augmented_inputs': summaries.image_grid_ready(images)})
