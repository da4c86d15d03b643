r"""The prepared GPU run: every GPU figure the project lacks, in one command that fits one lease.

  python benchmarks/gpu_run.py --data=PATH/cifar10-jpeg-train.tar.gz --budget_secs=480 \
      --out=DIR [--eval_data=FOLDER] [--wheelhouse=DIR] [--torch_python=PYTHON]

Its parts, in order of value, each in its own time box:

  0 install      with --wheelhouse: a venv over the system's packages (JAX, Flax, Optax, Orbax,
                 PyTorch, TensorBoard) with the pure-Python ones a JAX-only machine lacks
                 installed from DIR (`benchmarks/gpu_wheelhouse.py`), and cifar_jax itself
  1 environment  JAX, jaxlib, CUDA and PyTorch versions; devices and their memory
  2 airbench94   cifar_jax trains airbench94 on the data and scores it with TTA: seconds,
                 precision@1
  3 original     the original airbench94 in PyTorch on the same device and data
                 (`airbench_reference.py --train`: half precision with float32 BatchNorm,
                 channels_last, as it runs on GPUs), in its own process: seconds, precision@1
  4 benchmark    `cifar_jax.benchmark` of the tutorial net and airbench94 for
                 {float32, bfloat16} x {steps_per_call 1, 16}
  5 tutorial     the tutorial recipe with the evaluator beside it: the time to 86% precision@1
                 (EMA), or the best it reached and when
  6 replicas     airbench94 with config.num_replicas = 8 (loop and vmap) against one run:
                 seconds per run, images/s, peak device memory
  7 resnet18     `cifar_jax.benchmark` of ResNet-18 (experiments/resnet18.py) in float32 and
                 bfloat16 (the fast formulation, the default) and float32 with
                 config.model.formulation='reference' (BatchNorm differentiated by JAX),
                 then a short run of its recipe on the data (5 epochs, bfloat16, the
                 cosine over those 5): seconds, precision@1
  8 sweep        airbench94 as a sweep of 8 learning rates in one program (loop and vmap)
                 against one run (8 runs one after another take 8 x its run_s): seconds per
                 run, images/s summed over the points

A part gets a share of what is left of --budget_secs (time a part does not use
goes to the ones after it); one that cannot start with its minimum left is
reported `not run: budget`, one that reaches the end of its box is stopped and
reported `stopped: budget` with what it measured so far. Every command is the
command line a user types, in its own process group, with its log in OUT/logs.
It prints one table and ends with one JSON line. `--tiny` shrinks every network
and run and keeps only the last (most demanding) row of parts 4 and 6 (a
check of the script on a CPU; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from cifar_jax.core import layout, summaries  # noqa: E402  pylint: disable=g-import-not-at-top  (no JAX)

# (number, name, share of the budget left, minimum seconds to start).
PARTS = ((0, 'install', 0.10, 20), (1, 'environment', 0.03, 5), (2, 'airbench94', 0.20, 20),
         (3, 'original', 0.20, 20), (4, 'benchmark', 0.27, 20), (5, 'tutorial', 0.13, 15),
         (6, 'replicas', 0.17, 15), (7, 'resnet18', 0.15, 20), (8, 'sweep', 0.15, 15))
# --tiny: every network tiny, one device, no decoded-data cache (a CPU check of the script).
TINY = ['--config.num_devices=1', '--config.dataset.cache_dir=', '--config.eval.batch_size=64']
TINY_TUTORIAL = [*TINY, '--config.model.conv_features=8', '--config.model.local3_features=16',
                 '--config.model.local4_features=8', '--config.per_device_batch_size=16']
TINY_AIRBENCH = [*TINY, '--config.model.widths=(8,16,16)', '--config.model_init_examples=64',
                 '--config.batch_size=32']


class BudgetSpentError(Exception):
  """A part reached the end of its time box."""


@dataclasses.dataclass
class Runner:
  """Runs commands from the repository root in their own process group; logs to OUT/logs."""

  out: str
  python: str
  env: dict[str, str]

  def __post_init__(self):
    os.makedirs(os.path.join(self.out, 'logs'), exist_ok=True)

  def log_path(self, name: str) -> str:
    return os.path.join(self.out, 'logs', f'{name}.log')

  def start(self, name: str, args: list[str], env: dict[str, str] | None = None,
            python: str | None = None) -> subprocess.Popen:
    log = open(self.log_path(name), 'w')  # noqa: SIM115  (the process owns it)
    return subprocess.Popen([python or self.python, *args], cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                            start_new_session=True)

  def wait(self, processes: list[subprocess.Popen], deadline: float,
           until=lambda: False) -> None:
    """Waits for `processes` (or `until()`); past `deadline` kills them: BudgetSpentError."""
    while any(p.poll() is None for p in processes) and not until():
      if time.time() > deadline:
        self.kill(processes)
        raise BudgetSpentError()
      time.sleep(0.2)
    self.kill(processes)

  @staticmethod
  def kill(processes: list[subprocess.Popen]) -> None:
    for p in processes:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()

  def run(self, name: str, args: list[str], deadline: float, env: dict[str, str] | None = None,
          python: str | None = None) -> str:
    """Runs one command to its end (or `deadline`); its output; RuntimeError if it failed."""
    process = self.start(name, args, env, python)
    self.wait([process], deadline)
    if process.returncode != 0:
      raise RuntimeError(f'{name} failed (exit status {process.returncode}); see '
                         f'{self.log_path(name)}.')
    return self.read(name)

  def read(self, name: str) -> str:
    with open(self.log_path(name)) as f:
      return f.read()


def _json_lines(text: str) -> list[dict]:
  lines = []
  for line in text.splitlines():
    if line.startswith('{'):
      try:
        lines.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return lines


def _data_flags(args) -> list[str]:
  flags = [f'--config.dataset.path={os.path.abspath(args.data)}',
           f'--config.dataset.train_split={args.train_split}',
           f'--config.dataset.eval_split={args.eval_split}']
  if args.eval_data:
    flags.append(f'--config.dataset.eval_path={os.path.abspath(args.eval_data)}')
  return flags


def _flags(overrides: dict) -> list[str]:
  return [f'--config.{name}={value}' for name, value in overrides.items()]


TINY_TUTORIAL_OVERRIDES = {'num_devices': 1, 'dataset.cache_dir': '', 'eval.batch_size': 64,
                           'model.conv_features': 8, 'model.local3_features': 16,
                           'model.local4_features': 8, 'per_device_batch_size': 16}
TINY_RESNET_OVERRIDES = {'num_devices': 1, 'dataset.cache_dir': '', 'eval.batch_size': 64,
                         'model.width': 4, 'batch_size': 16}
TINY_AIRBENCH_OVERRIDES = {'num_devices': 1, 'dataset.cache_dir': '', 'eval.batch_size': 64,
                           'model.widths': (8, 16, 16), 'model_init_examples': 64,
                           'batch_size': 32}

# Runs `cifar_jax.benchmark` for each (setting, config file, overrides) of argv[1] in one
# process (one JAX start, one data load); a JSON line per setting as soon as it is measured.
_BENCHMARK_PROGRAM = '''
import json, sys
from cifar_jax import benchmark, experiment
options = json.loads(sys.argv[2])
for setting, path, overrides in json.loads(sys.argv[1]):
  figures = benchmark.run(experiment.load_config(path, overrides), synthetic=True, **options)
  line = benchmark.machine_line(figures, None)
  print(json.dumps({'setting': setting, **{k: float(v) for k, v in
                                           (item.split('=') for item in line.split())}}),
        flush=True)
'''

_ENVIRONMENT_PROGRAM = '''
import importlib, json, platform, re
import jax
info = {'python': platform.python_version()}
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'torch'):
  try:
    info[name] = importlib.import_module(name).__version__
  except Exception as e:  # not installed, or broken
    info[name] = f'absent ({type(e).__name__})'
devices = jax.devices()
info['devices'] = f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform})'
limit = (devices[0].memory_stats() or {}).get('bytes_limit')
info['device_memory_gib'] = round(limit / 2**30, 1) if limit else None
text = jax.print_environment_info(return_string=True)
cuda = re.search(r'CUDA Version: ([\\d.]+)', text)
info['cuda'] = cuda.group(1) if cuda else None
print(text)
print(json.dumps(info))
'''


def install(runner: Runner, args, deadline: float, report: dict) -> None:
  """0: a venv over the system's packages, the missing ones from --wheelhouse, cifar_jax."""
  venv = os.path.join(args.out, 'venv')
  runner.run('install_venv', ['-m', 'venv', '--system-site-packages', venv], deadline,
             python=sys.executable)
  python = os.path.join(venv, 'bin', 'python')
  offline = ['-m', 'pip', 'install', '--no-index', '--find-links', os.path.abspath(args.wheelhouse)]
  runner.run('install_wheels', [*offline, *WHEELHOUSE_PACKAGES], deadline, python=python)
  runner.run('install_cifar_jax', [*offline, '--no-deps', '-e', REPO_ROOT], deadline,
             python=python)
  runner.python = report['python'] = python


# What cifar_jax imports that a machine with JAX, Flax, Optax, Orbax, PyTorch and TensorBoard may
# lack (their own dependencies come from the wheelhouse or the system): gpu_wheelhouse.py's list.
WHEELHOUSE_PACKAGES = ('clu', 'ml_collections', 'absl-py', 'etils', 'pillow', 'scipy')


def environment(runner: Runner, args, deadline: float, report: dict) -> None:
  """1: versions, devices, memory."""
  output = runner.run('environment', ['-c', _ENVIRONMENT_PROGRAM], deadline)
  report.update(_json_lines(output)[-1])
  if args.torch_python:  # the original's PyTorch, where it is another Python's
    try:
      torch = subprocess.run([args.torch_python, '-c', 'import torch; print(torch.__version__, '
                              'torch.version.cuda)'], capture_output=True, text=True, check=False,
                             timeout=max(1.0, deadline - time.time()))
      report['torch'] = torch.stdout.strip() or f'absent from {args.torch_python}'
    except subprocess.TimeoutExpired:
      report['torch'] = f'not known: importing torch in {args.torch_python} outlasted the part'


def airbench(runner: Runner, args, deadline: float, report: dict) -> None:
  """2: cifar_jax's airbench94, trained on the data and scored with its TTA in one process."""
  workdir = os.path.join(args.out, 'airbench94')
  started = time.time()
  runner.run('airbench94', [
      '-m', 'cifar_jax.main', f'--workdir={workdir}', '--config=experiments/airbench94_jpeg.py',
      '--mode=train_and_eval', *_data_flags(args), '--config.eval_every_steps=0',
      *(['--config.num_train_steps=3', *_flags(TINY_AIRBENCH_OVERRIDES)] if args.tiny else [])],
      deadline)
  record = summaries.read_records(layout.path(workdir, layout.EVAL, layout.METRICS))[-1]
  report.update({'train_seconds': _trained_seconds(workdir, started),
                 'seconds_to_score': record['wall_time'] - started,
                 'precision': record['precision'], 'tta': record['tta'], 'steps': record['step']})


def _trained_seconds(workdir: str, started: float) -> float:
  with open(os.path.join(workdir, 'train_complete')) as f:
    return json.load(f)['time'] - started


def original(runner: Runner, args, deadline: float, report: dict) -> None:
  """3: the original airbench94 in PyTorch on the same device and data, in its own process."""
  torch_python = args.torch_python or runner.python
  probe = subprocess.run([torch_python, '-c', 'import torch'], capture_output=True, check=False)
  if probe.returncode:
    report['status'] = (f'skipped: no PyTorch in {torch_python}; give --torch_python=a Python '
                        'with torch')
    return
  out = os.path.join(args.out, 'original')
  runner.run('original', [
      os.path.join(REPO_ROOT, 'benchmarks', 'airbench_reference.py'), '--train', '--seeds=1',
      f'--out={out}', f'--dataset_path={os.path.abspath(args.data)}',
      f'--train_split={args.train_split}', f'--eval_split={args.eval_split}',
      *([f'--eval_path={os.path.abspath(args.eval_data)}'] if args.eval_data else []),
      f'--torch_python={torch_python}',
      *(['--train_epochs=1', '--widths=8,16,16', '--batch=32'] if args.tiny else [])],
      deadline)
  with open(os.path.join(out, 'seeds.jsonl')) as f:
    result = json.loads(f.readlines()[-1])
  report.update({'train_seconds': result['train_seconds'],
                 'seconds_to_score': result['seconds_to_scores'],
                 'precision': result['precision_tta2'], 'precision_tta_none':
                 result['precision_tta0'], 'half_precision': result['half'],
                 'device': result['device'], 'steps': result['steps']})


def _benchmarks(runner: Runner, name: str, settings: list, options: dict, tiny: bool,
                deadline: float, report: dict) -> None:
  """Runs `_BENCHMARK_PROGRAM` on `settings`; each measured row lands in report['rows']."""
  if tiny:  # every row costs five compilations: the last, most demanding, shows the part works
    settings = settings[-1:]
    options = {'steps': 1, 'repeats': 1, 'warmup_steps': 0, 'synthetic_train_size': 256,
               'synthetic_eval_size': 64, 'matmul_size': 128}
  process = runner.start(name, ['-c', _BENCHMARK_PROGRAM, json.dumps(settings),
                                json.dumps(options)])
  report['rows'] = []
  try:
    runner.wait([process], deadline)
  finally:
    report['rows'] = _json_lines(runner.read(name))
  if process.returncode != 0:
    raise RuntimeError(f'{name} failed (exit status {process.returncode}); see '
                       f'{runner.log_path(name)}.')


def benchmark_table(runner: Runner, args, deadline: float, report: dict) -> None:
  """4: both networks, {float32, bfloat16} x {steps_per_call 1, 16}."""
  settings = []
  for network, path, tiny in (('tutorial', 'experiments/cifar10.py', TINY_TUTORIAL_OVERRIDES),
                              ('airbench94', 'experiments/airbench94.py',
                               TINY_AIRBENCH_OVERRIDES)):
    for dtype in ('float32', 'bfloat16'):
      for steps_per_call in (1, 16):
        settings.append((f'{network}, {dtype}, steps_per_call {steps_per_call}', path,
                         {**(tiny if args.tiny else {}), 'model.dtype': dtype,
                          'steps_per_call': steps_per_call}))
  options = {'steps': 64, 'repeats': 3, 'synthetic_train_size': 20_000,
             'synthetic_eval_size': 5_000}
  _benchmarks(runner, 'benchmark', settings, options, args.tiny, deadline, report)


def replicas(runner: Runner, args, deadline: float, report: dict) -> None:
  """6: airbench94 with 8 replicas (loop, vmap; --tiny: 2) against one run: seconds per run."""
  tiny = TINY_AIRBENCH_OVERRIDES if args.tiny else {}
  count = 2 if args.tiny else 8
  settings = [('airbench94, 1 run', 'experiments/airbench94.py', {**tiny})]
  settings += [(f'airbench94, {count} replicas, {execution}', 'experiments/airbench94.py',
                {**tiny, 'num_replicas': count, 'replica_execution': execution})
               for execution in ('loop', 'vmap')]
  options = {'steps': 16, 'repeats': 3, 'synthetic_train_size': 20_000,
             'synthetic_eval_size': 2_000}
  _benchmarks(runner, 'replicas', settings, options, args.tiny, deadline, report)


def sweep(runner: Runner, args, deadline: float, report: dict) -> None:
  """8: airbench94 swept over 8 learning rates (--tiny: 2) in one program against one run."""
  tiny = TINY_AIRBENCH_OVERRIDES if args.tiny else {}
  rates = (11.5, 23.0) if args.tiny else tuple(11.5 * 2 ** (k / 2 - 2) for k in range(8))
  settings = [('airbench94, 1 run', 'experiments/airbench94.py', {**tiny})]
  settings += [(f'airbench94, sweep of {len(rates)} learning rates, {execution}',
                'experiments/airbench94.py',
                {**tiny, 'sweep.learning_rate': rates, 'replica_execution': execution})
               for execution in ('loop', 'vmap')]
  options = {'steps': 16, 'repeats': 3, 'synthetic_train_size': 20_000,
             'synthetic_eval_size': 2_000}
  _benchmarks(runner, 'sweep', settings, options, args.tiny, deadline, report)


def tutorial(runner: Runner, args, deadline: float, report: dict) -> None:
  """5: the tutorial recipe and the evaluator beside it, on one device, until the target."""
  workdir = os.path.join(args.out, 'tutorial')
  os.makedirs(workdir, exist_ok=True)
  steps = 20 if args.tiny else args.tutorial_steps
  common = ['-m', 'cifar_jax.main', f'--workdir={workdir}', '--config=experiments/cifar10_jpeg.py',
            *_data_flags(args), f'--config.num_train_steps={steps}',
            f'--config.checkpoint_every_steps={10 if args.tiny else 2000}',
            f'--config.keep_checkpoints={steps}',  # the evaluator scores every one
            *(_flags(TINY_TUTORIAL_OVERRIDES) if args.tiny else [])]
  memory = {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'}
  started = time.time()
  processes = [runner.start('tutorial_trainer', [*common, '--config.steps_per_call=16'], memory),
               runner.start('tutorial_evaluator', [*common, '--mode=eval',
                                                   '--config.eval.poll_secs=1'], memory)]
  records = layout.path(workdir, layout.EVAL, layout.METRICS)

  def scored():
    return [r for r in summaries.read_records(records) if r.get('status') == 'scored']

  def reached():
    return any(r['precision'] >= args.tutorial_target for r in scored())

  try:
    runner.wait(processes, deadline, until=reached)
  finally:
    runner.kill(processes)
    best = max(scored(), key=lambda r: r['precision'], default=None)
    report.update({'target': args.tutorial_target, 'reached': bool(best) and reached(),
                   'best_precision': best and best['precision'],
                   'best_step': best and best['step'],
                   'seconds_to_best': best and best['wall_time'] - started})


def resnet18(runner: Runner, args, deadline: float, report: dict) -> None:
  """7: ResNet-18's training step in float32 and bfloat16, then a short run of its recipe."""
  if not args.tiny:  # --tiny: the run alone (a ResNet's compilations dominate a CPU check)
    settings = [(f'resnet18, {dtype}', 'experiments/resnet18.py', {'model.dtype': dtype})
                for dtype in ('float32', 'bfloat16')]
    settings.append(('resnet18, float32, formulation reference', 'experiments/resnet18.py',
                     {'model.dtype': 'float32', 'model.formulation': 'reference'}))
    options = {'steps': 64, 'repeats': 3, 'synthetic_train_size': 20_000,
               'synthetic_eval_size': 5_000}
    _benchmarks(runner, 'resnet18_benchmark', settings, options, False, deadline, report)
  workdir = os.path.join(args.out, 'resnet18')
  started = time.time()
  runner.run('resnet18', [
      '-m', 'cifar_jax.main', f'--workdir={workdir}', '--config=experiments/resnet18_jpeg.py',
      '--mode=train_and_eval', *_data_flags(args), '--config.model.dtype=bfloat16',
      *(['--config.num_train_epochs=0', '--config.num_train_steps=2',
         *_flags(TINY_RESNET_OVERRIDES)] if args.tiny else ['--config.num_train_epochs=5'])],
      deadline)
  record = summaries.read_records(layout.path(workdir, layout.EVAL, layout.METRICS))[-1]
  report.update({'train_seconds': _trained_seconds(workdir, started),
                 'precision': record['precision'], 'steps': record['step'], 'epochs': 5})


STEPS = {'install': install, 'environment': environment, 'airbench94': airbench,
         'original': original, 'benchmark': benchmark_table, 'tutorial': tutorial,
         'replicas': replicas, 'resnet18': resnet18, 'sweep': sweep}


def run_parts(runner: Runner, args, started: float) -> list[dict]:
  """Every part in order, each in its time box; what each measured and how it ended."""
  end = started + args.budget_secs - 1.0  # a second to print the table
  wanted = [p for p in PARTS if str(p[0]) in args.parts and (p[0] or args.wheelhouse)]
  reports = []
  for index, (number, name, share, minimum) in enumerate(wanted):
    left = end - time.time()
    report = {'part': number, 'name': name}
    reports.append(report)
    minimum = min(minimum, 5) if args.tiny else minimum
    if left < minimum:
      report['status'] = 'not run: budget'
      continue
    shares = sum(p[2] for p in wanted[index:])
    deadline = time.time() + max(minimum, left * share / shares)
    part_started = time.time()
    try:
      STEPS[name](runner, args, min(deadline, end), report)
      report.setdefault('status', 'done')
    except BudgetSpentError:
      report['status'] = 'stopped: budget'
    except (RuntimeError, OSError, IndexError, KeyError, ValueError) as e:
      report['status'] = f'failed: {e}'
    report['seconds'] = round(time.time() - part_started, 1)
  return reports


def format_table(reports: list[dict], device: str, elapsed: float, budget: float) -> str:
  lines = [f'Device: {device}; {elapsed:.0f} s of a {budget:.0f} s budget', '',
           '| part | what | status | seconds | figures |', '|---|---|---|---|---|']
  for report in reports:
    rows = report.get('rows')
    figures = {k: v for k, v in report.items()
               if k not in ('part', 'name', 'status', 'seconds', 'rows')}
    text = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                     for k, v in figures.items())
    lines.append(f'| {report["part"]} | {report["name"]} | {report["status"]} | '
                 f'{report.get("seconds", "")} | {text} |')
    for row in rows or []:
      row_text = ', '.join(f'{k} {v:.4g}' for k, v in row.items() if k != 'setting')
      lines.append(f'| {report["part"]} | {row["setting"]} | | | {row_text} |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='CIFAR-10 image folder or archive')
  parser.add_argument('--eval_data', default='',
                      help='another image folder to score on (its --eval_split); default: '
                           'a held-out part of --data')
  parser.add_argument('--train_split', default=None,
                      help='default: train[:4500] (train with --eval_data)')
  parser.add_argument('--eval_split', default=None,
                      help='default: train[4500:] (test with --eval_data)')
  parser.add_argument('--budget_secs', type=float, default=480)
  parser.add_argument('--out', default='', help='results and logs; default: a temporary folder')
  parser.add_argument('--wheelhouse', default='',
                      help='wheels from benchmarks/gpu_wheelhouse.py: install into a venv first')
  parser.add_argument('--torch_python', default='',
                      help='a Python with PyTorch for the original (default: the one running)')
  parser.add_argument('--parts', default='012345678', help='which parts to run')
  parser.add_argument('--tutorial_steps', type=int, default=100_000)
  parser.add_argument('--tutorial_target', type=float, default=0.86)
  parser.add_argument('--tiny', action='store_true', help='tiny networks (a check on a CPU)')
  parser.add_argument('--python', default=sys.executable)
  args = parser.parse_args(argv)
  started = time.time()
  if not os.path.exists(args.data):
    sys.exit(f'error: --data {args.data} does not exist; give a CIFAR-10 image folder or '
             'archive.')
  args.train_split = args.train_split or ('train' if args.eval_data else 'train[:4500]')
  args.eval_split = args.eval_split or ('test' if args.eval_data else 'train[4500:]')
  keep = bool(args.out)
  args.out = os.path.abspath(args.out or tempfile.mkdtemp(prefix='cifar_jax_gpu_run_'))
  runner = Runner(args.out, args.python, {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  try:
    reports = run_parts(runner, args, started)
  finally:
    if not keep:
      shutil.rmtree(args.out, ignore_errors=True)
  environment_report = next((r for r in reports if r['name'] == 'environment'), {})
  device = environment_report.get('devices', 'unknown')
  elapsed = time.time() - started
  print(format_table(reports, device, elapsed, args.budget_secs))
  result = {'device': device, 'budget_secs': args.budget_secs, 'elapsed_secs': round(elapsed, 1),
            'parts': reports}
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
