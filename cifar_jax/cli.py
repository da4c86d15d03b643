"""Command-line parsing for cifar_jax's commands (`main`, `benchmark`, `compare`): one-line errors.

absl and ml_collections report a bad flag value, an unknown flag, a missing or
broken config file with a traceback (or load the config file only when it is
first used). `parse_flags` checks the config file, parses, and turns every
such mistake into one `error: ...` line on stderr and exit status 1. `--help`
and `--helpfull` are absl's, unchanged.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import NoReturn

from absl import flags

from cifar_jax.config import overrides
from cifar_jax.core.errors import UserError

FLAGS = flags.FLAGS
CONFIG_HINT = 'a file such as experiments/cifar10.py (paths are relative to where you run)'


def fail(message: str, at_once: bool = False) -> NoReturn:
  """Prints `error: message` on stderr and exits with status 1.

  `at_once` leaves without waiting for other threads (see `errors.WriteError`).
  """
  print(f'error: {message}', file=sys.stderr, flush=True)
  if at_once:
    sys.stdout.flush()
    os._exit(1)
  sys.exit(1)


def _config_path(argv: list[str]) -> str | None:
  """The file part of the last --config=PATH[:ARG] in `argv`."""
  for arg in reversed(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1].split(':', 1)[0]
  return None


def check_config_file(path: str) -> None:
  """Fails with one line unless `path` is a Python file that defines get_config()."""
  if not os.path.exists(path):
    fail(f'--config={path}: no such file; give {CONFIG_HINT}.')
  if not os.path.isfile(path):
    fail(f'--config={path} is a directory, not a file; give {CONFIG_HINT}.')
  try:
    namespace = runpy.run_path(path)
  except SyntaxError as e:
    fail(f'--config={path} is not a Python config file ({e.msg}, line {e.lineno}); '
         f'give {CONFIG_HINT}.')
  except Exception as e:  # pylint: disable=broad-except
    fail(f'--config={path} raised {type(e).__name__} when loaded ({e}); fix the file or give '
         f'{CONFIG_HINT}.')
  if not callable(namespace.get('get_config')):
    fail(f'--config={path} defines no get_config(); give {CONFIG_HINT}.')


CONFIG_PREFIX = '--config.'
NEGATED_PREFIX = '--noconfig.'

# The `--config.PATH=VALUE` overrides of the last parse, in order (`config_overrides`).
_overrides: dict[str, overrides.Text] = {}


def config_overrides() -> dict[str, overrides.Text]:
  """{dotted path: text} of every `--config.PATH=VALUE` of the last `parse_flags`, in order."""
  return dict(_overrides)


def _take_overrides(argv: list[str]) -> list[str]:
  """`argv` without its `--config.PATH[=VALUE]` overrides, which go to `_overrides`.

  ml_collections would set only fields the recipe file has, each in the order given; cifar_jax
  applies them itself (`config.overrides`): an extension named there brings its fields, and an
  evaluator given no --config applies them to the run's own config. `--config.FLAG` alone is
  true, `--noconfig.FLAG` false.
  """
  _overrides.clear()
  rest = []
  for argument in argv:
    if argument.startswith(CONFIG_PREFIX) and argument != CONFIG_PREFIX:
      path, equals, text = argument.removeprefix(CONFIG_PREFIX).partition('=')
      _overrides[path] = overrides.Text(text if equals else 'true')
    elif argument.startswith(NEGATED_PREFIX):
      _overrides[argument.removeprefix(NEGATED_PREFIX)] = overrides.Text('false')
    else:
      rest.append(argument)
  return rest


def with_overrides(config):
  """`config` (in place) with this command line's `--config.*` overrides and the fields the
  extensions it names bring (`config.overrides.apply`); returns it. Called by each command's
  main, once the terminal shows warnings as it should; a mistake is `UserError`."""
  overrides.apply(config, _overrides)
  return config


def parse_flags(argv: list[str], positional: bool = False) -> list[str]:
  """absl's parsing of `argv` (for `app.run(flags_parser=...)`), with one-line errors.

  Positional arguments are refused unless `positional` (`cifar_jax.compare`'s folders).
  """
  path = _config_path(argv)
  if path is not None:
    check_config_file(path)  # before ml_collections loads it with a traceback for any fault
  argv = _take_overrides(argv)
  saved_argv, sys.argv = sys.argv, argv  # ml_collections reads sys.argv itself
  try:
    remaining = FLAGS(argv)
    if 'config' not in FLAGS and _overrides:
      raise UserError(f'{CONFIG_PREFIX}{next(iter(_overrides))}: this command takes no config '
                      'fields; run with --help to see its flags.')
  except flags.UnrecognizedFlagError as e:
    fail(f'{e}; run with --help to see the flags.')
  except flags.IllegalFlagValueError as e:
    message = str(e).strip()
    if 'must have a value other than None' in message:
      name = message.split('=', 1)[0].removeprefix('flag ')
      fail(f'{name}=... is required (for --config: {CONFIG_HINT}).')
    fail(f'{message.rstrip(".")}; run with --help to see the flags.')
  except flags.Error as e:
    fail(f'{str(e).strip().rstrip(".")}; run with --help to see the flags.')
  except UserError as e:
    fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    fail(f'a --config.* override was rejected ({type(e).__name__}: {e}); check that the field '
         'exists in the config file and that the value has its type.')
  finally:
    sys.argv = saved_argv
  if len(remaining) > 1 and not positional:
    fail(f'unexpected argument(s) {" ".join(remaining[1:])}; options are --flag=value '
         '(run with --help to see them).')
  return remaining
