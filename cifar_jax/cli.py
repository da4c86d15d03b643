"""Command-line parsing for cifar_jax's commands (`main`, `benchmark`, `compare`): one-line errors.

absl and ml_collections report a bad flag value, an unknown flag, a missing or
broken config file with a traceback (or load the config file only when it is
first used). `parse_flags` checks the config file, parses, and turns every
such mistake into one `error: ...` line on stderr and exit status 1. `--help`
and `--helpfull` are absl's, unchanged.
"""

from __future__ import annotations

import ast
import os
import runpy
import sys
from typing import NoReturn

from absl import flags

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


SWEEP_PREFIX = '--config.sweep.'


def _add_sweep(config, arguments: list[str]) -> None:
  """`--config.sweep.FIELD=(v1, v2, ...)` arguments as `config.sweep[FIELD]` tuples."""
  for argument in arguments:
    name, _, text = argument.removeprefix(SWEEP_PREFIX).partition('=')
    try:
      values = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      values = None
    if not name or not isinstance(values, (tuple, list)):
      fail(f"{argument}: a sweep field takes a tuple of values, e.g. "
           f"--config.sweep.learning_rate='(0.02, 0.1)' (see docs/replicas.md#sweeps).")
    *parents, leaf = name.split('.')  # a nested field: sweep.optimizer_groups.x.learning_rate
    with config.unlocked():
      target = config.sweep
      for parent in parents:
        if parent not in target:
          target[parent] = type(config)()
        target = target[parent]
      target[leaf] = tuple(values)


def parse_flags(argv: list[str], positional: bool = False) -> list[str]:
  """absl's parsing of `argv` (for `app.run(flags_parser=...)`), with one-line errors.

  Positional arguments are refused unless `positional` (`cifar_jax.compare`'s folders).
  """
  path = _config_path(argv)
  if path is not None:
    check_config_file(path)  # before ml_collections loads it with a traceback for any fault
  # A sweep's fields are new keys (`config.sweep` is empty in a recipe): ml_collections only
  # overrides fields that exist, and reads sys.argv itself, so they are taken out of both and
  # added once the config is built.
  swept = [arg for arg in argv if arg.startswith(SWEEP_PREFIX)]
  argv = [arg for arg in argv if arg not in swept]
  saved_argv, sys.argv = sys.argv, argv
  try:
    remaining = FLAGS(argv)
    if 'config' in FLAGS:
      FLAGS.config  # noqa: B018 (ml_collections builds the config on first use)
      _add_sweep(FLAGS.config, swept)
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
  except KeyError as e:
    fail(f'a --config.* override names a field the config does not have ({e}); run with '
         '--helpfull to see the config fields.')
  except Exception as e:  # pylint: disable=broad-except
    fail(f'a --config.* override was rejected ({type(e).__name__}: {e}); check that the field '
         'exists in the config file and that the value has its type.')
  finally:
    sys.argv = saved_argv
  if len(remaining) > 1 and not positional:
    fail(f'unexpected argument(s) {" ".join(remaining[1:])}; options are --flag=value '
         '(run with --help to see them).')
  return remaining
