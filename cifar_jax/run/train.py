"""The trainer (the tutorial's cifar10_train.py): build, restore, run the loop with its actions.

`train_and_evaluate` reads top to bottom as a run goes: the config is
checked, the WORKDIR locked (one trainer per WORKDIR: `workdir_lock`), the
data loaded, everything built from the config (`builder.build`), the latest
checkpoint restored; then the steps run in device calls (`loop.run`) and
after each call the periodic actions (`actions`: log line, summaries,
checkpoint, evaluation, profile) act on their own cadences, with
preemption (`lifecycle.Preemption`) and the multi-process watchdog
(`lifecycle.Watchdog`) around the loop. A new
capability is a module, a config field and a periodic action, not a change
here.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib

from absl import logging
from clu import parameter_overview
import jax
import ml_collections

from cifar_jax.config import validation
from cifar_jax.core import parallel, summaries, sweeps
from cifar_jax.data import datasets
from cifar_jax.run import actions
from cifar_jax.training import builder, lifecycle, loop
from cifar_jax.training.train_state import TrainState, step_number
from cifar_jax.workdir import checkpointer, checkpoints, run_config, workdir_lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       evaluate_in_process: bool = True,
                       on_log: Callable[[int, dict[str, float]], None] | None = None
                       ) -> TrainState:
  """Trains until `config.num_train_steps`, resuming from WORKDIR if it holds checkpoints.

  With `evaluate_in_process` the parameters are also scored every
  `config.eval_every_steps` steps and at the end, by the evaluator's code,
  into WORKDIR/eval. `on_log(step, metrics)` gets every log line's metrics (a
  notebook's live plot). Returns the final state (host arrays).
  """
  validation.validate(config)
  startup = loop.Startup()
  workdir = summaries.prepare_workdir(workdir)
  with contextlib.ExitStack() as stack:
    stack.enter_context(workdir_lock.TrainerLock(workdir))  # one trainer per WORKDIR
    parallel.use_compilation_cache(config.compilation_cache_dir, workdir)
    devices = parallel.select_devices(config.num_devices)
    train_split = datasets.load_split(config.dataset, config.dataset.train_split)
    startup.lap('data')
    setup = builder.build(config, train_split, devices)
    config = setup.config  # its num_train_steps follow config.num_train_epochs, where set
    if _is_main():
      run_config.save(workdir, config)  # the evaluator, compare and notebooks read it
    startup.lap('model')
    saves = stack.enter_context(
        checkpointer.Checkpointer(workdir, config, train_split.info()))
    state = saves.restore_latest(setup.state)
    startup.lap('restore')
    if not _starting(state, config, workdir, setup, devices):
      return state
    preemption = stack.enter_context(lifecycle.Preemption(saves.reached_preemption))
    run = actions.Run(config, workdir, setup, train_split, devices, saves,
                      stack.enter_context(summaries.create_writer(workdir, _is_main(), config)),
                      startup, step_number(state), preemption, evaluate_in_process, on_log)
    periodic = [stack.enter_context(action) for action in actions.create(run)]
    progress = loop.Progress(parallel.replicate(state, devices), step_number(state),
                             config.num_train_steps, setup.batches.examples_per_step,
                             saves.intact)
    feed = stack.enter_context(contextlib.closing(setup.feed(train_split)))
    startup.lap('devices and writers')
    # Multi-process runs only: a single process has no peers to wait for.
    watchdog = stack.enter_context(lifecycle.Watchdog(
        config.collective_timeout_secs if jax.process_count() > 1 else 0, saves.intact))
    loop.run(setup, progress, feed, config.steps_per_call, periodic, preemption, watchdog)
  if _is_main():
    checkpoints.mark_train_complete(workdir, config.num_train_steps)
  return progress.state()


def _is_main() -> bool:
  return jax.process_index() == 0


def _starting(state: TrainState, config: ml_collections.ConfigDict, workdir: str,
              setup: builder.Setup, devices: list[jax.Device]) -> bool:
  """Says where training starts; False (and marks the run complete) if there is nothing to do."""
  step = step_number(state)
  if step and _is_main():
    summaries.print_line(f'resuming from step {step}')
  if step >= config.num_train_steps:
    logging.info('Already trained to step %d >= num_train_steps.', step)
    if _is_main():
      checkpoints.mark_train_complete(workdir, step)
    return False
  if _is_main():
    checkpoints.clear_train_complete(workdir)
    parameter_overview.log_parameter_overview(state.params)
    logging.info('%d devices (%s), global batch %d, %d steps per epoch, %d run(s) (%d sweep '
                 'point(s) x %d replica(s)).',
                 len(devices), devices[0].platform, setup.batches.global_batch_size,
                 setup.batches.steps_per_epoch, sweeps.num_runs(config),
                 sweeps.num_points(config), config.num_replicas)
  return True
