r"""Seconds from the command to a trainer's first step and to an evaluator's first score.

  python benchmarks/startup.py --config=experiments/smoke.py
  python benchmarks/startup.py --config=experiments/cifar10_jpeg.py --repeats=3

Runs the command line as a user does (`python -m cifar_jax.main`), in a fresh
WORKDIR, and times, from the moment the command starts:

* cold: a new run (nothing compiled yet, no checkpoint);
* warm restart: the same command again, resuming from its checkpoint for one
  more step (the compilation cache in WORKDIR filled by the cold run);
* evaluator: `--mode=eval --config.eval.run_once=True` on that WORKDIR, cold
  (its own first compilation; run first) and warm (again).

For the trainer it splits the time into: Python imports and flag parsing
(until the config is logged), then the trainer's own stages as it logs them
(data, model, restore, devices and writers, first step), then the exit (the
final save). Pass `--repo` to time another checkout (e.g. an older commit
for a before/after comparison). Prints a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = re.compile(r'from the start of training: (.*)\.$')


def _timed_run(command: list[str], cwd: str, env: dict[str, str]) -> dict[str, float | str]:
  """Runs `command`; seconds from its start to the log lines that mark each stage."""
  started = time.monotonic()
  process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  marks: dict[str, float | str] = {}
  lines: list[str] = []

  def watch(stream):
    for line in stream:
      now = time.monotonic() - started
      lines.append(line)
      if 'Config:' in line:
        marks.setdefault('config logged', now)
      elif 'First step (compilation included)' in line:
        marks.setdefault('first step', now)
        match = STAGES.search(line.strip())
        if match:
          marks['stages'] = match.group(1)
      elif 'precision @ 1 =' in line:
        marks.setdefault('first score', now)

  threads = [threading.Thread(target=watch, args=(s,)) for s in (process.stdout, process.stderr)]
  for thread in threads:
    thread.start()
  process.wait()
  for thread in threads:
    thread.join()
  marks['exit'] = time.monotonic() - started
  if process.returncode != 0:
    sys.exit(f'error: {" ".join(command)} failed ({process.returncode}):\n'
             + ''.join(lines[-20:]))
  return marks


def _stage_seconds(stages: str) -> dict[str, float]:
  """'data 0.52 s, model 0.81 s' -> {'data': 0.52, 'model': 0.81}."""
  result = {}
  for part in stages.split(', '):
    name, seconds, _ = part.rsplit(' ', 2)
    result[name] = float(seconds)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='experiments/smoke.py')
  parser.add_argument('--repo', default=REPO_ROOT, help='the checkout to time')
  parser.add_argument('--python', default=sys.executable)
  parser.add_argument('--steps', type=int, default=10, help='steps of the cold run')
  parser.add_argument('--repeats', type=int, default=3, help='warm restarts (median reported)')
  parser.add_argument('--workdir', default='', help='default: a temporary folder, removed')
  args, overrides = parser.parse_known_args()
  if bad := [a for a in overrides if not a.startswith('--config.')]:
    parser.error(f'unrecognized arguments: {" ".join(bad)} (only --config.X=Y pass through)')

  workdir = args.workdir or tempfile.mkdtemp(prefix='cifar_jax_startup_')
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  # --verbose: the stages are read from the INFO lines (the terminal shows them only then).
  common = [args.python, '-m', 'cifar_jax.main', f'--workdir={workdir}', '--verbose',
            f'--config={os.path.join(args.repo, args.config)}', '--config.eval_every_steps=0',
            *overrides]
  try:
    rows = {}
    rows['trainer, cold'] = _timed_run(
        [*common, f'--config.num_train_steps={args.steps}'], args.repo, env)
    rows['evaluator, cold'] = _timed_run(
        [*common, '--mode=eval', '--config.eval.run_once=True'], args.repo, env)
    warm = [_timed_run([*common, f'--config.num_train_steps={args.steps + 1 + k}'], args.repo,
                       env) for k in range(args.repeats)]
    rows['trainer, warm restart'] = _median_marks(warm)
    shutil.rmtree(os.path.join(workdir, 'eval'), ignore_errors=True)
    rows['evaluator, warm'] = _timed_run(
        [*common, '--mode=eval', '--config.eval.run_once=True'], args.repo, env)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  print(f'{args.config} ({args.repo}), seconds from the command:')
  stage_names = []
  for marks in rows.values():
    for name in _stage_seconds(marks.get('stages', '')) if marks.get('stages') else {}:
      if name not in stage_names:
        stage_names.append(name)
  header = ['run', 'imports+flags', *stage_names, 'to first step/score', 'to exit']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  summary = {}
  for name, marks in rows.items():
    stages = _stage_seconds(marks['stages']) if marks.get('stages') else {}
    first = marks.get('first step', marks.get('first score'))
    cells = [name, f'{marks.get("config logged", float("nan")):.2f}',
             *[f'{stages[s]:.2f}' if s in stages else '' for s in stage_names],
             f'{first:.2f}' if first is not None else 'n/a', f'{marks["exit"]:.2f}']
    print('| ' + ' | '.join(cells) + ' |')
    summary[name] = {'first': first, 'exit': marks['exit']}
  print(json.dumps({'config': args.config, 'repo': args.repo, 'seconds': summary}))


def _median_marks(runs: list[dict[str, float | str]]) -> dict[str, float | str]:
  """The run whose time to the first step is the median (its stages stay consistent)."""
  middle = statistics.median_low([r['first step'] for r in runs])
  return next(r for r in runs if r['first step'] == middle)


if __name__ == '__main__':
  main()
