"""One trainer per WORKDIR: an exclusive lock held for as long as a trainer runs.

Two trainers on one WORKDIR (a requeued job while the old one still runs, the
same command in two terminals) write the same checkpoints and break each
other's saves. `TrainerLock` takes an exclusive `flock` on WORKDIR/trainer.lock
and writes who holds it (host, process id, since when) into the file; a
second trainer is refused at once with one sentence naming the holder.

The lock is the kernel's (or the network filesystem's lock manager's), not
the file's existence: it goes with the process that holds it, however that
process ends -- SIGKILL, an out-of-memory kill, a node lost -- so a trainer
killed without warning never blocks its own restart (the holder recorded in
the file is then stale and ignored). The file is never removed, since removing
a lock file races with the next trainer opening it.

A multi-process run holds one lock for the job: process 0 takes it and every
process learns the outcome (a collective), so all refuse together. The
evaluator only reads and takes no lock. A filesystem without locks (some
FUSE mounts) gets a warning and no protection.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from cifar_jax.core import layout
from cifar_jax.core.errors import UserError

# Errors of a filesystem that has no locks, as opposed to a lock held by another trainer.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def holder(workdir: str) -> dict[str, Any] | None:
  """Who last took WORKDIR's lock ({'host', 'pid', 'since'}), or None if never or unreadable."""
  try:
    with open(layout.path(workdir, layout.TRAINER_LOCK)) as f:
      return json.loads(f.read() or 'null')
  except (OSError, ValueError):
    return None


def _describe(info: dict[str, Any] | None) -> str:
  if not info:
    return 'holder unknown'
  since = datetime.datetime.fromtimestamp(info['since']).strftime('%Y-%m-%d %H:%M:%S')
  return f'host {info["host"]}, process {info["pid"]}, since {since}'


class TrainerLock:
  """A context manager: WORKDIR's trainer lock, held until exit (see the module doc)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = layout.path(workdir, layout.TRAINER_LOCK)
    self._file = None

  def __enter__(self) -> TrainerLock:
    busy = self._acquire() if jax.process_index() == 0 else None
    if jax.process_count() > 1:  # every process learns process 0's outcome
      is_busy = multihost_utils.broadcast_one_to_all(np.int32(busy is not None))
      if int(is_busy) and busy is None:
        busy = 'held by another job (process 0 of this job found it busy)'
    if busy is not None:
      raise UserError(
          f'Workdir {self.workdir} is in use by another trainer ({busy}); stop that trainer '
          'first (or wait for it to finish), or give this run another --workdir.')
    return self

  def _acquire(self) -> str | None:
    """Takes the lock and records this process; the holder's description if it is taken."""
    self._file = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return self._busy()
    except OSError as e:
      if e.errno not in _NO_LOCKS:
        raise
      logging.warning('The filesystem of %s has no file locks (%s): nothing stops a second '
                      'trainer on this WORKDIR.', self.workdir, e.strerror)
      return None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                                 'since': time.time()}))
    self._file.flush()
    return None

  def _busy(self) -> str:
    self._file.close()
    self._file = None
    # The holder writes its record just after locking: give it a moment to appear.
    for _ in range(20):
      if (info := holder(self.workdir)) is not None:
        return _describe(info)
      time.sleep(0.05)
    return _describe(None)

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      self._file.close()  # releases the lock; the record stays, stale
      self._file = None
