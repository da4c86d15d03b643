r"""Fault injection: kill the trainer and evaluator at random; check nothing is lost or repeated.

  python benchmarks/faults.py --config=experiments/smoke.py --sigkills=20 --sigterms=5 \
      --evaluator_kills=5

1. Trains the config uninterrupted in WORKDIR/reference (the reference).
2. Trains it again in WORKDIR/faulty with an evaluator process beside it, and
   meanwhile sends the trainer `--sigkills` SIGKILLs and `--sigterms` SIGTERMs
   (in a random order, each a random time after its start; a SIGTERM once the
   trainer has logged a training step, as a scheduler's notice would come) and kills the
   evaluator `--evaluator_kills` times with SIGKILL, restarting each process
   with the same command until the run is complete.
3. Checks that
   * the final parameters (the whole train state) are bit-identical to the
     reference;
   * every SIGTERM ended the trainer with status 143 after saving the step it
     names, and the next start resumed from exactly that step;
   * every start after a SIGKILL resumed from the latest finished checkpoint;
   * the evaluator scored no step twice and scored the final step.

Prints one row per fault, then the checks; the last line is JSON
(`"passed": true|false`). Exit status 0 only if every check passed. Logs of
every process are kept in WORKDIR/logs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import logging as absl_logging
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from cifar_jax.core import (  # noqa: E402  pylint: disable=g-import-not-at-top
  layout,
  summaries,
)
from cifar_jax.workdir import checkpoints  # noqa: E402  pylint: disable=g-import-not-at-top

TRAINING_MARK = 'First step (compilation included)'
PREEMPTED = re.compile(r'preempted at step (\d+); checkpoint saved in ')
SIGNAL_AFTER = re.compile(r'Received SIG\w+ after step (\d+)')
RESUMING = re.compile(r'resuming from step (\d+)')
LOGGED_STEP = re.compile(r': step (\d+), loss = ')


@dataclasses.dataclass
class Fault:
  """One signal sent to a process, and what followed."""

  target: str  # trainer | evaluator
  signal_name: str  # SIGKILL | SIGTERM
  after_secs: float  # after the process started
  exit_status: int | None = None
  signal_step: int | None = None  # SIGTERM: the last step finished when it came
  saved_step: int | None = None  # SIGTERM: the step it saved; SIGKILL: the latest checkpoint
  last_logged_step: int | None = None  # the last step logged before it (work redone from here)
  resumed_from: int | None = None  # the next start's "resuming from step"
  problem: str = ''


class _Process:
  """A command restarted on demand, each start logging to its own file."""

  def __init__(self, name: str, command: list[str], log_dir: str):
    self.name, self.command, self.log_dir = name, command, log_dir
    self.starts = 0
    self.popen: subprocess.Popen | None = None
    self.started_at = 0.0
    self.log_path = ''

  def start(self) -> None:
    self.starts += 1
    self.log_path = os.path.join(self.log_dir, f'{self.name}_{self.starts:02d}.log')
    with open(self.log_path, 'w') as log:
      self.popen = subprocess.Popen(self.command, cwd=REPO_ROOT, stdout=log,
                                    stderr=subprocess.STDOUT)
    self.started_at = time.monotonic()

  def running(self) -> bool:
    return self.popen is not None and self.popen.poll() is None

  def log(self) -> str:
    with open(self.log_path, errors='replace') as f:
      return f.read()

  def age(self) -> float:
    return time.monotonic() - self.started_at


def _command(python: str, workdir: str, config: str, overrides: list[str]) -> list[str]:
  # --verbose: TRAINING_MARK is an INFO line (the terminal shows it only then).
  return [python, '-m', 'cifar_jax.main', f'--workdir={workdir}', f'--config={config}',
          '--verbose', *overrides]


def _latest_step(workdir: str) -> int | None:
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    return None
  manager = checkpoints.create_manager(workdir, read_only=True)
  try:
    return manager.latest_step()
  finally:
    manager.close()


def _final_state(workdir: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = checkpoints.create_manager(workdir, read_only=True)
  try:
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored.state
  finally:
    manager.close()


def _differences(reference, other) -> list[str]:
  """Paths of the leaves that are not bit-identical (dtype, shape and bytes)."""
  import jax  # pylint: disable=g-import-not-at-top
  flat_reference = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
  flat_other = dict(jax.tree_util.tree_flatten_with_path(other)[0])
  if flat_reference.keys() != flat_other.keys():
    return ['(the trees differ in structure)']
  different = []
  for path, a in flat_reference.items():
    a, b = np.asarray(a), np.asarray(flat_other[path])
    if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
      different.append(jax.tree_util.keystr(path))
  return different


def run(config: str, steps: int, sigkills: int, sigterms: int, evaluator_kills: int,
        workdir: str, overrides: list[str] | None = None, seed: int = 0,
        min_delay: float = 1.0, max_delay: float = 8.0, python: str = sys.executable,
        timeout_secs: float = 3600.0) -> dict:
  """Runs the reference and the faulty run; returns the report (see the module docstring)."""
  overrides = [f'--config.num_train_steps={steps}', *(overrides or [])]
  rng = random.Random(seed)
  log_dir = os.path.join(workdir, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  reference_dir = os.path.join(workdir, 'reference')
  faulty_dir = os.path.join(workdir, 'faulty')
  os.makedirs(faulty_dir, exist_ok=True)

  started = time.monotonic()
  reference = _Process('reference', _command(python, reference_dir, config, overrides), log_dir)
  reference.start()
  if reference.popen.wait() != 0:
    raise RuntimeError(f'The reference run failed; see {reference.log_path}.')
  reference_secs = time.monotonic() - started

  trainer = _Process('trainer', _command(python, faulty_dir, config, overrides), log_dir)
  evaluator = _Process('evaluator', _command(
      python, faulty_dir, config, [*overrides, '--mode=eval', '--config.eval.poll_secs=0.5']),
                       log_dir)
  plan = ['SIGKILL'] * sigkills + ['SIGTERM'] * sigterms
  rng.shuffle(plan)
  faults: list[Fault] = []
  evaluator_faults: list[Fault] = []
  pending_fault: Fault | None = None  # sent to the trainer, which has not exited yet
  awaiting_resume: list[Fault] = []  # faults whose next resume was not seen yet
  trainer_done = False
  next_trainer_signal = next_evaluator_kill = None
  started = time.monotonic()
  trainer.start()
  evaluator.start()
  next_evaluator_kill = rng.uniform(min_delay, max_delay) if evaluator_kills else None
  while not trainer_done or evaluator.running():
    if time.monotonic() - started > timeout_secs:
      for process in (trainer, evaluator):
        if process.running():
          process.popen.kill()
      raise RuntimeError(f'The faulty run took over {timeout_secs:.0f} s; see {log_dir}.')
    time.sleep(0.05)
    if not trainer_done:
      if trainer.running():
        if pending_fault is None and next_trainer_signal is None and len(faults) < len(plan):
          next_trainer_signal = rng.uniform(min_delay, max_delay)
        if next_trainer_signal is not None:
          kind = plan[len(faults)]
          ready = kind == 'SIGKILL' or LOGGED_STEP.search(trainer.log()) is not None
          if ready and trainer.age() >= next_trainer_signal:
            trainer.popen.send_signal(getattr(signal, kind))
            pending_fault = Fault('trainer', kind, round(trainer.age(), 2))
            faults.append(pending_fault)
            next_trainer_signal = None
        continue
      log = trainer.log()
      status = trainer.popen.returncode
      _check_resumes(awaiting_resume, log)
      if pending_fault is not None:
        _after_trainer_fault(pending_fault, status, log, faulty_dir)
        awaiting_resume.append(pending_fault)
        pending_fault = None
      elif status != 0:
        raise RuntimeError(f'The trainer failed by itself ({status}); see {trainer.log_path}.')
      if status == 0:
        trainer_done = True
        if len(faults) < len(plan):
          raise RuntimeError(f'Training finished after {len(faults)} of {len(plan)} faults; '
                             'raise --steps.')
        continue
      trainer.start()
    if evaluator.running():
      if next_evaluator_kill is not None and evaluator.age() >= next_evaluator_kill:
        evaluator.popen.send_signal(signal.SIGKILL)
        evaluator.popen.wait()
        evaluator_faults.append(Fault('evaluator', 'SIGKILL', round(evaluator.age(), 2),
                                      exit_status=evaluator.popen.returncode))
        evaluator.start()
        next_evaluator_kill = (rng.uniform(min_delay, max_delay)
                               if len(evaluator_faults) < evaluator_kills else None)
    elif evaluator.popen.returncode != 0:
      raise RuntimeError(f'The evaluator failed ({evaluator.popen.returncode}); see '
                         f'{evaluator.log_path}.')
    elif not trainer_done:
      raise RuntimeError(f'The evaluator stopped before the trainer finished; see '
                         f'{evaluator.log_path}.')
  faulty_secs = time.monotonic() - started
  if len(evaluator_faults) < evaluator_kills:
    raise RuntimeError(f'The evaluator finished after {len(evaluator_faults)} of '
                       f'{evaluator_kills} kills; raise --steps.')
  return _report(faults, evaluator_faults, reference_dir, faulty_dir, steps, trainer.starts,
                 evaluator.starts, reference_secs, faulty_secs)


def _check_resumes(awaiting: list[Fault], log: str) -> None:
  """Once a start got as far as resuming (or training afresh), checks the step it resumed from.

  A start killed before that tells nothing; the faults wait for the next one.
  """
  resumed = RESUMING.search(log)
  if not resumed and TRAINING_MARK not in log:
    return
  step = int(resumed.group(1)) if resumed else None
  for fault in awaiting:
    fault.resumed_from = step
    if step != fault.saved_step:
      fault.problem += f'resumed from {step}, expected {fault.saved_step}; '
  awaiting.clear()


def _after_trainer_fault(fault: Fault, status: int, log: str, workdir: str) -> None:
  fault.exit_status = status
  logged = LOGGED_STEP.findall(log)
  fault.last_logged_step = int(logged[-1]) if logged else None
  if fault.signal_name == 'SIGTERM':
    saved = PREEMPTED.search(log)
    after = SIGNAL_AFTER.search(log)
    fault.saved_step = int(saved.group(1)) if saved else None
    fault.signal_step = int(after.group(1)) if after else None
    if status != 143 or saved is None:
      fault.problem += f'exit status {status} without "preempted at step N"; '
    elif fault.saved_step != _latest_step(workdir):
      fault.problem += f'the latest checkpoint is not the saved step {fault.saved_step}; '
  else:
    fault.saved_step = _latest_step(workdir)
    if status != -signal.SIGKILL:
      fault.problem += f'exit status {status}; '


def _report(faults, evaluator_faults, reference_dir, faulty_dir, steps, trainer_starts,
            evaluator_starts, reference_secs, faulty_secs) -> dict:
  reference_step, reference_state = _final_state(reference_dir)
  faulty_step, faulty_state = _final_state(faulty_dir)
  different = _differences(reference_state, faulty_state)
  records = summaries.read_records(os.path.join(faulty_dir, 'eval', layout.METRICS))
  scored = collections.Counter((r['step'], r.get('tta', 'none')) for r in records
                               if r.get('status') == 'scored')
  scored_twice = sorted(step for (step, _), count in scored.items() if count > 1)
  skipped = collections.Counter(r['status'] for r in records if r.get('status') != 'scored')
  sigterm_lost = [f.saved_step - f.signal_step for f in faults
                  if f.signal_name == 'SIGTERM' and None not in (f.saved_step, f.signal_step)]
  redone = [max(0, f.last_logged_step - f.saved_step) for f in faults
            if f.signal_name == 'SIGKILL'
            and f.last_logged_step is not None and f.saved_step is not None]
  checks = {
      'bit_identical': reference_step == faulty_step == steps and not different,
      'faults_handled': not any(f.problem for f in faults),
      'no_step_scored_twice': not scored_twice,
      'final_step_scored': any(step == steps for step, _ in scored),
  }
  return {
      'passed': all(checks.values()),
      'checks': checks,
      'faults': [dataclasses.asdict(f) for f in faults + evaluator_faults],
      'sigkills': sum(f.signal_name == 'SIGKILL' for f in faults),
      'sigterms': sum(f.signal_name == 'SIGTERM' for f in faults),
      'evaluator_kills': len(evaluator_faults),
      'trainer_starts': trainer_starts,
      'evaluator_starts': evaluator_starts,
      'final_step': faulty_step,
      'different_leaves': different,
      'steps_scored': len(scored),
      'steps_scored_twice': scored_twice,
      'steps_skipped': dict(skipped),
      'sigterm_steps_after_signal': sigterm_lost,
      'sigkill_logged_steps_redone': redone,
      'reference_secs': round(reference_secs, 1),
      'faulty_secs': round(faulty_secs, 1),
  }


def print_report(report: dict) -> None:
  """The table of faults, the checks, then the JSON line."""
  header = ['#', 'process', 'signal', 'after s', 'exit', 'signal at step', 'saved/latest step',
            'last logged', 'resumed from', 'ok']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for i, fault in enumerate(report['faults'], 1):
    cells = [i, fault['target'], fault['signal_name'], f'{fault["after_secs"]:.1f}',
             fault['exit_status'], fault['signal_step'], fault['saved_step'],
             fault['last_logged_step'], fault['resumed_from'], fault['problem'] or 'yes']
    print('| ' + ' | '.join('' if c is None else str(c) for c in cells) + ' |')
  print(f'{report["sigkills"]} SIGKILLs and {report["sigterms"]} SIGTERMs of the trainer '
        f'({report["trainer_starts"]} starts), {report["evaluator_kills"]} SIGKILLs of the '
        f'evaluator ({report["evaluator_starts"]} starts); reference {report["reference_secs"]} s, '
        f'with faults {report["faulty_secs"]} s.')
  print(f'Steps between a SIGTERM and its saved step: {report["sigterm_steps_after_signal"]}; '
        f'logged steps redone after a SIGKILL: {report["sigkill_logged_steps_redone"]}.')
  print(f'Evaluator: {report["steps_scored"]} steps scored, skipped {report["steps_skipped"]}, '
        f'scored twice: {report["steps_scored_twice"]}.')
  for name, passed in report['checks'].items():
    print(f'{name}: {"passed" if passed else "FAILED"}')
  summary = {k: v for k, v in report.items() if k != 'faults'}
  print(json.dumps(summary))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='experiments/smoke.py')
  parser.add_argument('--steps', type=int, default=4000, help='num_train_steps of both runs')
  parser.add_argument('--sigkills', type=int, default=20)
  parser.add_argument('--sigterms', type=int, default=5)
  parser.add_argument('--evaluator_kills', type=int, default=5)
  parser.add_argument('--min_delay', type=float, default=1.0,
                      help='seconds after a start before its signal, at least')
  parser.add_argument('--max_delay', type=float, default=8.0, help='... and at most')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default='', help='default: a temporary folder, removed')
  parser.add_argument('--python', default=sys.executable)
  args, overrides = parser.parse_known_args()
  if bad := [a for a in overrides if not a.startswith('--config.')]:
    parser.error(f'unrecognized arguments: {" ".join(bad)} (only --config.X=Y pass through)')
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's notes on read-only managers
  workdir = args.workdir or tempfile.mkdtemp(prefix='cifar_jax_faults_')
  try:
    report = run(args.config, args.steps, args.sigkills, args.sigterms, args.evaluator_kills,
                 workdir, overrides, args.seed, args.min_delay, args.max_delay, args.python)
  except RuntimeError as e:
    sys.exit(f'error: {e}')
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  print_report(report)
  sys.exit(0 if report['passed'] else 1)


if __name__ == '__main__':
  main()
