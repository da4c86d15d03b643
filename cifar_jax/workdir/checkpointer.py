"""WORKDIR/checkpoints as one training run uses it: resume, the save policy, checksums, history.

The reading and writing of one checkpoint (Orbax, checksums, `load`) is
`checkpoints`; this is the trainer's side of it.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections

from cifar_jax.core import fields as spec
from cifar_jax.core import layout, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.training import train_state
from cifar_jax.workdir import checkpoints, pretrained

FIELDS = {
    'checkpoint_every_steps': spec.Field(1000, spec.integer(1), 'checkpoints'),
    'checkpoint_every_secs': spec.Field(600.0, spec.number(0.0, hint=(
        'config.checkpoint_every_secs is {value}; use 0 (save by steps only) or a positive '
        'number of seconds.')), 'checkpoints by time'),
    'keep_checkpoints': spec.Field(5, spec.integer(1), 'the newest kept'),
}
spec.declare(__name__, FIELDS)


class Checkpointer:
  """WORKDIR/checkpoints as one training run uses it (a context manager).

  `restore_latest` resumes; `should_save(step)` is the manager's policy
  (every `config.checkpoint_every_steps` and `config.checkpoint_every_secs`);
  `save` writes the host state with the config, the class names and the steps
  saved before it. Leaving the context waits for the last save, which raises
  `CheckpointWriteError` if it failed; leaving on an error lets a save in
  flight finish without hiding that error.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict,
               dataset_info: dict[str, Any]):
    self._config = config
    self._dataset_info = dataset_info
    self.manager = checkpoints.create_manager(workdir, keep=config.keep_checkpoints,
                                  every_steps=config.checkpoint_every_steps,
                                  every_secs=config.checkpoint_every_secs)
    self.directory = str(self.manager.directory)
    self.saved_steps: list[int] = []  # this run's checkpoints, oldest first
    self._unsealed: list[int] = []  # saved steps whose checksums are not recorded yet

  def restore_latest(self, fresh: Any) -> Any:
    """The newest intact checkpoint's state (host arrays), or, where there is none, `fresh`
    (with the weights of `config.init_from`, if it names any: `pretrained`).

    A corrupt newer step is moved aside with one warning line.
    """
    latest = self._latest_intact()
    if latest is None:
      if not self._config.init_from:
        return fresh
      return pretrained.initialise(fresh, self._config, len(self._dataset_info['class_names']))
    state = checkpoints.load(self.manager, latest, fresh, self._config, verified=True,
                 check=self._check_resumable).state
    self.saved_steps = [*checkpoints.read_earlier_steps(self.manager, latest), latest]
    logging.info('Resuming from checkpoint step %d in %s.', latest, self.directory)
    return state

  def _check_resumable(self, saved_config: ml_collections.ConfigDict,
                       trained: dict[str, Any]) -> None:
    """Refuses to resume a sweep's runs under other values (the shapes alone may agree), or on
    other classes."""
    self._check_same_sweep(saved_config)
    if list(trained['class_names']) != list(self._dataset_info['class_names']):
      raise UserError(
          f'{self.directory} was trained on classes {list(trained["class_names"])} but the '
          f'training split now has {list(self._dataset_info["class_names"])}, so resuming would '
          'mix two meanings of each label; use a new --workdir or the data it was trained on.')

  def _check_same_sweep(self, saved_config: ml_collections.ConfigDict) -> None:
    saved = sweeps.points(saved_config)
    wanted = sweeps.points(self._config)
    if saved != wanted:
      def show(points):
        return '; '.join(sweeps.describe(p) for p in points) if points != [{}] else 'no sweep'
      raise UserError(
          f'{self.directory} holds the runs of {show(saved)}, but this config asks for '
          f'{show(wanted)}; resuming would continue those runs under other values. Use a new '
          '--workdir for another sweep, or the config.sweep it was trained with.')

  def _latest_intact(self) -> int | None:
    """The newest step whose files match their checksums; corrupt newer ones moved aside.

    Every process verifies (the same files, the same verdict); process 0 moves.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        checkpoints.verify(self.step_directory(step))
        return step
      except checkpoints.CorruptCheckpointError as e:
        aside = os.path.join(os.path.dirname(self.directory), layout.CORRUPT_CHECKPOINTS,
                             f'{step}-{time.time():.0f}')  # a later corruption of N is another
        checkpoints.sync_processes(f'cifar_jax_corrupt_{step}_verified')
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          os.replace(self.step_directory(step), aside)
          earlier = [s for s in self.manager.all_steps() if s < step]
          logging.warning('%s Moved it to %s; resuming from %s.', e, aside,
                          f'step {max(earlier)}' if earlier else 'the start')
        checkpoints.sync_processes(f'cifar_jax_corrupt_{step}_moved')
        self.manager.reload()
    return None

  def seal_finished(self) -> None:
    """Records the checksums of the saves that have finished (at every call boundary)."""
    if self._unsealed and not self.manager.is_saving_in_progress():
      self._seal()

  def _seal(self) -> None:
    unsealed, self._unsealed = self._unsealed, []
    if jax.process_index() != 0:
      return
    for step in unsealed:
      try:
        checkpoints.seal(self.step_directory(step))
      except OSError as e:
        raise checkpoints.CheckpointWriteError(
            f'Writing the checksums of the checkpoint of step {step} in {self.directory} failed '
            f'({e.strerror}); the checkpoint itself is intact (a restart restores it '
            'unverified); free disk space or make the folder writable, then run the same '
            'command again.') from e

  @property
  def last_saved(self) -> int | None:
    return self.saved_steps[-1] if self.saved_steps else None

  def intact(self) -> str:
    """Which checkpoint a restart would resume from, for error messages."""
    if self.last_saved is None:
      return 'no checkpoint was written yet'
    return f'the checkpoint of step {self.last_saved} in {self.directory} is intact'

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def save(self, state: Any) -> None:
    """Starts the save of `state` (host arrays) at `state.step`."""
    self.wait()  # the previous save first: its failure is its own, and it is sealed
    checkpoints.save(self.manager, state, self._config, self._dataset_info, self.saved_steps)
    self.saved_steps = [*self.saved_steps, train_state.step_number(state)]
    self._unsealed.append(self.saved_steps[-1])

  def wait(self) -> None:
    """Waits for the save in flight and records the checksums of what is saved."""
    checkpoints.wait_until_finished(self.manager, self.last_saved)
    self._seal()

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc_type is None:
      self.wait()
      self.manager.close()
      return
    # Lets a save in flight finish; a failure of its own would hide this error.
    with contextlib.suppress(Exception):
      self.manager.close()
