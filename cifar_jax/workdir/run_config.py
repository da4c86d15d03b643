"""The run remembers its config: WORKDIR/config.json, written by the trainer, read by the evaluator.

The trainer writes the config it trains with (after the data fixed its length) at every start,
beside the checkpoints, which also carry it step by step. `python -m cifar_jax.main
--workdir=W --mode=eval` then needs no `--config`: `for_evaluation` reads the run's own config
(waiting for the trainer to write it, as the evaluator waits for its checkpoints) and sets on top
only what changes how the run is scored -- evaluation fields (`EVALUATION_FIELDS`: metrics,
sets, test-time augmentation, `run_once`, where the data now live); a field that would change
the trained network is refused in one sentence naming it. A run written before config.json
existed is read from its latest checkpoint's config. `python -m cifar_jax.main --workdir=W`
(no `--config`) resumes the run with its own config (`for_resume`), any field given on top.
"""

from __future__ import annotations

from collections.abc import Mapping
import fnmatch
import json
import os
import time
from typing import Any

import ml_collections

from cifar_jax.config import overrides, validation
from cifar_jax.core import layout, summaries
from cifar_jax.core.errors import UserError
from cifar_jax.evaluation import scoring
from cifar_jax.workdir import checkpoints

# What an evaluator may set over the run's config: how it scores and where the data now are.
# Where its summaries go (config.summaries.*) is the evaluator's own as well.
EVALUATION_FIELDS = ('eval.*', 'summaries.*', 'dataset.eval_split', 'dataset.eval_path',
                     'dataset.path', 'dataset.data_dir', 'dataset.cache_dir', 'dataset.placement',
                     'num_devices', 'compilation_cache_dir')


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `config` as WORKDIR/config.json (atomically: a reader sees the old or the new)."""
  path = layout.path(workdir, layout.CONFIG)
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def read(workdir: str) -> ml_collections.ConfigDict | None:
  """The run's config in today's fields: config.json, else its latest checkpoint's; None if
  the trainer has written neither yet."""
  path = layout.path(workdir, layout.CONFIG)
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as error:
      raise UserError(f'{path} cannot be read ({error}); give the run\'s recipe with --config '
                      'and its overrides, or let the trainer write it again.') from None
    return ml_collections.ConfigDict(_tuples(validation.upgrade_saved_config(saved)))
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    return None
  manager = checkpoints.create_manager(workdir, read_only=True)
  steps = manager.all_steps()
  if not steps:
    return None
  try:
    return ml_collections.ConfigDict(_tuples(checkpoints.read_saved_config(manager,
                                                                           max(steps))))
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(f'The latest checkpoint of {workdir} has no readable config '
                    f'({type(error).__name__}: {error}); give the run\'s --config.') from None


def _tuples(value: Any) -> Any:
  """A config read from JSON with its sequences as the tuples the recipes write."""
  if isinstance(value, dict):
    return {key: _tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(item) for item in value)
  return value


def for_evaluation(workdir: str, given: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The run's own config with the evaluation fields of `given` ({dotted path: value}) on top.

  Waits for the trainer to write it (up to eval.timeout_secs, the given one or the default); a
  given field outside `EVALUATION_FIELDS` is refused: it would score another network.
  """
  changing = [path for path in given
              if not any(fnmatch.fnmatchcase(path, pattern) for pattern in EVALUATION_FIELDS)]
  if changing:
    raise UserError(
        f'--config.{changing[0]} would change the trained network, and the evaluator scores '
        f'the run in {workdir} with its own config ({layout.CONFIG}); leave it out, or give only '
        'evaluation fields (config.eval.*, config.dataset.eval_split, ...).')
  timeout, poll = _waits(given)
  started = time.time()
  config = read(workdir) if os.path.isdir(workdir) else None
  if config is None:
    summaries.print_line(f'waiting for the trainer to write {layout.path(workdir, layout.CONFIG)} '
                         f'(up to {timeout:g} s)')
  while config is None:
    waited = time.time() - started
    if waited >= timeout:
      raise UserError(f'{workdir} holds no run (no {layout.CONFIG} and no checkpoint after '
                      f'{waited:.0f} s); start the trainer there first, fix --workdir, or give '
                      'the run\'s --config.')
    time.sleep(min(poll, timeout - waited))
    config = read(workdir) if os.path.isdir(workdir) else None
  overrides.apply(config, given)
  return config


def for_resume(workdir: str, given: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The run's own config with `given` on top, to train it on (the checkpoints' resume checks
  refuse a change that does not fit them); one sentence where WORKDIR holds no run."""
  config = read(workdir) if os.path.isdir(workdir) else None
  if config is None:
    raise UserError(f'--config=... is required: {workdir} holds no run to resume (no '
                    f'{layout.CONFIG}); give --config=FILE (a file such as experiments/cifar10.py) '
                    'to start one.')
  overrides.apply(config, given)
  return config


def _waits(given: Mapping[str, Any]) -> tuple[float, float]:
  """(eval.timeout_secs, eval.poll_secs): as given on the command line, else the defaults."""
  def number(name: str) -> float:
    value = given.get(f'eval.{name}', scoring.FIELDS[f'eval.{name}'].default)
    try:
      return float(value)
    except ValueError:
      raise UserError(f'--config.eval.{name}={value}: it must be a number of seconds.') from None
  return number('timeout_secs'), number('poll_secs')
