"""Runs written by an earlier cifar_jax (tests/data/old_runs) still load, score and resume.

The fixtures were written by main 33c9fa5 (tests/data/old_runs/README.md):
today's code must restore them to the same arrays (fingerprints of the
parameters, EMA and BatchNorm statistics), score them to the precision the
evaluator gave then, and train on from them.
"""

import json
import os
import shutil
import sys

import pytest

from cifar_jax import experiment
from cifar_jax.run import evaluate
from tests.conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
from bit_identity import fingerprint  # noqa: E402

OLD_RUNS = os.path.join(REPO_ROOT, 'tests', 'data', 'old_runs')
with open(os.path.join(OLD_RUNS, 'expected.json')) as f:
  EXPECTED = json.load(f)
NAMES = sorted(EXPECTED)


def _copy(name, tmp_path):
  workdir = str(tmp_path / name)
  shutil.copytree(os.path.join(OLD_RUNS, name), workdir)
  return workdir


@pytest.mark.parametrize('name', NAMES)
def test_an_old_run_loads_to_the_same_arrays(name, tmp_path):
  run = experiment.load_checkpoint(_copy(name, tmp_path))
  assert run.step == EXPECTED[name]['step']
  assert {'params': fingerprint(run.state.params), 'ema': fingerprint(run.state.ema_params),
          'batch_stats': fingerprint(run.state.batch_stats)} == EXPECTED[name]['fingerprints']


def _scores(name, tmp_path):
  workdir = _copy(name, tmp_path)
  config = experiment.load_checkpoint(workdir).config
  config.eval.run_once = True
  config.compilation_cache_dir = ''
  (step, result), = evaluate.evaluate(config, workdir).items()
  return step, {'ema': [s.precision for s in result.ema], 'raw': [s.precision for s in result.raw]}


@pytest.mark.parametrize('name', NAMES)
def test_an_old_run_scores_as_it_did(name, tmp_path):
  assert _scores(name, tmp_path) == (EXPECTED[name]['step'], EXPECTED[name]['precision'])


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_an_old_run_resumes(name, tmp_path):
  workdir = _copy(name, tmp_path)
  config = experiment.load_checkpoint(workdir).config
  config.compilation_cache_dir = ''
  state = experiment.train(config, workdir, num_steps=EXPECTED[name]['step'] + 4,
                           evaluate_in_process=False)
  assert int(state.step.ravel()[0]) == EXPECTED[name]['step'] + 4
  assert experiment.load_checkpoint(workdir).step == EXPECTED[name]['step'] + 4
