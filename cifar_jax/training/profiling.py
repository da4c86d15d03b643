"""Profiling on demand: a `jax.profiler` trace of chosen training steps.

`config.profile_steps = (start, count)` traces the calls that run steps
start+1 .. start+count (with `steps_per_call` > 1, whole calls) into
WORKDIR/profile: `plugins/profile/<run>/*.xplane.pb` for TensorBoard's profile
plugin and `*.trace.json.gz` for https://ui.perfetto.dev. Each call is
annotated as a training step (`StepTraceAnnotation`, numbered by its first
step), so the trace viewer shows one block per step. `()` (the default)
traces nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

from absl import logging
import jax

from cifar_jax.core import fields as spec
from cifar_jax.core import layout
from cifar_jax.core.errors import UserError


def _check_profile(c: spec.Checker, path: str) -> None:
  profile = c.get(path)
  if not isinstance(profile, (tuple, list)) or (profile and (
      len(profile) != 2 or not all(isinstance(x, int) for x in profile)
      or profile[0] < 0 or profile[1] < 1)):
    raise UserError(f'config.profile_steps is {profile}; use () (off) or (start, count) with '
                    'start >= 0 and count >= 1.')


FIELDS = {'profile_steps': spec.Field((), _check_profile, '(start, count) traced; (): off')}
spec.declare(__name__, FIELDS)


class StepProfiler:
  """Starts the trace before the first chosen step and stops it after the last.

  `profile_steps` is () or (start, count), count >= 1 (`validation` checks it).
  """

  def __init__(self, profile_steps: tuple[int, ...], workdir: str, enabled: bool = True):
    profile_steps = tuple(profile_steps)
    self._range = (profile_steps[0], profile_steps[0] + profile_steps[1]) if profile_steps else None
    self.directory = layout.path(workdir, layout.PROFILE)
    self._enabled = enabled
    self._tracing = False

  @contextlib.contextmanager
  def call(self, first_step: int, last_step: int):
    """Wraps the call that runs steps first_step+1 .. last_step."""
    wanted = (self._enabled and self._range is not None
              and first_step < self._range[1] and last_step > self._range[0])
    if wanted and not self._tracing:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self._tracing = True
    if not self._tracing:
      yield
      return
    with jax.profiler.StepTraceAnnotation('train', step_num=first_step + 1):
      yield

  def should_stop(self, last_step: int) -> bool:
    """True after the call that reached the last chosen step."""
    return self._tracing and last_step >= self._range[1]

  def stop_after(self, outputs: Any) -> None:
    """Stops the trace once the device work behind `outputs` has finished."""
    jax.block_until_ready(outputs)  # the trace ends when the device work does
    self.stop()
    logging.info('Profile of steps %d-%d in %s (TensorBoard: profile tab; or open the '
                 '.trace.json.gz in ui.perfetto.dev).', self._range[0] + 1, self._range[1],
                 self.directory)

  def stop(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
