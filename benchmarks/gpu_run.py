r"""The prepared GPU run: speed, time to accuracy, and the multi-GPU exercise, as one table.

  python benchmarks/gpu_run.py --data=/path/to/cifar10-jpeg-train.tar.gz

Needs only JAX (and the pure-Python packages cifar_jax installs); the data is
a CIFAR-10 image folder or archive (`cifar10_jpeg/train/<class>/NNNN.jpg`),
trained on `--train_split` and scored on `--eval_split`. Every run is the
command line a user types (`python -m cifar_jax.main` / `cifar_jax.benchmark`)
in its own process, so this driver never holds the GPU itself:

(a) `cifar_jax.benchmark` of the tutorial network for {float32, bfloat16} x
    {steps_per_call 1, 16}: train-step, end-to-end and eval images/s, compile.
(b) The tutorial recipe for `--tutorial_steps` (100,000) steps, scored by the
    evaluator as a second process on the same GPU (each process limited to
    `--memory_fraction` of the GPU's memory, as docs/gpus.md recommends); time
    from the trainer's start to the first score >= `--tutorial_target` (0.86)
    precision@1 (EMA), as the evaluator records it.
(c) airbench94 (`--airbench_config`): train and score once, time to the score
    and whether it reached `--airbench_target` (0.94).
(d) With 2+ devices, the tutorial's exercise: batch 64 x 2 devices vs 128 x 1
    (`benchmarks/multi_device.py`).

Prints one table (and the last line as JSON). `--tiny` shrinks every network
(for checking the script end to end on a CPU; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from cifar_jax import summaries  # noqa: E402  pylint: disable=g-import-not-at-top  (no JAX)

# --tiny: every network tiny, one device, no decoded-data cache (a CPU check of the script).
TINY = ['--config.num_devices=1', '--config.dataset.cache_dir=', '--config.eval.batch_size=64']
TINY_TUTORIAL = [*TINY, '--config.model.conv_features=8', '--config.model.local3_features=16',
                 '--config.model.local4_features=8', '--config.per_device_batch_size=16']
TINY_AIRBENCH = [*TINY, '--config.model.widths=(8,16,16)', '--config.model_init_examples=64',
                 '--config.per_device_batch_size=32']


class _Runner:
  """Runs commands from the repository root, logging each to WORKDIR/logs."""

  def __init__(self, workdir: str, python: str, env: dict[str, str]):
    self.workdir, self.python, self.env = workdir, python, env
    os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)

  def start(self, name: str, args: list[str], env: dict[str, str] | None = None
            ) -> subprocess.Popen:
    log = open(os.path.join(self.workdir, 'logs', f'{name}.log'), 'w')  # noqa: SIM115
    return subprocess.Popen([self.python, *args], cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**self.env, **(env or {})})

  def run(self, name: str, args: list[str], env: dict[str, str] | None = None) -> str:
    process = self.start(name, args, env)
    if process.wait() != 0:
      raise RuntimeError(f'{name} failed ({process.returncode}); see '
                         f'{os.path.join(self.workdir, "logs", name + ".log")}.')
    with open(os.path.join(self.workdir, 'logs', f'{name}.log')) as f:
      return f.read()


def _data_flags(args) -> list[str]:
  return [f'--config.dataset.path={os.path.abspath(args.data)}',
          f'--config.dataset.train_split={args.train_split}',
          f'--config.dataset.eval_split={args.eval_split}']


def benchmark_table(runner: _Runner, args) -> list[dict]:
  """(a): the tutorial network, {float32, bfloat16} x {steps_per_call 1, 16}."""
  rows = []
  for dtype in ('float32', 'bfloat16'):
    for steps_per_call in (1, 16):
      output = runner.run(f'benchmark_{dtype}_k{steps_per_call}', [
          '-m', 'cifar_jax.benchmark', '--config=experiments/cifar10_jpeg.py',
          *_data_flags(args), f'--config.model.dtype={dtype}',
          f'--config.steps_per_call={steps_per_call}', f'--steps={args.benchmark_steps}',
          f'--repeats={args.benchmark_repeats}',
          *([*TINY_TUTORIAL, '--matmul_size=128'] if args.tiny else [])])
      last = [line for line in output.splitlines() if line.startswith('train_step_img_per_s=')]
      figures = {k: float(v) for k, v in (item.split('=') for item in last[-1].split())}
      rows.append({'part': 'a', 'setting': f'tutorial net, {dtype}, steps_per_call '
                   f'{steps_per_call}', **figures})
  return rows


def _first_at_or_above(records: list[dict], target: float) -> dict | None:
  return next((r for r in records if r.get('status') == 'scored'
               and r['precision'] >= target), None)


def tutorial_time_to_accuracy(runner: _Runner, args) -> dict:
  """(b): the tutorial recipe, with the evaluator as a second process on the same device."""
  workdir = os.path.join(runner.workdir, 'tutorial')
  os.makedirs(workdir, exist_ok=True)
  checkpoints = args.tutorial_steps // args.tutorial_checkpoint_every + 1
  common = ['-m', 'cifar_jax.main', f'--workdir={workdir}',
            '--config=experiments/cifar10_jpeg.py', *_data_flags(args),
            f'--config.num_train_steps={args.tutorial_steps}',
            f'--config.checkpoint_every_steps={args.tutorial_checkpoint_every}',
            f'--config.keep_checkpoints={checkpoints}',  # the evaluator scores every one
            *(TINY_TUTORIAL if args.tiny else [])]
  memory = {'XLA_PYTHON_CLIENT_MEM_FRACTION': str(args.memory_fraction)}
  started = time.time()
  trainer = runner.start('tutorial_trainer', [*common, f'--config.steps_per_call='
                                              f'{args.tutorial_steps_per_call}'], memory)
  evaluator = runner.start('tutorial_evaluator', [*common, '--mode=eval',
                                                  '--config.eval.poll_secs=1'], memory)
  for name, process in (('tutorial_trainer', trainer), ('tutorial_evaluator', evaluator)):
    if process.wait() != 0:
      raise RuntimeError(f'{name} failed ({process.returncode}); see '
                         f'{os.path.join(runner.workdir, "logs", name + ".log")}.')
  train_seconds = _trained_seconds(workdir, started)
  records = summaries.read_records(os.path.join(workdir, 'eval', summaries.METRICS_FILE))
  scored = [r for r in records if r.get('status') == 'scored']
  hit = _first_at_or_above(scored, args.tutorial_target)
  return {'part': 'b', 'setting': f'tutorial recipe, {args.tutorial_steps} steps, '
          f'steps_per_call {args.tutorial_steps_per_call}, evaluator beside it',
          'train_seconds': train_seconds, 'final_precision': scored[-1]['precision'],
          'target': args.tutorial_target,
          'seconds_to_target': hit['wall_time'] - started if hit else None,
          'step_at_target': hit['step'] if hit else None}


def _trained_seconds(workdir: str, started: float) -> float:
  with open(os.path.join(workdir, 'train_complete')) as f:
    return json.load(f)['time'] - started


def airbench_time_to_accuracy(runner: _Runner, args) -> dict:
  """(c): an airbench config, trained and scored (with its TTA) in one process."""
  workdir = os.path.join(runner.workdir, 'airbench')
  started = time.time()
  runner.run('airbench', [
      '-m', 'cifar_jax.main', f'--workdir={workdir}', f'--config={args.airbench_config}',
      '--mode=train_and_eval', *_data_flags(args), '--config.eval_every_steps=0',
      *([f'--config.num_train_steps={args.airbench_steps}'] if args.airbench_steps else []),
      *(TINY_AIRBENCH if args.tiny else [])])
  records = summaries.read_records(os.path.join(workdir, 'eval', summaries.METRICS_FILE))
  final = records[-1]
  return {'part': 'c', 'setting': f'{os.path.basename(args.airbench_config)} (train + TTA score)',
          'train_seconds': _trained_seconds(workdir, started),
          'seconds_to_score': final['wall_time'] - started,
          'final_precision': final['precision'], 'target': args.airbench_target,
          'reached': final['precision'] >= args.airbench_target}


def multi_device_exercise(runner: _Runner, args, devices: int) -> dict:
  """(d): batch 64 x 2 devices vs 128 x 1, when there are 2+ devices."""
  if devices < 2:
    return {'part': 'd', 'setting': 'tutorial exercise, 64 x 2 vs 128 x 1',
            'skipped': f'{devices} device'}
  output = runner.run('exercise', ['benchmarks/multi_device.py', '--synthetic',
                                   f'--steps={args.benchmark_steps}'])
  return {'part': 'd', 'setting': 'tutorial exercise, 64 x 2 vs 128 x 1',
          'output': output.strip().splitlines()[-1]}


def _device_count(runner: _Runner) -> tuple[int, str]:
  output = subprocess.run(
      [runner.python, '-c', 'import jax; d = jax.local_devices(); '
       'print(len(d), d[0].platform, d[0].device_kind, sep="|")'],
      cwd=REPO_ROOT, capture_output=True, text=True, env=runner.env, check=True).stdout
  count, platform, kind = output.strip().splitlines()[-1].split('|')
  return int(count), f'{count} x {kind} ({platform})'


def format_table(rows: list[dict], device: str) -> str:
  lines = [f'Device: {device}', '', '| part | setting | figures |', '|---|---|---|']
  for row in rows:
    figures = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                        for k, v in row.items() if k not in ('part', 'setting'))
    lines.append(f'| {row["part"]} | {row["setting"]} | {figures} |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='CIFAR-10 image folder or archive')
  parser.add_argument('--train_split', default='train[:4500]')
  parser.add_argument('--eval_split', default='train[4500:]')
  parser.add_argument('--parts', default='abcd', help='which of (a)-(d) to run')
  parser.add_argument('--benchmark_steps', type=int, default=160)
  parser.add_argument('--benchmark_repeats', type=int, default=3)
  parser.add_argument('--tutorial_steps', type=int, default=100_000)
  parser.add_argument('--tutorial_steps_per_call', type=int, default=16)
  parser.add_argument('--tutorial_checkpoint_every', type=int, default=2000)
  parser.add_argument('--tutorial_target', type=float, default=0.86)
  parser.add_argument('--memory_fraction', type=float, default=0.45,
                      help='of the GPU memory, for each of the trainer and the evaluator')
  parser.add_argument('--airbench_config', default='experiments/airbench94_jpeg.py')
  parser.add_argument('--airbench_steps', type=int, default=0, help='0: the config\'s own')
  parser.add_argument('--airbench_target', type=float, default=0.94)
  parser.add_argument('--tiny', action='store_true', help='tiny networks (a CPU check)')
  parser.add_argument('--workdir', default='', help='default: a temporary folder, removed')
  parser.add_argument('--python', default=sys.executable)
  args = parser.parse_args(argv)
  if not os.path.exists(args.data):
    sys.exit(f'error: --data {args.data} does not exist; give a CIFAR-10 image folder or '
             'archive.')
  workdir = args.workdir or tempfile.mkdtemp(prefix='cifar_jax_gpu_run_')
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  runner = _Runner(workdir, args.python, env)
  try:
    devices, device = _device_count(runner)
    rows = []
    if 'a' in args.parts:
      rows += benchmark_table(runner, args)
    if 'b' in args.parts:
      rows.append(tutorial_time_to_accuracy(runner, args))
    if 'c' in args.parts:
      rows.append(airbench_time_to_accuracy(runner, args))
    if 'd' in args.parts:
      rows.append(multi_device_exercise(runner, args, devices))
  except RuntimeError as e:
    sys.exit(f'error: {e}')
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  print(format_table(rows, device))
  report = {'device': device, 'rows': rows}
  print(json.dumps(report))
  return report


if __name__ == '__main__':
  main()
