"""Notebooks under experiments/ run top to bottom (smoke config) and are committed clean."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO_ROOT, 'experiments', '**', '*.ipynb'),
                             recursive=True))
STRIP = os.path.join(REPO_ROOT, '.ci', 'strip_notebooks.py')


def test_there_is_a_walkthrough():
  assert os.path.join(REPO_ROOT, 'experiments', 'notebooks', 'walkthrough.ipynb') in NOTEBOOKS


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_committed_without_outputs(path):
  with open(path) as f:
    notebook = json.load(f)
  for cell in notebook['cells']:
    if cell['cell_type'] == 'code':
      assert cell['outputs'] == [] and cell['execution_count'] is None, cell['source'][:80]


def test_strip_check_catches_outputs(tmp_path, monkeypatch):
  notebook = {'cells': [{'cell_type': 'code', 'source': 'print(1)', 'metadata': {},
                         'outputs': [{'output_type': 'stream', 'name': 'stdout', 'text': '1'}],
                         'execution_count': 1}], 'metadata': {}, 'nbformat': 4,
              'nbformat_minor': 5}
  sys.path.insert(0, os.path.dirname(STRIP))
  try:
    import strip_notebooks  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  stripped = strip_notebooks.strip(notebook)
  assert stripped['cells'][0]['outputs'] == [] and stripped['cells'][0]['execution_count'] is None
  result = subprocess.run([sys.executable, STRIP, '--check'], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_runs_top_to_bottom(path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  # The kernel is a fresh process: one real CPU device, like a user's notebook.
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setenv('PYTHONPATH', REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': os.path.dirname(path)}})
  client.execute()
  errors = [o for cell in notebook.cells if cell.cell_type == 'code'
            for o in cell.outputs if o.output_type == 'error']
  assert not errors
  text = json.dumps([cell.outputs for cell in notebook.cells if cell.cell_type == 'code'])
  assert 'image/png' in text and 'trained to step 300' in text
