"""Keeps committed notebooks free of outputs.

  python .ci/strip_notebooks.py            # strip every experiments/**/*.ipynb in place
  python .ci/strip_notebooks.py --check    # exit 1 naming any notebook that has outputs

Outputs, execution counts and widget state are removed; cells and their
metadata stay. CI runs the check (tests/test_notebooks.py does too).
"""

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def strip(notebook: dict) -> dict:
  for cell in notebook.get('cells', []):
    if cell.get('cell_type') == 'code':
      cell['outputs'] = []
      cell['execution_count'] = None
    cell.get('metadata', {}).pop('execution', None)
  notebook.get('metadata', {}).pop('widgets', None)
  return notebook


def notebooks() -> list[str]:
  return sorted(glob.glob(os.path.join(ROOT, 'experiments', '**', '*.ipynb'), recursive=True))


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--check', action='store_true')
  args = parser.parse_args()
  dirty = []
  for path in notebooks():
    with open(path) as f:
      text = f.read()
    stripped = json.dumps(strip(json.loads(text)), indent=1, ensure_ascii=False) + '\n'
    if json.loads(stripped) != json.loads(text):
      dirty.append(os.path.relpath(path, ROOT))
      if not args.check:
        with open(path, 'w') as f:
          f.write(stripped)
  if args.check and dirty:
    print(f'Notebooks with outputs: {", ".join(dirty)}; run python .ci/strip_notebooks.py '
          'and commit again.', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
