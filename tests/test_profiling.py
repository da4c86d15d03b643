"""profiling: a trace of the chosen training steps, annotated per step."""

import glob
import gzip
import json
import os

import pytest

from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.run import train
from tests.conftest import tiny_config


@pytest.mark.slow
def test_traces_the_chosen_steps_with_step_annotations(tmp_path):
  workdir = str(tmp_path / 'run')
  # Steps 4-6, 2 steps per call, calls ending on the log step 5: the calls 3-4, 5 and 6-7,
  # each numbered by its first step.
  train.train_and_evaluate(tiny_config(profile_steps=(3, 3), steps_per_call=2), workdir,
                           evaluate_in_process=False)
  (run,) = glob.glob(os.path.join(workdir, 'profile', 'plugins', 'profile', '*'))
  assert glob.glob(os.path.join(run, '*.xplane.pb'))  # TensorBoard's profile plugin
  with gzip.open(os.path.join(run, 'perfetto_trace.json.gz')) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  steps = sorted(int(e['args']['step_num']) for e in events if e.get('name') == 'train')
  assert steps == [3, 5, 6]
  assert any(e.get('ph') == 'X' and 'convolution' in e.get('name', '') for e in events)


def test_no_profile_by_default_and_bad_ranges_are_user_errors(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_train_steps=2), workdir, evaluate_in_process=False)
  assert not os.path.exists(os.path.join(workdir, 'profile'))
  for bad in ((5,), (-1, 2), (0, 0)):
    with pytest.raises(UserError, match=r'config.profile_steps is .*; use \(\) \(off\)'):
      validation.validate(tiny_config(profile_steps=bad))
