"""Orbax checkpoints under WORKDIR/checkpoints, and the training-complete marker.

A checkpoint step holds four items:

* ``state``: the whole `TrainState` (step, params, EMA params, optimizer
  state, RNG), saved asynchronously;
* ``config``: the config it was trained with (JSON);
* ``dataset``: the class names in label order, and the training-set size;
* ``history``: the steps of every earlier checkpoint of this run (so an
  evaluator knows which ones it missed, whatever the save cadence).

Steps are saved every `checkpoint_every_steps` steps and, with
`checkpoint_every_secs`, also whenever that much time passed since the last
save (or since the trainer started), so a kill without warning loses at most
that much work. A save that fails (disk full, folder removed or read-only)
ends the run with a `CheckpointWriteError` that names the intact checkpoint.

Every finalised step gets a checksum of each of its files
(`checkpoints/N/sha256sums`, the format `sha256sum -c` reads), recorded
as soon as its save has finished, and verified before it is restored: a
trainer whose latest checkpoint is corrupt (bit rot, a bad disk, a
half-copied folder) says so in one warning line, moves it to
WORKDIR/corrupt_checkpoints/ and resumes from the newest intact one; the
evaluator reports and skips it; `experiment.load_checkpoint` refuses it.
A step saved before checksums existed (or cut off between its save and its
checksums) is restored unverified. (TensorStore's zarr3 `crc32c` codec
would cover the arrays alone, not the JSON items or Orbax's metadata, and
is not what Orbax writes by default.)

Running the trainer again on the same WORKDIR resumes from the latest
finalised step. A WORKDIR whose saved parameters have other shapes than the
current config gives is refused with the config fields that differ.

`checkpointer.Checkpointer` is the trainer's view: restore the latest step, decide and
write saves, and keep the run's history of saved steps.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging as logging_lib
import os
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cifar_jax.config import validation
from cifar_jax.core import layout, terminal
from cifar_jax.core.errors import UserError, WriteError
from cifar_jax.training import train_state

CHECKSUM_FILE = 'sha256sums'


def checkpoint_dir(workdir: str) -> str:
  return layout.path(os.path.abspath(workdir), layout.CHECKPOINTS)


class CheckpointWriteError(WriteError):
  """A checkpoint could not be written; the earlier ones are intact."""


class CorruptCheckpointError(UserError):
  """A checkpoint's files differ from the checksums recorded when it was saved."""


def _file_digests(step_dir: str) -> dict[str, str]:
  """{path relative to step_dir: sha256} of every file below a step folder but the checksums."""
  digests = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      relative = os.path.relpath(path, step_dir)
      if relative == CHECKSUM_FILE:
        continue
      digest = hashlib.sha256()
      with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
          digest.update(chunk)
      digests[relative] = digest.hexdigest()
  return digests


def seal(step_dir: str) -> None:
  """Records the checksum of every file of a finalised step (`sha256sum -c` format)."""
  if not os.path.isdir(step_dir):
    return  # deleted by keep_checkpoints before its save was seen to finish
  lines = [f'{digest}  {path}\n' for path, digest in _file_digests(step_dir).items()]
  temporary = os.path.join(step_dir, f'.{CHECKSUM_FILE}.tmp')
  with open(temporary, 'w') as f:
    f.writelines(lines)
  os.replace(temporary, os.path.join(step_dir, CHECKSUM_FILE))


def verify(step_dir: str) -> bool:
  """True when every file matches its recorded checksum; False when none were recorded.

  Raises `CorruptCheckpointError` naming the first file that is missing or differs.
  """
  try:
    with open(os.path.join(step_dir, CHECKSUM_FILE)) as f:
      recorded = dict(reversed(line.rstrip('\n').split('  ', 1)) for line in f if line.strip())
  except FileNotFoundError:
    return False
  actual = _file_digests(step_dir)
  for path, digest in recorded.items():
    if actual.get(path) != digest:
      what = 'is missing' if path not in actual else 'differs from its recorded checksum'
      raise CorruptCheckpointError(
          f'Checkpoint {step_dir} is corrupt: {path} {what} (bit rot, a bad disk or a '
          'half-copied folder); delete that step folder or copy it again.')
  return True


@dataclasses.dataclass(frozen=True)
class _TrainerStart:
  """The trainer's start, as the policies see a checkpoint (`PolicyCheckpointInfo`)."""

  time: datetime.datetime
  step: int = -1
  metrics: dict[str, Any] | None = None


@dataclasses.dataclass
class _SinceLastSaveOrStart(ocp.checkpoint_managers.SaveDecisionPolicy):
  """Orbax's time-based policy, with the trainer's start counting as a save.

  Orbax's `ContinuousCheckpointingPolicy` saves at once when no checkpoint
  exists (or the last one is old, as after a restart); here the interval also
  runs from when the trainer started. Its decision is the primary process's,
  shared with the others, so all processes save the same steps.
  """

  every_secs: int
  started: _TrainerStart = dataclasses.field(default_factory=lambda: _TrainerStart(
      datetime.datetime.now(tz=datetime.UTC)))

  def __post_init__(self):
    self._interval = ocp.checkpoint_managers.ContinuousCheckpointingPolicy(
        minimum_interval_secs=self.every_secs)

  def should_save(self, step, previous_steps, *, context) -> bool:
    if not previous_steps or previous_steps[-1].time < self.started.time:
      previous_steps = [*previous_steps, self.started]
    return self._interval.should_save(step, previous_steps, context=context)


def create_manager(workdir: str, keep: int | None = None, read_only: bool = False,
                   every_steps: int | None = None, every_secs: int = 0
                   ) -> ocp.CheckpointManager:
  """A manager of WORKDIR/checkpoints; `keep` None keeps every step.

  `manager.should_save(step)` is true every `every_steps` steps and, if
  `every_secs`, when that many seconds passed since the last save or since
  this call. Saves are asynchronous in a single process. With several
  processes they are synchronous: Orbax's barriers run device collectives from
  its background thread, which would deadlock against the training step's
  collectives.
  """
  # A read-only manager (the evaluator's, the notebook's) makes Orbax warn that it is read-only
  # as its options and itself are built: dropped at the source, since a notebook has no
  # terminal filter (terminal.QuietLibraries keeps Orbax's other warnings).
  absl_logger = logging_lib.getLogger('absl')
  quiet = terminal.QuietLibraries()
  absl_logger.addFilter(quiet)
  try:
    return _create_manager(workdir, keep, read_only, every_steps, every_secs)
  finally:
    absl_logger.removeFilter(quiet)


def _create_manager(workdir: str, keep: int | None, read_only: bool, every_steps: int | None,
                    every_secs: int) -> ocp.CheckpointManager:
  policies = []
  if every_steps:
    policies.append(ocp.checkpoint_managers.FixedIntervalPolicy(every_steps))
  if every_secs:
    policies.append(_SinceLastSaveOrStart(every_secs))
  # Orbax's preservation policy (its `max_to_keep` is deprecated): the latest `keep` steps (None:
  # every step). A read-only manager deletes nothing and takes none.
  preservation = None if read_only else ocp.checkpoint_managers.LatestN(n=keep)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=preservation,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=not read_only and jax.process_count() == 1,
      save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
  )
  # The items and how each is written and read (Orbax's handler registry; its `item_handlers`
  # is deprecated).
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item in _ITEMS:
    handler = ocp.StandardCheckpointHandler() if item == 'state' else ocp.JsonCheckpointHandler()
    save_args, restore_args = ((ocp.args.StandardSave, ocp.args.StandardRestore) if item == 'state'
                               else (ocp.args.JsonSave, ocp.args.JsonRestore))
    registry.add(item, save_args, handler)
    registry.add(item, restore_args, handler)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               handler_registry=registry)


# What each checkpoint holds: the state (arrays) and three JSON documents.
_ITEMS = ('state', 'config', 'dataset', 'history')


def save(manager: ocp.CheckpointManager, state: Any, config: ml_collections.ConfigDict,
         dataset_info: dict[str, Any], earlier_steps: list[int]) -> None:
  """Starts an asynchronous save of `state` (host arrays) at `state.step`.

  `earlier_steps`: the steps of this run's earlier checkpoints. Raises
  `CheckpointWriteError` if the save (or the previous one, still finishing)
  fails.
  """
  step = train_state.step_number(state)
  # Orbax finishes the previous save first; its failure is that step's.
  wait_until_finished(manager, earlier_steps[-1] if earlier_steps else None)
  with _write_errors(manager, step):
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            dataset=ocp.args.JsonSave(dataset_info),
            history=ocp.args.JsonSave({'earlier_steps': [int(s) for s in earlier_steps]}),
        ),
        force=True,
    )


def wait_until_finished(manager: ocp.CheckpointManager, step: int | None) -> None:
  """Waits for the save of `step` in flight; raises `CheckpointWriteError` if it failed."""
  with _write_errors(manager, step):
    manager.wait_until_finished()


@contextlib.contextmanager
def _write_errors(manager: ocp.CheckpointManager, step: int | None):
  """Turns a failed save (disk full, folder gone or read-only) into one sentence."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    reason = f'{type(e).__name__}: {e}'.splitlines()[0]
    try:
      manager.reload()
      intact = manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      intact = None
    kept = (f'the checkpoint of step {intact} is intact and a restart resumes from it'
            if intact is not None else 'no finished checkpoint is left')
    which = f'of step {step} ' if step is not None else ''
    raise CheckpointWriteError(
        f'Writing the checkpoint {which}in {manager.directory} failed ({reason}); {kept}; '
        'free disk space or make the folder writable, then run the same command again.'
    ) from e


def read_earlier_steps(manager: ocp.CheckpointManager, step: int) -> list[int]:
  """The steps of the checkpoints the trainer saved before `step`."""
  restored = manager.restore(step, args=ocp.args.Composite(history=ocp.args.JsonRestore()))
  return list(restored.history['earlier_steps'])


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/conv1/kernel': shape, ...}; saved metadata and dataclasses alike."""
  def name(entry) -> str:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(entry, attribute):
        return str(getattr(entry, attribute))
    return str(entry)

  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(name(e) for e in path): tuple(leaf.shape) for path, leaf in flat}


def _config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = ''
                        ) -> list[str]:
  differences = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      differences += _config_differences(a, b, f'{prefix}{key}.')
    elif a != b:
      differences.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return differences


class UnreadableCheckpointError(UserError):
  """A checkpoint step that cannot be read, or not into the state this config gives."""


def read_dataset_info(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """What the checkpoint of `step` records of its training split (`datasets.Split.info`)."""
  try:
    restored = manager.restore(step, args=ocp.args.Composite(dataset=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableCheckpointError(
        f'Checkpoint {os.path.join(str(manager.directory), str(step))} cannot be read '
        f'({type(e).__name__}: {e}); delete that step folder to fall back to the previous '
        'checkpoint.') from e
  return dict(restored.dataset)


def read_saved_config(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The config saved with `step`, in today's field names (`validation.upgrade_saved_config`)."""
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return validation.upgrade_saved_config(restored.config)


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A checkpoint as read: its step, state (host arrays), saved config and training split."""

  step: int
  state: Any
  config: ml_collections.ConfigDict
  dataset: dict[str, Any]


Template = Any  # a state's shapes, or a function (saved config, dataset info) -> them


def load(manager: ocp.CheckpointManager, step: int, template: Template,
         config: ml_collections.ConfigDict | None = None, *, verified: bool = False,
         check: Callable[[ml_collections.ConfigDict, dict[str, Any]], None] | None = None
         ) -> Loaded:
  """The one way a checkpoint is read: by the evaluator, the notebook API and a resume.

  Verifies the step's checksums (`CorruptCheckpointError`; skipped where the
  caller just did, `verified`), reads the saved config (in today's fields)
  and what the step records of its training split, lets `check(saved config,
  dataset info)` refuse them before the arrays are read, then restores the
  state laid out like `template` (or `template(saved config, dataset info)`).
  A state of other shapes than `template`'s is refused naming the config
  fields that differ from `config` (default: the saved one); a step that
  cannot be read is `UnreadableCheckpointError`.
  """
  where = os.path.join(str(manager.directory), str(step))
  if not verified and not verify(where):
    logging.info('Checkpoint %s has no recorded checksums; read unverified.', where)
  dataset = read_dataset_info(manager, step)
  try:
    saved = ml_collections.ConfigDict(read_saved_config(manager, step))
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableCheckpointError(
        f'Checkpoint {where} has no readable config ({type(e).__name__}: {e}); delete that step '
        'folder to fall back to the previous checkpoint.') from e
  if check is not None:
    check(saved, dataset)
  if callable(template):
    template = template(saved, dataset)
  state = _restore_state(manager, step, template, config or saved, where)
  return Loaded(step=step, state=state, config=saved, dataset=dataset)


def _restore_state(manager: ocp.CheckpointManager, step: int, template: Any,
                   config: ml_collections.ConfigDict, where: str) -> Any:
  """The state saved at `step` as host arrays, laid out like `template`; see `load`."""
  try:
    saved_shapes = _shapes(manager.item_metadata(step)['state'])
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableCheckpointError(
        f'Checkpoint {where} cannot be read ({type(e).__name__}: {e}); delete that step '
        'folder to fall back to the previous checkpoint.'
    ) from e
  if saved_shapes != _shapes(template):
    try:
      differences = _config_differences(
          read_saved_config(manager, step), json.loads(config.to_json_best_effort()))
    except Exception:  # pylint: disable=broad-except
      differences = ['(saved config unreadable)']
    raise UnreadableCheckpointError(
        f'{manager.directory} holds a model with other parameter shapes than this config '
        f'gives (config changes: {"; ".join(differences) or "none"}); use a new --workdir '
        'or the config it was trained with.'
    )
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableCheckpointError(
        f'Checkpoint {where} cannot be restored ({type(e).__name__}: {e}); delete that step '
        'folder to fall back to the previous checkpoint.'
    ) from e
  return jax.tree.map(np.asarray, restored.state)


def sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def mark_train_complete(workdir: str, step: int) -> None:
  """Tells evaluators that `step` is the final checkpoint."""
  path = layout.path(workdir, layout.TRAIN_COMPLETE)
  with open(path + '.tmp', 'w') as f:
    json.dump({'final_step': step, 'time': time.time()}, f)
  os.replace(path + '.tmp', path)


def clear_train_complete(workdir: str) -> None:
  path = layout.path(workdir, layout.TRAIN_COMPLETE)
  if os.path.exists(path):
    logging.info('Training continues past the old final step: removing %s.', path)
    os.remove(path)


def final_step(workdir: str) -> int | None:
  """The final step written by `mark_train_complete`, or None if training runs."""
  try:
    with open(layout.path(workdir, layout.TRAIN_COMPLETE)) as f:
      return int(json.load(f)['final_step'])
  except FileNotFoundError:
    return None
