"""The trainer's periodic actions: which a run has; a new one added without touching the loop."""

import os
import types

import numpy as np
import pytest

from cifar_jax.core import layout, summaries
from cifar_jax.run import actions, train
from cifar_jax.training import loop
from tests.conftest import tiny_config


class LearningRateCurve(loop.PeriodicAction):
  """The docs' example of a new action: the learning rate of every step so far, as a scalar list."""

  every_steps = 6

  def __init__(self, run):
    self._run = run
    self.wrapped_calls = 0
    self.closed = False

  @classmethod
  def create(cls, run):
    return cls(run) if run.is_main else None

  def around(self, call):
    self.wrapped_calls += 1
    return super().around(call)

  def __call__(self, progress):
    rates = [float(self._run.setup.pieces.learning_rate_fn(s)) for s in range(progress.step)]
    self._run.writer.write_record({'step': progress.step, 'learning_rates': rates})

  def close(self):
    self.closed = True


@pytest.mark.slow
def test_a_new_action_gets_its_cadence_and_calls_end_on_its_steps(tmp_path, monkeypatch):
  created = []
  monkeypatch.setattr(actions, 'ACTIONS', (*actions.ACTIONS, _remembered(created)))
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_train_steps=20, steps_per_call=2), workdir,
                           evaluate_in_process=False)
  (action,) = created
  records = summaries.read_records(os.path.join(workdir, layout.METRICS))
  curves = [r for r in records if 'learning_rates' in r]
  assert [r['step'] for r in curves] == [6, 12, 18, 20]  # its period and the last step
  np.testing.assert_allclose(curves[-1]['learning_rates'], [0.05] * 20)  # smoke: constant 0.05
  # Calls of 2 steps also end on 5 (log) and 6 (it): 2 4 5 6 8 10 12 14 15 16 18 20.
  assert action.wrapped_calls == 12 and action.closed


def _remembered(created):
  class Remembered(LearningRateCurve):
    @classmethod
    def create(cls, run):
      action = super().create(run)
      created.append(action)
      return action
  return Remembered


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_each_mode_has_its_actions(tmp_path, monkeypatch):
  created = []
  original = actions.create
  monkeypatch.setattr(actions, 'create', lambda run: created.append(original(run)) or created[-1])
  train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / 'run'))
  assert [type(action).__name__ for action in created[0]] == [
      'StartupReport', 'InputImages', 'LogLine', 'Histograms', 'SaveCheckpoint', 'Evaluate']
  # The others only where they are asked for: a restart, --mode=train, config.profile_steps.
  run = types.SimpleNamespace(config=tiny_config(profile_steps=(3, 2)), workdir=str(tmp_path),
                              is_main=True, start_step=5, evaluate_in_process=False)
  assert actions.InputImages.create(run) is None and actions.Evaluate.create(run) is None
  assert isinstance(actions.Profile.create(run), actions.Profile)
  assert actions.Profile.create(types.SimpleNamespace(**{**vars(run), 'is_main': False})) is None
