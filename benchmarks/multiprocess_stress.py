r"""Runs the documented multi-process command N times in a row and counts what happened.

  python benchmarks/multiprocess_stress.py [--runs=20] [--num_processes=2]
      [--devices_per_process=2] [--timeout_secs=240] [--config=experiments/smoke.py]
      [--config.FIELD=VALUE ...]

Each run starts `--num_processes` trainer processes of `python -m cifar_jax.main`
(`--devices_per_process` fake CPU devices each, gloo collectives) on a fresh
WORKDIR and a fresh coordinator port, exactly as docs/multi_host.md's "Multiple GPUs and
multiple hosts" section does, and waits up to `--timeout_secs`. A run is

* ``completed``: every process exited 0 and the final checkpoint is there;
* ``error``: a process exited non-zero (its `error:` line is shown);
* ``hung``: the time limit passed; the processes are killed (SIGKILL).

Prints one row per run, a summary table and a machine-readable last line
(JSON). Exits 1 unless every run completed. `--config.*` flags are passed to
every process (e.g. `--config.num_train_steps=120` for shorter runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r': step (\d+), loss = ')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_once(args: argparse.Namespace, config_flags: list[str], workdir: str) -> dict:
  """One multi-process training run; returns its outcome."""
  port = free_port()
  env = {**os.environ,
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={args.devices_per_process}'}
  logs = [open(os.path.join(workdir, f'process_{i}.log'), 'w+')  # noqa: SIM115
          for i in range(args.num_processes)]
  started = time.time()
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', f'--config={args.config}',
       *config_flags, f'--coordinator_address=127.0.0.1:{port}',
       f'--num_processes={args.num_processes}', f'--process_id={i}'],
      cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
      for i, log in enumerate(logs)]
  deadline = started + args.timeout_secs
  while time.time() < deadline and any(p.poll() is None for p in processes):
    time.sleep(0.2)
  hung = any(p.poll() is None for p in processes)
  for p in processes:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.wait()
  seconds = time.time() - started
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  steps = [int(s) for s in STEP_LINE.findall(outputs[0])]
  errors = [line for out in outputs for line in out.splitlines() if line.startswith('error:')]
  if hung:
    outcome = 'hung'
  elif all(p.returncode == 0 for p in processes) and os.path.exists(
      os.path.join(workdir, 'train_complete')):
    outcome = 'completed'
  else:
    outcome = 'error'
  return {'outcome': outcome, 'seconds': round(seconds, 1),
          'last_logged_step': steps[-1] if steps else None,
          'return_codes': [p.returncode for p in processes],
          'error': errors[0] if errors else None}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--runs', type=int, default=20)
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=2)
  parser.add_argument('--timeout_secs', type=float, default=240.0)
  parser.add_argument('--config', default='experiments/smoke.py')
  parser.add_argument('--keep', action='store_true', help='keep the WORKDIRs and logs')
  args, config_flags = parser.parse_known_args()
  unknown = [f for f in config_flags if not f.startswith('--config.')]
  if unknown:
    parser.error(f'unknown arguments {unknown}; only --config.FIELD=VALUE is passed through')
  root = tempfile.mkdtemp(prefix='multiprocess_stress_')
  results = []
  for run in range(1, args.runs + 1):
    workdir = os.path.join(root, f'run_{run}')
    os.makedirs(workdir)
    result = run_once(args, config_flags, workdir)
    results.append(result)
    print(f'run {run:3d}: {result["outcome"]:9s} {result["seconds"]:7.1f} s, last logged step '
          f'{result["last_logged_step"]}' + (f', {result["error"]}' if result['error'] else ''),
          flush=True)
    if not args.keep and result['outcome'] == 'completed':
      shutil.rmtree(workdir)
  counts = {k: sum(r['outcome'] == k for r in results) for k in ('completed', 'hung', 'error')}
  completed_seconds = sorted(r['seconds'] for r in results if r['outcome'] == 'completed')
  print()
  print('| runs | completed | hung | error | median s (completed) |')
  print('| --- | --- | --- | --- | --- |')
  median = completed_seconds[len(completed_seconds) // 2] if completed_seconds else float('nan')
  print(f'| {len(results)} | {counts["completed"]} | {counts["hung"]} | {counts["error"]} | '
        f'{median:.1f} |')
  if any(r['outcome'] != 'completed' for r in results):
    print(f'logs of the runs that did not complete: {root}')
  elif not args.keep:
    shutil.rmtree(root)
  print(json.dumps({'runs': len(results), **counts, 'median_seconds': median,
                    'num_processes': args.num_processes,
                    'devices_per_process': args.devices_per_process, 'config': args.config,
                    'config_flags': config_flags}))
  return 0 if counts['completed'] == len(results) else 1


if __name__ == '__main__':
  sys.exit(main())
