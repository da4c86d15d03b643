"""What a command shows: the tutorial's lines, warnings and errors; the detail goes to WORKDIR/logs.

The tutorial's terminal shows its step and precision lines (`summaries.print_line`,
on stdout). Everything logged at INFO -- the config, the parameter table, the
start-up breakdown, the devices -- goes to WORKDIR/logs/<mode>.log
(`<mode>.process<i>.log` for process i > 0 of a multi-process run);
warnings and errors go to the terminal too. `verbose` (`--verbose`) shows
the INFO lines on the terminal as well, as before.

Long preparations (decoding a folder into the cache) show their count, rate
and time left every few seconds (`ProgressLine`); nothing when they take
under a few seconds.

The evaluator may start before its WORKDIR exists (it waits for the trainer
to create it), and must not create it; records logged until then are held
and written once the folder is there.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import datetime
import logging as logging_lib
import os
import time

from absl import logging
import jax

from cifar_jax.core import layout

_MAX_HELD_RECORDS = 10_000  # before the WORKDIR exists (the evaluator's wait)


def print_line(message: str) -> None:
  """A tutorial-style line, '2026-11-27 10:00:00.123456: message', on stdout."""
  print(f'{datetime.datetime.now()}: {message}', flush=True)


class ProgressLine:
  """'Decoding X: 12,000/50,000 images (2,950/s, 13 s left)' every `every_secs` on the terminal.

  Silent for the first `after_secs` (a short preparation shows nothing);
  `finish` says how long it took, where a line was shown. `total` None (not
  known) shows the count and rate only.
  """

  def __init__(self, what: str, total: int | None, unit: str, after_secs: float = 3.0,
               every_secs: float = 5.0, clock: Callable[[], float] = time.monotonic,
               show: Callable[[str], None] = print_line):
    self.what, self.total, self.unit = what, total, unit
    self._after, self._every, self._clock, self._show = after_secs, every_secs, clock, show
    self._started = clock()
    self._next = self._started + after_secs
    self.shown = 0

  def update(self, done: int) -> None:
    now = self._clock()
    if now < self._next:
      return
    self._next = now + self._every
    elapsed = now - self._started
    rate = done / elapsed if elapsed > 0 else 0.0
    if self.total and done <= self.total:
      left = (self.total - done) / rate if rate else float('inf')
      text = f'{done:,}/{self.total:,} {self.unit} ({rate:,.0f}/s, {left:,.0f} s left)'
    else:
      text = f'{done:,} {self.unit} ({rate:,.0f}/s)'
    self._show(f'{self.what}: {text}')
    self.shown += 1

  def finish(self, done: int) -> None:
    if self.shown:
      self._show(f'{self.what}: {done:,} {self.unit} in {self._clock() - self._started:,.1f} s')


# Orbax's warnings that a read-only manager (the evaluator's, the notebook's) is read-only.
_ORBAX_READ_ONLY_NOTICES = ('CheckpointManagerOptions.read_only=True',
                            'Given directory is read only')


class QuietLibraries(logging_lib.Filter):
  """Drops Orbax's per-save INFO chatter and its read-only notices; keeps its other warnings."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    if '/orbax/' not in record.pathname:
      return True
    if record.levelno < logging_lib.WARNING:
      return False
    return not str(record.msg).startswith(_ORBAX_READ_ONLY_NOTICES)


class WorkdirLogFile(logging_lib.Handler):
  """Log records into WORKDIR/logs/NAME once WORKDIR exists; held in memory until then.

  Every record the loggers let through: INFO and above, and DEBUG where a
  library's debug logging was asked for.
  """

  def __init__(self, workdir: str, name: str):
    super().__init__(logging_lib.NOTSET)
    self.workdir = os.path.abspath(workdir)
    self.path = layout.path(self.workdir, layout.LOGS, name)
    self._stream = None
    self._failed = False
    self._held: list[logging_lib.LogRecord] = []
    self.setFormatter(logging.PythonFormatter())
    self.addFilter(QuietLibraries())

  def emit(self, record: logging_lib.LogRecord) -> None:
    if self._failed:
      return
    if self._stream is None and not self._open():
      if len(self._held) < _MAX_HELD_RECORDS:
        self._held.append(record)
      return
    try:
      self._stream.write(self.format(record) + '\n')
      self._stream.flush()
    except OSError:
      # A full disk or a removed folder: the run's own writes report it in one error line;
      # the log file stops here rather than print a traceback per record.
      self._failed = True
      with contextlib.suppress(OSError):
        self._stream.close()
      self._stream = None

  def _open(self) -> bool:
    if not os.path.isdir(self.workdir):
      return False
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._stream = open(self.path, 'a')  # pylint: disable=consider-using-with
    except OSError:
      return False  # an unwritable WORKDIR is the trainer's error sentence, not a log fault
    held, self._held = self._held, []
    for record in held:
      self.emit(record)
    return True

  def close(self) -> None:
    if self._stream is not None:
      self._stream.close()
      self._stream = None
    super().close()


def show_on_terminal(verbose: bool = False) -> None:
  """The terminal gets warnings and errors (and, if `verbose`, INFO); call it first."""
  terminal = logging.get_absl_handler()
  terminal.addFilter(QuietLibraries())
  # Verbose: whatever the loggers let through, as without this module (DEBUG too, where a
  # library's debug logging was asked for, e.g. JAX_DEBUG_LOG_MODULES).
  terminal.setLevel(logging_lib.NOTSET if verbose else logging_lib.WARNING)


def log_to_workdir(workdir: str, mode: str) -> WorkdirLogFile:
  """INFO and above of this process into WORKDIR/logs/<mode>.log from now on.

  Called after `jax.distributed` is set up (each process its own file).
  """
  index = jax.process_index()
  name = f'{mode}.log' if index == 0 else f'{mode}.process{index}.log'
  handler = WorkdirLogFile(workdir, name)
  logging_lib.getLogger().addHandler(handler)
  return handler
