"""The project's own deprecations as test failures: CIFAR_JAX_STRICT_DEPRECATIONS=1 (CI's newest
stack, where the libraries deprecate first).

A deprecation is the project's own where its code is the caller the library blames or calls:

* a DeprecationWarning, PendingDeprecationWarning or FutureWarning whose `stacklevel` points
  into the project (what setup.cfg's `error::DeprecationWarning:cifar_jax` filter catches for
  cifar_jax alone), or whose issuing function the project called directly (a library that
  warns with the wrong stacklevel);
* a library's log line that says "deprecated" (Orbax logs some of its deprecations instead of
  warning) from a function the project called directly.

The project is cifar_jax/, experiments/, benchmarks/ and tests/ (not this file). A library
deprecating its own internals, or an import it makes, is not the project's and is left to the
library. The test that triggered one fails at its end, naming each with where the project
called it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

ENABLED = os.environ.get('CIFAR_JAX_STRICT_DEPRECATIONS', '') == '1'
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT = tuple(os.path.join(_ROOT, part) + os.sep
                 for part in ('cifar_jax', 'experiments', 'benchmarks', 'tests'))
_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
found: list[str] = []  # this test's, emptied by `check`


def _in_project(frame) -> bool:
  filename = frame.f_code.co_filename
  return filename.startswith(_PROJECT) and filename != __file__


def _where(frame) -> str:
  return f'{os.path.relpath(frame.f_code.co_filename, _ROOT)}:{frame.f_lineno}'


def _blamed(issuer, stacklevel: int):
  """The project's frame the deprecation is blamed on, or None."""
  if issuer is None or _in_project(issuer):
    return None  # the project's own warning to its users, or none
  attributed = issuer
  for _ in range(max(stacklevel, 1) - 1):
    attributed = attributed.f_back if attributed is not None else None
  for frame in (attributed, issuer.f_back):
    if frame is not None and _in_project(frame):
      return frame
  return None


_original_warn = warnings.warn


def _warn(message, category=None, stacklevel=1, source=None, **kwargs):
  kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
  if isinstance(kind, type) and issubclass(kind, _CATEGORIES):
    frame = _blamed(sys._getframe(1), stacklevel)  # pylint: disable=protected-access
    if frame is not None:
      found.append(f'{kind.__name__} at {_where(frame)}: {message}')
  return _original_warn(message, category, stacklevel + 1, source, **kwargs)


class _DeprecationLogs(logging.Handler):
  """A library's 'deprecated' log line, from a function the project called."""

  def emit(self, record: logging.LogRecord) -> None:
    if record.levelno < logging.WARNING or 'deprecat' not in record.getMessage().lower():
      return
    frame = sys._getframe(1)  # pylint: disable=protected-access
    while frame is not None and frame.f_code.co_filename != record.pathname:
      frame = frame.f_back  # up to the function that logged
    issuer_caller = frame.f_back if frame is not None else None
    if (frame is not None and not _in_project(frame) and issuer_caller is not None
        and _in_project(issuer_caller)):
      found.append(f'logged at {_where(issuer_caller)}: {record.getMessage()}')


def install() -> None:
  """Watches warnings and log lines from now on (conftest, before the project is imported)."""
  if ENABLED and warnings.warn is not _warn:
    warnings.warn = _warn
    # On the root logger, which absl's and every library's lines reach (asking for 'absl' here
    # would create it before absl.logging can make it its own kind).
    logging.getLogger().addHandler(_DeprecationLogs())


def check() -> list[str]:
  """The deprecations found since the last check (and forgets them)."""
  seen = list(dict.fromkeys(found))
  found.clear()
  return seen
