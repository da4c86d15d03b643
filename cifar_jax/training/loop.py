"""The training loop: device calls planned from the periodic actions' cadences, and what they see.

  progress = loop.Progress(replicated_state, start_step, end_step, global_batch_size)
  loop.run(setup, progress, setup.feed(split), steps_per_call, actions, preemption, watchdog)

runs the steps start_step+1 .. end_step in calls of up to `steps_per_call`
steps (one mapped call each, `builder.Setup.parallel_steps`). A call ends on
every step where an action has its period (`PeriodicAction.every_steps`) and
on the last step, so logs, checkpoints and scores land on the same steps
whatever `steps_per_call` is. After each call every action that is due acts,
in the order given: the trainer's actions (`actions`) log, write summaries,
save checkpoints, score; the benchmark runs the same loop with none.
`Progress` is what an action sees: the step, the state and the metrics since
the last look, fetched from the devices only when an action asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import contextlib
import dataclasses
import time
from typing import Any, Protocol

import jax
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import parallel, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.training.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class Call:
  """One device call: it runs steps start+1 .. end."""

  start: int
  end: int

  @property
  def num_steps(self) -> int:
    return self.end - self.start


def plan_calls(start_step: int, end_step: int, steps_per_call: int, periods: Iterable[int]
               ) -> Iterator[Call]:
  """Calls of up to `steps_per_call` steps that end on every multiple of each period > 0."""
  periods = [p for p in periods if p > 0]
  step = start_step
  while step < end_step:
    boundary = min([end_step] + [(step // p + 1) * p for p in periods])
    call = Call(step, min(step + steps_per_call, boundary))
    yield call
    step = call.end


class Progress:
  """The run after the latest call, as the actions see it.

  `state()` and `metrics()` fetch from the devices when first asked after a
  call; `metrics()` averages every step (and replica) since the previous
  fetch and stops the run on a non-finite loss. The first call after a
  (re)start compiles: it is timed on its own and left out of the throughput,
  which counts `examples_per_step` (every replica's batch) per step.
  """

  def __init__(self, replicated_state: TrainState, start_step: int, end_step: int,
               examples_per_step: int, describe_intact: Callable[[], str] = lambda: ''):
    self.replicated_state = replicated_state
    self.start_step = start_step
    self.end_step = end_step
    self.examples_per_step = examples_per_step
    self.call = Call(start_step, start_step)
    self.preempted = False
    self.first_call_seconds = 0.0
    self._describe_intact = describe_intact
    self._pending: list[dict[str, jax.Array]] = []
    self._pending_start = start_step
    self._state: TrainState | None = None
    self._metrics: dict[str, float] | None = None
    self._window_start, self._window_steps = time.time(), 0

  @property
  def step(self) -> int:
    return self.call.end

  @property
  def final(self) -> bool:
    return self.step == self.end_step

  @property
  def first_call(self) -> bool:
    return self.call.start == self.start_step

  def record(self, call: Call, replicated_state: TrainState, metrics: dict[str, jax.Array],
             started: float, preempted: bool) -> None:
    """Notes a finished (dispatched) call; its metrics are [devices, (replicas,) steps]."""
    self.call, self.replicated_state, self.preempted = call, replicated_state, preempted
    self._pending.append(metrics)
    self._state = self._metrics = None
    if self.first_call:
      jax.block_until_ready(metrics)
      self.first_call_seconds = time.time() - started
    else:
      self._window_steps += call.num_steps

  def state(self) -> TrainState:
    """The state after this call, as host arrays."""
    if self._state is None:
      self._state = parallel.unreplicate(self.replicated_state)
    return self._state

  def metrics(self) -> dict[str, float]:
    """Means of the per-step metrics since the last fetch (with several runs: of all of them,
    and each run's own, `sweeps.replica_key`); raises on a non-finite loss."""
    if self._metrics is None:
      # Every device holds the same (pmean-ed) metrics: keep the first one's, [replicas, steps].
      calls = jax.device_get(self._pending)
      per_step = {k: np.concatenate([np.reshape(call[k][0], (-1, np.shape(call[k])[-1]))
                                     for call in calls], axis=-1) for k in calls[0]}
      self._check_finite(per_step['loss'])
      self._metrics = {k: float(np.mean(v)) for k, v in per_step.items()}
      for k, v in per_step.items():
        if len(v) > 1:
          self._metrics.update({sweeps.replica_key(k, r): float(np.mean(run))
                                for r, run in enumerate(v)})
      self._pending, self._pending_start = [], self.step
    return self._metrics

  def _check_finite(self, losses: np.ndarray) -> None:
    """Raises at the first step whose loss is not finite; losses are [replicas, steps]."""
    finite = np.isfinite(losses)
    if finite.all():
      return
    index = int(np.argmin(finite.all(axis=0)))
    replica = int(np.argmin(finite[:, index]))
    which = f'the loss of replica {replica}' if len(losses) > 1 else 'the loss'
    raise UserError(
        f'Training diverged: {which} became {losses[replica, index]} at step '
        f'{self._pending_start + index + 1}; {self._describe_intact()}; lower '
        'config.learning_rate and run again.')

  def throughput(self) -> tuple[float, float, bool]:
    """(examples/sec, sec/batch, timed): since the last sync, or the compiling first call's."""
    timed = bool(self._window_steps)
    sec_per_batch = ((time.time() - self._window_start) / self._window_steps if timed
                     else self.first_call_seconds / self.call.num_steps)
    return self.examples_per_step / sec_per_batch, sec_per_batch, timed

  def restart_timing(self) -> None:
    """The devices are idle after an action's sync: time the next window from here."""
    self._window_start, self._window_steps = time.time(), 0


class PeriodicAction:
  """Something the trainer does after the calls that end on its steps.

  It acts every `every_steps` steps (0: no period; its calls then end
  wherever the others' do) and, if `at_final_step`, after the last step.
  Override `due` for another rule, `around` to wrap each call, `close` to
  release what it holds. Used as a context manager, it is closed on leaving.
  """

  every_steps: int = 0
  at_final_step: bool = True

  def due(self, progress: Progress) -> bool:
    return ((self.at_final_step and progress.final)
            or (self.every_steps > 0 and progress.step % self.every_steps == 0))

  def __call__(self, progress: Progress) -> None:
    raise NotImplementedError

  def around(self, call: Call) -> contextlib.AbstractContextManager:
    del call
    return contextlib.nullcontext()

  def close(self) -> None:
    pass

  def __enter__(self) -> PeriodicAction:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class Steps(Protocol):
  """What the loop runs: `builder.Setup`'s mapped steps, (state, data, indices) -> (state,
  metrics)."""

  parallel_steps: Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def run(setup: Steps, progress: Progress, feed: Any, steps_per_call: int,
        actions: Sequence[PeriodicAction] = (), preemption: Any = None, watchdog: Any = None
        ) -> Progress:
  """Runs the steps after `progress.step` to `progress.end_step`; see the module doc.

  `feed` (`Setup.feed`: `placement.DeviceFeed` or `HostFeed`) gives each
  call's data and indices. `preemption.reached(step)` is asked for every step
  (JAX's protocol counts each); `watchdog.progress(step)` is told after every
  call and every sync.
  """
  calls = plan_calls(progress.step, progress.end_step, steps_per_call,
                     [action.every_steps for action in actions])
  for call, data, indices in feed.calls(calls):
    with contextlib.ExitStack() as around:
      for action in actions:
        around.enter_context(action.around(call))
      started = time.time()
      state, metrics = setup.parallel_steps(progress.replicated_state, data, indices)
    preempted = preemption is not None and any(
        [preemption.reached(step) for step in range(call.start + 1, call.end + 1)])
    progress.record(call, state, metrics, started, preempted)
    if watchdog is not None:
      watchdog.progress(call.end)
    due = [action for action in actions if action.due(progress)]
    for action in due:
      action(progress)
    if due or progress.first_call:
      progress.restart_timing()
      if watchdog is not None:
        watchdog.progress(call.end)
  return progress


class Startup:
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


# ----------------------------------------------------------------------------
# The config fields of the run's length and its calls (what the loop plans calls from; each
# action's cadence is declared by its action, the checkpoints' by the checkpointer).

FIELDS = {
    'num_train_steps': spec.Field(10000, spec.integer(1), 'the run\'s length (unless epochs)'),
    'num_train_epochs': spec.Field(0.0, spec.number(0.0, hint=(
        'config.num_train_epochs is {value}; use 0 (train config.num_train_steps) or a '
        'positive number of epochs.')), 'the run\'s length in epochs; 0: steps', before=0.0),
    'steps_per_call': spec.Field(1, spec.integer(1), 'steps per device call'),
    'log_every_steps': spec.Field(10, spec.integer(1), 'the log line'),
}


spec.declare(__name__, FIELDS)

