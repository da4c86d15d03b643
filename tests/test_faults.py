"""benchmarks/faults.py: a small fault-injection run (its full counts are in docs/preemption.md)."""

import os
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.test_main import TINY_FLAGS

sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import faults  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.slow
def test_kills_and_a_sigterm_leave_the_run_bit_identical_and_scored_once(tmp_path, capsys):
  config, *overrides = TINY_FLAGS
  report = faults.run(
      config.removeprefix('--config='), steps=1500, sigkills=2, sigterms=1,
      evaluator_kills=1, workdir=str(tmp_path), seed=1, min_delay=1.0, max_delay=4.0,
      overrides=[*overrides, '--config.checkpoint_every_steps=100',
                 '--config.checkpoint_every_secs=1'])
  faults.print_report(report)
  assert report['passed'], capsys.readouterr().out
  assert report['checks'] == {'bit_identical': True, 'faults_handled': True,
                              'no_step_scored_twice': True, 'final_step_scored': True}
  assert (report['sigkills'], report['sigterms'], report['evaluator_kills']) == (2, 1, 1)
  (sigterm,) = [f for f in report['faults'] if f['signal_name'] == 'SIGTERM']
  assert sigterm['exit_status'] == 143 and sigterm['resumed_from'] == sigterm['saved_step']
  assert sigterm['saved_step'] >= sigterm['signal_step']
  assert capsys.readouterr().out.splitlines()[-1].startswith('{"passed": true')
