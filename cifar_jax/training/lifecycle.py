"""How a training process ends other than by finishing: preemption and hung peers.

* `Preemption`: SIGTERM (what SLURM, Kubernetes and cloud spot VMs send before
  taking a machine) or SIGINT (Ctrl-C) asks the trainer to stop. It finishes
  the step in flight, saves that step and raises `Preempted`; the command line
  prints `preempted at step N; checkpoint saved in DIR` and exits with
  128 + the signal number (143 for SIGTERM, 130 for SIGINT). A second signal
  while it saves changes nothing. In a multi-process run, JAX's preemption
  service catches SIGTERM and every process stops at the same step, the one
  `jax.experimental.multihost_utils.reached_preemption_sync_point` (through
  Orbax's `CheckpointManager.reached_preemption`) agrees on, so all processes
  save one checkpoint together.
* `Watchdog`: in a multi-process run, a step whose collectives never complete
  (a peer was killed, stopped or cut off) would block every other process
  forever. The watchdog ends such a process after
  `config.collective_timeout_secs` without progress, with one `error:` line
  naming the process and the step. Checkpoints are written to a temporary
  folder and renamed when complete, so an interrupted save leaves the previous
  checkpoint as the latest.
"""

from __future__ import annotations

from collections.abc import Callable
import os
import signal
import sys
import threading
import time
from typing import Any

from absl import logging
import jax


class Preempted(Exception):  # noqa: N818 (a state, not a failure)
  """Training stopped on a signal after saving the checkpoint of `step`."""

  def __init__(self, step: int, checkpoint_dir: str, signal_number: int):
    self.step = step
    self.checkpoint_dir = checkpoint_dir
    self.signal_number = signal_number
    self.exit_status = 128 + signal_number
    super().__init__(f'preempted at step {step}; checkpoint saved in {checkpoint_dir}')


class Preemption:
  """Whether a stop was requested, and at which step every process stops.

  Call `reached(step)` after every training step on every process (JAX's
  protocol needs each step). Use as a context manager: signal handlers are
  installed on entry (main thread only; elsewhere, e.g. a notebook's worker
  thread, signals keep their usual meaning) and restored on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, reached_sync_point: Callable[[int], bool] | None = None):
    # In a multi-process run, JAX's preemption service owns SIGTERM.
    self._multi_process = jax.process_count() > 1
    self._reached_sync_point = reached_sync_point
    self._received: int | None = None
    self._previous: dict[int, Any] = {}
    self._last_step: int | None = None
    self.step_at_signal: int | None = None  # the last step finished when the signal came

  def __enter__(self) -> Preemption:
    if threading.current_thread() is not threading.main_thread():
      logging.info('Not on the main thread: SIGTERM/SIGINT keep their default behaviour.')
      return self
    for signal_number in self.SIGNALS:
      if self._multi_process and signal_number == signal.SIGTERM:
        continue
      self._previous[signal_number] = signal.signal(signal_number, self._on_signal)
    return self

  def __exit__(self, *exc_info) -> None:
    for signal_number, handler in self._previous.items():
      # None: a handler installed from C; the default is the closest Python can restore.
      signal.signal(signal_number, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()

  def _on_signal(self, signal_number: int, frame: Any) -> None:
    del frame
    if self._multi_process:
      # Every process must stop at the same step: hand Ctrl-C to JAX's
      # preemption service as the SIGTERM it listens for.
      self._received = signal.SIGTERM
      signal.raise_signal(signal.SIGTERM)
      return
    if self._received is None:
      self._received = signal_number
      self.step_at_signal = self._last_step
      logging.warning('Received %s %s: saving after the step in flight, then stopping.',
                      signal.Signals(signal_number).name,
                      'before the first step' if self._last_step is None
                      else f'after step {self._last_step}')

  def reached(self, step: int) -> bool:
    """True once a stop was requested; in a multi-process run, at the agreed step."""
    self._last_step = step
    if self._multi_process:
      if self._reached_sync_point is not None and self._reached_sync_point(step):
        self._received = self._received or signal.SIGTERM
        return True
      return False
    return self._received is not None

  @property
  def signal_number(self) -> int:
    return self._received or signal.SIGTERM


class Watchdog:
  """Ends this process with one error line if `progress` is not called for `timeout_secs`.

  A background thread; the only way out of a collective that never returns
  (the main thread is inside XLA then). Inactive when `timeout_secs` is 0.
  """

  def __init__(self, timeout_secs: float, describe_where: Callable[[], str] | None = None):
    self._timeout = timeout_secs
    self._describe_where = describe_where
    self._last_progress = time.monotonic()
    self._step: int | None = None
    self._stopped = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> Watchdog:
    if self._timeout:
      self._last_progress = time.monotonic()
      self._thread = threading.Thread(target=self._watch, name='cifar_jax-watchdog', daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._stopped.set()
    if self._thread is not None:
      self._thread.join()

  def progress(self, step: int) -> None:
    """Step `step` was reached (the loop is not stuck)."""
    self._step = step
    self._last_progress = time.monotonic()

  def _watch(self) -> None:
    while not self._stopped.wait(min(5.0, self._timeout / 4)):
      idle = time.monotonic() - self._last_progress
      if idle > self._timeout:
        where = f'after step {self._step}' if self._step is not None else 'before the first step'
        extra = f'; {self._describe_where()}' if self._describe_where else ''
        print(f'error: process {jax.process_index()} of {jax.process_count()} made no progress '
              f'for {idle:.0f} s {where} (another process stopped answering or a collective '
              f'across processes hung){extra}; restart every process with the same command to '
              'resume.', file=sys.stderr, flush=True)
        # The main thread is blocked inside XLA: only leaving the process ends it.
        os._exit(1)
