""".ci/run: the script CI runs parses as a whole (bash reads it as it goes, so a quote left
open late in it fails only after the half hour before it), and it keeps its checks."""

import os
import subprocess

from tests.conftest import REPO_ROOT

CI_RUN = os.path.join(REPO_ROOT, '.ci', 'run')


def test_the_ci_script_parses():
  result = subprocess.run(['bash', '-n', CI_RUN], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr


def test_the_newest_stack_fails_on_the_projects_deprecated_calls():
  with open(CI_RUN) as f:
    lines = [line for line in f if 'newest/bin/python" -m pytest -q' in line]
  assert lines and all(line.startswith('CIFAR_JAX_STRICT_DEPRECATIONS=1 ') for line in lines)
