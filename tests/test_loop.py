"""The loop: calls planned from the actions' periods, actions on their cadence, what they see."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.core.errors import UserError
from cifar_jax.training import loop


def _ends(start, end, steps_per_call, periods):
  return [call.end for call in loop.plan_calls(start, end, steps_per_call, periods)]


def test_calls_end_on_every_period_and_the_last_step():
  assert _ends(0, 20, 4, [5, 10, 6]) == [4, 5, 6, 10, 12, 15, 18, 20]
  assert _ends(0, 7, 1, []) == [1, 2, 3, 4, 5, 6, 7]
  assert _ends(0, 7, 100, [0]) == [7]  # period 0: no boundary of its own
  # A resumed run (step 9, no multiple of 4) makes the calls a straight run makes from 9.
  assert _ends(9, 20, 4, [5, 10]) == [10, 14, 15, 19, 20]
  assert _ends(20, 20, 4, [5]) == []


class _FakeSetup:
  """`parallel_steps` adds the call's steps to a counter; loss = 1 per step, nan at `bad`."""

  def __init__(self, bad_step=None):
    self.batches = types.SimpleNamespace(indices=lambda start, n: np.zeros((1, n, 2), np.int32))
    self.bad_step = bad_step
    self.calls = []

  def parallel_steps(self, state, data, indices):
    del data
    first = int(state['step'][0])
    steps = np.arange(first + 1, first + indices.shape[1] + 1)
    self.calls.append((first, int(steps[-1])))
    loss = np.where(steps == self.bad_step, np.nan, steps.astype(np.float32))
    return {'step': state['step'] + len(steps)}, {'loss': jnp.asarray(loss[None])}


class _FakeFeed:
  """`placement.DeviceFeed`'s protocol: each call with no data and the setup's indices."""

  def __init__(self, setup):
    self.setup = setup

  def calls(self, calls):
    for call in calls:
      yield call, None, self.setup.batches.indices(call.start, call.num_steps)


class _Recorder(loop.PeriodicAction):
  def __init__(self, every_steps, at_final_step=True):
    self.every_steps, self.at_final_step = every_steps, at_final_step
    self.acted, self.wrapped, self.metrics = [], [], []

  def around(self, call):
    self.wrapped.append((call.start, call.end))
    return super().around(call)

  def __call__(self, progress):
    self.acted.append(progress.step)
    self.metrics.append(progress.metrics()['loss'])


def _progress(start, end):
  return loop.Progress({'step': jnp.asarray([start])}, start, end, examples_per_step=2,
                       describe_intact=lambda: 'the checkpoint of step 4 is intact')


def test_actions_act_on_their_steps_and_see_the_mean_since_the_last_look():
  setup = _FakeSetup()
  every_three, final_only = _Recorder(3), _Recorder(0)
  progress = loop.run(setup, _progress(0, 10), feed=_FakeFeed(setup), steps_per_call=2,
                      actions=[every_three, final_only])
  assert setup.calls == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 8), (8, 9), (9, 10)]
  assert every_three.acted == [3, 6, 9, 10] and final_only.acted == [10]
  assert every_three.wrapped == setup.calls  # `around` wraps every call
  # Means of the steps since the previous look, whoever looked: 1..3, 4..6, 7..9, 10.
  assert every_three.metrics == [2.0, 5.0, 8.0, 10.0]
  assert final_only.metrics == [10.0]  # the same look, cached for the step
  assert progress.final and progress.step == 10


def test_a_non_finite_loss_stops_the_run_at_the_next_look():
  with pytest.raises(UserError, match=r'Training diverged: the loss became nan at step 5; the '
                                      r'checkpoint of step 4 is intact; lower config.learning'):
    setup = _FakeSetup(bad_step=5)
    loop.run(setup, _progress(0, 12), _FakeFeed(setup), 4, [_Recorder(6)])


def test_preemption_is_asked_for_every_step_and_seen_by_the_actions():
  asked = []

  class Preemption:
    def reached(self, step):
      asked.append(step)
      return step >= 5

  class StopOnPreemption(_Recorder):
    def due(self, progress):
      return progress.preempted

    def __call__(self, progress):
      super().__call__(progress)
      raise RuntimeError(f'stopped at {progress.step}')

  with pytest.raises(RuntimeError, match='stopped at 6'):
    setup = _FakeSetup()
    loop.run(setup, _progress(0, 12), _FakeFeed(setup), 3, [StopOnPreemption(0)], Preemption())
  assert asked == [1, 2, 3, 4, 5, 6]
