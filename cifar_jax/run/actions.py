"""What the trainer does between device calls, each on its own cadence (`loop.PeriodicAction`).

In the order they act after a call:

  StartupReport   after the first call: its time (compilation included), where start-up went
  InputImages     once per run: a grid of the first batch's augmented images (TensorBoard)
  LogLine         every config.log_every_steps: the tutorial's log line, metrics.jsonl, TensorBoard
  Histograms      every config.histogram_every_steps: weights and activations (TensorBoard)
  SaveCheckpoint  Orbax's save policy (every config.checkpoint_every_steps / _secs), the last
                  step, and on SIGTERM/SIGINT -- then it stops the run (`lifecycle.Preempted`)
  Evaluate        with --mode=train_and_eval: every config.eval_every_steps and the last step
  Profile         config.profile_steps: a jax.profiler trace of those steps' calls

`create(run)` builds the ones a run uses from `ACTIONS`. A new action is a
class here with a `create` classmethod (and, usually, a config field for its
cadence), added to `ACTIONS`; the loop needs no change (docs/development.md).
Every process of a multi-process run has the same actions with the same
cadences, so that all make the same calls; only process 0 writes. With
replicas (`config.num_replicas`), the log line gives their mean loss and the
examples/sec of all of them; the input grid and histograms are replica 0's.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import dataclasses
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import layout, metric_writers, parallel, summaries, sweeps
from cifar_jax.data import augmentations, datasets, input_pipeline
from cifar_jax.evaluation import scoring
from cifar_jax.training import builder, lifecycle, loop, profiling, train_state
from cifar_jax.training.loop import PeriodicAction, Progress
from cifar_jax.workdir import checkpointer

# The cadences of the actions that have one of their own (the log line's is the loop's, the
# checkpoints' the checkpointer's, the profile's the profiler's).
FIELDS = {
    'histogram_every_steps': spec.Field(1000, spec.integer(1), 'histograms and image grids'),
    'eval_every_steps': spec.Field(1000, spec.integer(0, hint=(
        'config.eval_every_steps is {value}; use 0 (only at the end) or a positive number of '
        'steps.')), 'in-process scores'),
}
spec.declare(__name__, FIELDS)


@dataclasses.dataclass(frozen=True)
class Run:
  """What the actions of one training run may use."""

  config: ml_collections.ConfigDict
  workdir: str
  setup: builder.Setup
  train_split: datasets.Split
  devices: list[jax.Device]
  checkpointer: checkpointer.Checkpointer
  writer: metric_writers.MultiWriter  # WORKDIR's; drops everything off process 0
  startup: loop.Startup
  start_step: int
  preemption: lifecycle.Preemption
  evaluate_in_process: bool = False
  on_log: Callable[[int, dict[str, float]], None] | None = None

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0

  def first_replica(self, tree):
    """Replica 0's part of a tree with a replica axis (the tree itself for one run)."""
    return train_state.replica(tree, 0) if sweeps.num_runs(self.config) > 1 else tree


class StartupReport(PeriodicAction):
  """After the first call of a (re)start: how long it took and where the start-up went."""

  at_final_step = False

  def __init__(self, run: Run):
    self._run = run

  @classmethod
  def create(cls, run: Run) -> StartupReport:
    return cls(run)

  def due(self, progress: Progress) -> bool:
    return progress.first_call

  def __call__(self, progress: Progress) -> None:
    self._run.startup.lap('first step')
    if self._run.is_main:
      logging.info('First step (compilation included) took %.1f s; from the start of training: '
                   '%s.', progress.first_call_seconds, self._run.startup)


class InputImages(PeriodicAction):
  """A grid of the augmented images of the first batch, once per run (not per restart)."""

  at_final_step = False

  def __init__(self, run: Run):
    self._run = run

  @classmethod
  def create(cls, run: Run) -> InputImages | None:
    return cls(run) if run.is_main and run.start_step == 0 else None

  def due(self, progress: Progress) -> bool:
    return progress.first_call

  def __call__(self, progress: Progress) -> None:
    run = self._run
    step_indices = run.first_replica(np.moveaxis(run.setup.batches.indices(0), 0, -2))
    indices = step_indices[0].reshape(-1)[:run.config.input_image_grid_size]
    images = augmentations.augmented_examples(
        run.train_split.images[indices], indices,
        run.first_replica(parallel.unreplicate(progress.replicated_state.rng)), 0,
        run.setup.pieces.options.augmentation)
    run.writer.write_images(1, {'augmented_inputs': summaries.image_grid_ready(images)})


class LogLine(PeriodicAction):
  """The tutorial's log line, and the step's metrics in metrics.jsonl, TensorBoard and `on_log`.

  A line whose window holds only the compiling first call says so
  ('compilation included') and is not plotted.
  """

  def __init__(self, run: Run):
    self._run = run
    self.every_steps = run.config.log_every_steps

  @classmethod
  def create(cls, run: Run) -> LogLine:
    return cls(run)

  def __call__(self, progress: Progress) -> None:
    means = progress.metrics()  # on every process: it also checks the loss is finite
    if not self._run.is_main:
      return
    examples_per_sec, sec_per_batch, timed = progress.throughput()
    replicas = sweeps.num_runs(self._run.config)
    runs = f'mean of {replicas} runs; ' if replicas > 1 else ''
    summaries.print_line(
        f'step {progress.step}, loss = {means["loss"]:.2f} ({runs}{examples_per_sec:.1f} '
        f'examples/sec; {sec_per_batch:.3f} sec/batch{"" if timed else ", compilation included"})')
    scalars = {**means, 'examples_per_sec': examples_per_sec} if timed else means
    self._run.writer.write_scalars(progress.step, scalars)
    if self._run.on_log is not None:
      self._run.on_log(progress.step, scalars)


class Histograms(PeriodicAction):
  """Weight histograms and activation histograms on a fixed sample of training images."""

  def __init__(self, run: Run):
    self._run = run
    self.every_steps = run.config.histogram_every_steps
    preprocess = jax.vmap(input_pipeline.EvalPreprocessing.from_config(run.config))
    self._sample = np.asarray(preprocess(run.train_split.images[
        :run.config.histogram_sample_size]))

  @classmethod
  def create(cls, run: Run) -> Histograms:
    return cls(run)

  def __call__(self, progress: Progress) -> None:
    if not self._run.is_main:
      return
    state = self._run.first_replica(progress.state())
    arrays = {'params/' + '/'.join(str(p.key) for p in path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    _, intermediates = self._run.setup.model.apply(
        state.variables(), self._sample, capture_intermediates=True, mutable=['intermediates'])
    for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
      name = '/'.join(str(getattr(p, 'key', p)) for p in path[1:-1])
      arrays['activations/' + name] = np.asarray(leaf)
    self._run.writer.write_histograms(progress.step, arrays)


class SaveCheckpoint(PeriodicAction):
  """Saves when Orbax's policy says, after the last step, and on a stop signal -- then stops.

  The metrics since the last look are checked first, so a diverged state is
  never saved.
  """

  def __init__(self, run: Run):
    self._checkpointer = run.checkpointer
    self._preemption = run.preemption
    self.every_steps = run.config.checkpoint_every_steps

  @classmethod
  def create(cls, run: Run) -> SaveCheckpoint:
    return cls(run)

  def due(self, progress: Progress) -> bool:
    self._checkpointer.seal_finished()  # checksums of a save that finished since the last call
    return (progress.final or progress.preempted
            or self._checkpointer.should_save(progress.step))

  def __call__(self, progress: Progress) -> None:
    progress.metrics()
    self._checkpointer.save(progress.state())
    if progress.preempted:
      self._checkpointer.wait()
      raise lifecycle.Preempted(progress.step, self._checkpointer.step_directory(progress.step),
                                self._preemption.signal_number)


class Evaluate(PeriodicAction):
  """--mode=train_and_eval: EMA and raw parameters scored on the eval split (WORKDIR/eval)."""

  def __init__(self, run: Run):
    self._run = run
    self.every_steps = run.config.eval_every_steps
    split = datasets.load_eval_split(run.config.dataset)
    self._evaluator = scoring.Evaluator(run.config, split, run.setup.model, run.devices,
                                        trained=run.train_split.info())
    self._writer = summaries.create_writer(layout.path(run.workdir, layout.EVAL), run.is_main,
                                           run.config, run.workdir)

  @classmethod
  def create(cls, run: Run) -> Evaluate | None:
    return cls(run) if run.evaluate_in_process else None

  def due(self, progress: Progress) -> bool:
    return not progress.preempted and super().due(progress)

  def __call__(self, progress: Progress) -> None:
    started = time.time()
    result = self._evaluator.score_state(progress.state())
    if self._run.is_main:
      scoring.report(self._writer, progress.step, result, self._evaluator.split,
                     self._run.config.eval.num_misclassified_images,
                     {'eval_seconds': time.time() - started},
                     self._run.config.eval.calibration_bins)

  def close(self) -> None:
    self._writer.close()


class Profile(PeriodicAction):
  """config.profile_steps: traces the calls that run those steps (see `profiling`)."""

  at_final_step = False

  def __init__(self, run: Run):
    self._profiler = profiling.StepProfiler(tuple(run.config.profile_steps), run.workdir)

  @classmethod
  def create(cls, run: Run) -> Profile | None:
    return cls(run) if run.config.profile_steps and run.is_main else None

  def around(self, call: loop.Call) -> contextlib.AbstractContextManager:
    return self._profiler.call(call.start, call.end)

  def due(self, progress: Progress) -> bool:
    return self._profiler.should_stop(progress.step)

  def __call__(self, progress: Progress) -> None:
    self._profiler.stop_after(progress.replicated_state)

  def close(self) -> None:
    self._profiler.stop()


ACTIONS: tuple[type[PeriodicAction], ...] = (
    StartupReport, InputImages, LogLine, Histograms, SaveCheckpoint, Evaluate, Profile)


def create(run: Run) -> list[PeriodicAction]:
  """The actions of `run`, in the order they act."""
  return [action for cls in ACTIONS if (action := cls.create(run)) is not None]

