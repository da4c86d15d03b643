"""Runs many command lines of one cifar_jax command in one process, one after another.

A real `python -m cifar_jax.main ...` per command line costs a Python start and
the import of JAX, Flax and Orbax (about two seconds each, and 40 of them
made the command-line mistake table the suite's slowest minute). Here each
command line goes through the same parser (`cli.parse_flags`, with absl's
flags reset between lines) and the same `main(argv)` as `app.run` would call,
and its exit status, stdout and stderr are recorded. An exception other than
`SystemExit` is what `app.run` would print as a traceback: it is recorded as
one, so a test that forbids tracebacks sees it.

The commands define overlapping absl flags (`--config` in `main` and
`benchmark`), so one process serves one command:

  python -m tests.command_runner cifar_jax.main < [[ARG, ...], ...] (JSON)  -> JSON results

`run_many` starts that process from a test.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import subprocess
import sys
import time
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reset_flags(flag_values) -> None:
  """absl's flags as before any parse; the `--config.*` overrides ml_collections defined dropped."""
  flag_values.unparse_flags()
  for name in [name for name in flag_values if name.startswith('config.')]:
    delattr(flag_values, name)


class _Exit(BaseException):
  """`os._exit(status)` in a command line (a failed write leaves at once): ends that line only."""

  def __init__(self, status: int):
    super().__init__(status)
    self.status = status


def _raise_exit(status: int):
  raise _Exit(status)


def run_one(module, arguments: list[str]) -> dict:
  """One command line through `module`'s parser and main: {returncode, stdout, stderr, seconds}.

  absl's flags must be unparsed first (`_reset_flags`), as `_main` does.
  """
  from cifar_jax import cli  # pylint: disable=g-import-not-at-top

  root = logging.getLogger()
  handlers = list(root.handlers)
  stdout, stderr = io.StringIO(), io.StringIO()
  program = [module.__name__, *arguments]
  returncode, started = 0, time.perf_counter()
  saved_argv, saved_exit = sys.argv, os._exit
  sys.argv, os._exit = program, _raise_exit  # ml_collections reads sys.argv for the overrides
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        parse = getattr(module, 'parse_flags', cli.parse_flags)  # compare's takes folders
        module.main(parse(program))
      except SystemExit as e:
        returncode = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except _Exit as e:
        returncode = e.status
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()  # as app.run would: the test sees a traceback
        returncode = 1
  finally:
    sys.argv, os._exit = saved_argv, saved_exit
    for handler in root.handlers[:]:
      if handler not in handlers:  # WORKDIR/logs/<mode>.log of this command line
        root.removeHandler(handler)
        handler.close()
  return {'returncode': returncode, 'stdout': stdout.getvalue(), 'stderr': stderr.getvalue(),
          'seconds': time.perf_counter() - started}


def run_many(module_name: str, command_lines: list[list[str]], timeout: float = 300) -> list[dict]:
  """`command_lines` of `python -m module_name` run in one fresh process; a result each."""
  result = subprocess.run(
      [sys.executable, '-m', 'tests.command_runner', module_name],
      input=json.dumps(command_lines), cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=timeout)
  if result.returncode != 0:
    raise RuntimeError(f'tests.command_runner {module_name} failed:\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.splitlines()[-1])


def _main() -> None:
  module_name = sys.argv[1]
  command_lines = json.load(sys.stdin)
  real_stdout = sys.stdout
  module = importlib.import_module(module_name)
  from absl import flags  # pylint: disable=g-import-not-at-top
  results = []
  for arguments in command_lines:
    # Reset here, in the worker only: unparsing sets absl's logger to its default level.
    _reset_flags(flags.FLAGS)
    results.append(run_one(module, arguments))
  print(json.dumps(results), file=real_stdout, flush=True)


if __name__ == '__main__':
  _main()
