"""The command line as a user runs it, in real OS processes."""

import concurrent.futures
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from cifar_jax.core import layout, summaries
from cifar_jax.run import train
from cifar_jax.workdir import checkpoints
from tests import command_runner
from tests.conftest import REPO_ROOT, restore_latest, tiny_config

TINY_FLAGS = [
    '--config=experiments/smoke.py',
    '--config.dataset.synthetic_train_size=512',
    '--config.dataset.synthetic_test_size=200',
    '--config.model.conv_features=8',
    '--config.model.local3_features=16',
    '--config.model.local4_features=8',
    '--config.per_device_batch_size=8',
    '--config.num_devices=1',
    '--config.log_every_steps=10',
    '--config.histogram_every_steps=1000',
    '--config.eval.batch_size=64',
]
LOG_LINE = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: step (\d+), loss = \d+\.\d\d '
                      r'\(\d+\.\d examples/sec; \d+\.\d{3} sec/batch\)$', re.M)


def _main(workdir, *flags, **kwargs):
  return subprocess.run(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS, *flags],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_trains_logs_in_the_tutorial_format_and_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  first = _main(workdir, '--mode=train_and_eval', '--config.num_train_steps=30',
                '--config.checkpoint_every_steps=20')
  assert first.returncode == 0, first.stderr[-2000:]
  assert [int(s) for s in LOG_LINE.findall(first.stdout)] == [10, 20, 30]
  assert 'step 30, precision @ 1 = ' in first.stdout
  assert os.path.exists(os.path.join(workdir, 'train_complete'))
  again = _main(workdir, '--config.num_train_steps=40', '--config.checkpoint_every_steps=20')
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming from step 30' in again.stdout
  assert [int(s) for s in LOG_LINE.findall(again.stdout)] == [40]
  # A restart whose first step is logged times that step, compilation included.
  once_more = _main(workdir, '--config.num_train_steps=41', '--config.log_every_steps=1')
  assert re.search(r': step 41, loss = \d+\.\d\d \(\d+\.\d examples/sec; \d+\.\d{3} '
                   r'sec/batch, compilation included\)$', once_more.stdout, re.M), once_more.stdout


@pytest.mark.slow
def test_killed_trainer_resumes_with_identical_state(tmp_path):
  killed = str(tmp_path / 'killed')
  process = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={killed}', *TINY_FLAGS,
       '--config.num_train_steps=100000', '--config.checkpoint_every_steps=20'],
      cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  step_dir = os.path.join(killed, 'checkpoints', '40')
  deadline = time.time() + 240
  while not os.path.isdir(step_dir) and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = checkpoints.create_manager(killed, read_only=True).latest_step()
  assert saved is not None and saved >= 40
  target = saved + 20
  resumed = _main(killed, f'--config.num_train_steps={target}',
                  '--config.checkpoint_every_steps=20')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resuming from step {saved}' in resumed.stdout
  straight = str(tmp_path / 'straight')
  run = _main(straight, f'--config.num_train_steps={target}', '--config.checkpoint_every_steps=20')
  assert run.returncode == 0, run.stderr[-2000:]
  jax.tree.map(np.testing.assert_array_equal, restore_latest(killed), restore_latest(straight))


@pytest.mark.slow
def test_a_restart_loads_its_programs_from_the_compilation_cache(tmp_path):
  workdir = str(tmp_path / 'run')
  cache = os.path.join(workdir, 'compilation_cache')
  # As a user runs it: no cache directory given to JAX (the tests' shared one is not).
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  first = _main(workdir, '--config.num_train_steps=10', env=env)
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(os.listdir(cache))
  assert any(name.startswith('jit_init-') for name in entries)
  again = _main(workdir, '--config.num_train_steps=20', env={
      **env, 'JAX_DEBUG_LOG_MODULES': 'jax._src.compiler'})
  assert again.returncode == 0, again.stderr[-2000:]
  # Nothing new to compile above JAX's threshold: every cached program was a hit.
  assert sorted(os.listdir(cache)) == entries
  with open(os.path.join(workdir, 'logs', 'train.log')) as f:  # the detail goes to WORKDIR/logs
    hits = re.findall(r"Persistent compilation cache hit for '(\w+)'", f.read())
  # The initialisation and the mapped training step (pmap compiles it as jit__fun).
  assert sorted(hits) == ['jit__fun', 'jit_init'], hits


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_training_and_tensorboard_summaries_import_neither_tensorflow_nor_tfds(tmp_path):
  pytest.importorskip('tensorboard')
  workdir = str(tmp_path / 'run')
  script = (
      'import atexit, sys\n'
      'atexit.register(lambda: print("tensorflow imported:", "tensorflow" in sys.modules,\n'
      '                              "tfds imported:", "tensorflow_datasets" in sys.modules))\n'
      'from absl import app\n'
      'from cifar_jax import cli, main\n'
      'app.run(main.main, flags_parser=cli.parse_flags)\n')
  result = subprocess.run(
      [sys.executable, '-c', script, f'--workdir={workdir}', '--mode=train_and_eval',
       *TINY_FLAGS, '--config.num_train_steps=10'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'tensorflow imported: False tfds imported: False' in result.stdout
  for logdir in (workdir, os.path.join(workdir, 'eval')):
    assert [f for f in os.listdir(logdir) if f.startswith('events.out.tfevents')]


def _start_long_run(workdir, *flags):
  return subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
       '--config.num_train_steps=100000', '--config.checkpoint_every_steps=20', *flags],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(workdir, step, process):
  folder = os.path.join(checkpoints.checkpoint_dir(workdir), str(step))
  deadline = time.time() + 240
  while not os.path.isdir(folder) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.isdir(folder), process.communicate()[1][-2000:]


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('error:')]


@pytest.fixture
def small_disk(tmp_path):
  """A 4 MiB tmpfs (root with mount rights only, else skipped)."""
  mount_point = tmp_path / 'disk'
  mount_point.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mount_point)],
                           capture_output=True)
  if mounted.returncode != 0:
    pytest.skip('cannot mount a size-limited tmpfs here')
  try:
    yield str(mount_point)
  finally:
    subprocess.run(['umount', str(mount_point)], check=True)


@pytest.mark.slow
def test_disk_full_mid_run_ends_in_one_error_line_and_a_rerun_resumes(small_disk):
  workdir = os.path.join(small_disk, 'run')
  no_cache = '--config.compilation_cache_dir='
  process = _start_long_run(workdir, no_cache)
  _wait_for_checkpoint(workdir, 20, process)
  filler = os.path.join(small_disk, 'filler')
  with open(filler, 'wb', buffering=0) as f:
    with contextlib.suppress(OSError):  # the trainer writes too: fill until nothing fits
      while True:
        f.write(b'\0' * 65536)
  # Whatever writes next (a checkpoint, a summary) fails: one line, and the process ends
  # at once (Orbax's threads of a failed save would otherwise hold it for minutes).
  _, err = process.communicate(timeout=120)
  assert process.returncode == 1, err[-2000:]
  (error,) = _error_lines(err)
  assert 'No space left on device' in error and 'run the same command again' in error
  latest = checkpoints.create_manager(workdir, read_only=True).latest_step()
  assert latest >= 20
  os.remove(filler)
  resumed = _main(workdir, f'--config.num_train_steps={latest + 5}', no_cache)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resuming from step {latest}' in resumed.stdout


@pytest.mark.slow
def test_checkpoint_folder_replaced_mid_run_ends_in_one_error_line(tmp_path):
  workdir = str(tmp_path / 'run')
  process = _start_long_run(workdir)
  _wait_for_checkpoint(workdir, 20, process)
  folder = checkpoints.checkpoint_dir(workdir)
  os.rename(folder, folder + '_moved')  # atomic, even while a save writes into it
  with open(folder, 'w') as f:
    f.write('not a folder')
  _, err = process.communicate(timeout=120)
  assert process.returncode == 1, err[-2000:]
  (error,) = _error_lines(err)
  # The reason is Orbax's or TensorStore's, worded by whichever stage of the save hit it.
  assert re.match(r'error: Writing the checkpoint of step \d+ in .*/checkpoints failed \(.+\); '
                  r'.*run the same command again\.$', error), error


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_trains_and_evaluates_without_tensorflow(tmp_path):
  # As on a machine with JAX only: importing tensorflow or tensorboard fails.
  workdir = str(tmp_path / 'run')
  script = (
      'import sys; sys.modules["tensorflow"] = None; sys.modules["tensorboard"] = None\n'
      'from absl import app\n'
      'from cifar_jax import cli, main\n'
      'app.run(main.main, flags_parser=cli.parse_flags)\n')
  flags = [f'--workdir={workdir}', '--mode=train_and_eval', *TINY_FLAGS,
           '--config.num_train_steps=20',
           '--config.checkpoint_every_steps=10']
  result = subprocess.run([sys.executable, '-c', script, *flags], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr.count('No TensorBoard summaries') == 1
  assert 'step 20, precision @ 1 = ' in result.stdout
  assert os.path.getsize(os.path.join(workdir, 'metrics.jsonl')) > 0
  assert os.path.getsize(os.path.join(workdir, 'eval', 'metrics.jsonl')) > 0
  assert not [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]


def _eval_records(workdir):
  return summaries.read_records(os.path.join(workdir, 'eval', layout.METRICS))


EVALUATOR_FLAGS = ['--mode=eval', '--config.eval.poll_secs=0.3', '--config.eval.timeout_secs=120',
                   '--config.dataset.synthetic_test_size=3000']


@pytest.mark.slow
def test_trainer_and_evaluator_processes_score_every_checkpoint_once(tmp_path):
  # Both started at once, as a job script does: the evaluator waits for the WORKDIR too.
  workdir = str(tmp_path / 'run')
  trainer_flags = ['--config.num_train_steps=120', '--config.checkpoint_every_steps=20',
                   '--config.keep_checkpoints=100']
  evaluator = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
       *EVALUATOR_FLAGS], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  waiting = evaluator.stdout.readline()
  assert f'waiting for {workdir}' in waiting, waiting + evaluator.stderr.read()[-2000:]
  trainer = _main(workdir, *trainer_flags)
  assert trainer.returncode == 0, trainer.stderr[-2000:]
  out, err = evaluator.communicate(timeout=300)
  assert evaluator.returncode == 0, err[-2000:]  # it stopped by itself after the final step
  records = _eval_records(workdir)
  assert [r['step'] for r in records] == [20, 40, 60, 80, 100, 120]
  assert {r['status'] for r in records} == {'scored'}
  assert len(re.findall(r'step \d+, precision @ 1 = [\d.]+ \(raw parameters: [\d.]+\)', out)) == 6
  assert 'waiting for' not in out  # said once


@pytest.mark.slow
def test_killed_evaluator_restarts_without_rescoring_or_missing(tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  command = [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
             *EVALUATOR_FLAGS]
  trainer = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={workdir}', *TINY_FLAGS,
       '--config.num_train_steps=300', '--config.checkpoint_every_steps=20',
       '--config.keep_checkpoints=100'],
      cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  evaluator = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not _eval_records(workdir) and time.time() < deadline:
    time.sleep(0.1)
  evaluator.send_signal(signal.SIGKILL)
  evaluator.wait()
  scored_before_kill = [r['step'] for r in _eval_records(workdir)]
  assert scored_before_kill
  restarted = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=300)
  assert restarted.returncode == 0, restarted.stderr[-2000:]
  assert trainer.wait(timeout=300) == 0
  steps = [r['step'] for r in _eval_records(workdir)]
  assert steps == list(range(20, 301, 20))  # each once, in order, none missed
  for step in scored_before_kill:
    assert f'step {step}, precision' not in restarted.stdout  # not rescored


@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_and_a_rerun_resumes_identically(tmp_path):
  stopped = str(tmp_path / 'stopped')
  process = subprocess.Popen(
      [sys.executable, '-m', 'cifar_jax.main', f'--workdir={stopped}', *TINY_FLAGS,
       '--config.num_train_steps=100000', '--config.checkpoint_every_steps=1000'],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in process.stdout:
      if 'step 30, loss' in line:
        break
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)  # a second signal while it saves changes nothing
    out, err = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 143, err[-2000:]
  saved = int(re.search(r'preempted at step (\d+); checkpoint saved in ', out).group(1))
  assert checkpoints.create_manager(stopped, read_only=True).all_steps() == [saved]
  resumed = _main(stopped, f'--config.num_train_steps={saved + 7}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resuming from step {saved}' in resumed.stdout
  straight = str(tmp_path / 'straight')
  run = _main(straight, f'--config.num_train_steps={saved + 7}')
  assert run.returncode == 0, run.stderr[-2000:]
  jax.tree.map(np.testing.assert_array_equal, restore_latest(stopped), restore_latest(straight))


# ----------------------------------------------------------------------------
# Every mistake a user can make on the command line: one `error:` line, exit 1.


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A WORKDIR of 10 TINY_FLAGS steps with a checkpoint at step 10."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  train.train_and_evaluate(tiny_config(num_train_steps=10), workdir, evaluate_in_process=False)
  return workdir


def _copy_of(trained_workdir, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(trained_workdir, copy)
  return copy


def _corrupt_latest(tmp_path, trained_workdir):
  copy = _copy_of(trained_workdir, tmp_path)
  for root, _, files in os.walk(os.path.join(copy, 'checkpoints', '10', 'state')):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\0garbage')
  # Saved before checksums existed: read, and refused (with checksums it is resumed
  # around: tests/test_checkpoints.py).
  os.remove(os.path.join(copy, 'checkpoints', '10', checkpoints.CHECKSUM_FILE))
  return [f'--workdir={copy}']


def _image_folder(tmp_path, fault):
  """ROOT/train/<class>/NNNN.png with one `fault`; the flags that read it with --mode=data."""
  for name in ('cat', 'dog'):
    os.makedirs(tmp_path / 'images' / 'train' / name)
    for i in range(3):
      Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(
          tmp_path / 'images' / 'train' / name / f'{i:04d}.png')
  if fault == 'corrupt':
    (tmp_path / 'images' / 'train' / 'dog' / '0001.png').write_bytes(b'not an image')
  elif fault == 'size':
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(
        tmp_path / 'images' / 'train' / 'dog' / '0001.png')
  elif fault == 'empty':
    shutil.rmtree(tmp_path / 'images' / 'train')
    os.makedirs(tmp_path / 'images' / 'train')
  return ['--mode=data', '--config.dataset.source=image_folder',
          f'--config.dataset.path={tmp_path / "images"}', '--config.dataset.train_split=train',
          '--config.dataset.eval_split=train']


def _unwritable(tmp_path):
  (tmp_path / 'a_file').write_text('')
  return [f'--workdir={tmp_path / "a_file" / "sub"}']


# (id, module, arguments after TINY_FLAGS (a callable gets tmp_path and the
# trained WORKDIR), what the error line must say). `--config=` in the
# arguments replaces the tiny config file; NO_CONFIG drops it.
NO_CONFIG = object()
# The airbench94 smoke config, without TINY_FLAGS' tutorial-net widths.
AIRBENCH_SMOKE = '--config=experiments/airbench94_smoke.py'
MAIN, BENCHMARK, COMPARE = 'cifar_jax.main', 'cifar_jax.benchmark', 'cifar_jax.compare'
COMMAND_LINE_MISTAKES = [
    ('float field given text', MAIN, ['--config.learning_rate=abc'],
     r'--config.learning_rate=abc: could not convert string to float'),
    ('int field given a float', MAIN, ['--config.num_train_steps=1.5'],
     r'--config.num_train_steps=1.5: invalid literal for int'),
    ('a config group given a number', MAIN, ['--config.augment=3'],
     r'--config.augment=3: .*dict'),
    ('unknown config field', MAIN, ['--config.no_such_field=3'],
     r'--config.no_such_field=3: the config has no field config.no_such_field'),
    ('config value out of range', MAIN, ['--config.num_train_steps=-5'],
     r'config.num_train_steps is -5; it must be at least 1'),
    ('config file missing', MAIN, ['--config=experiments/nope.py'],
     r'--config=experiments/nope.py: no such file'),
    ('config file is a folder', MAIN, ['--config=experiments'], r'is a directory'),
    ('config file not Python', MAIN, ['--config=README.md'], r'is not a Python config file'),
    ('config file without get_config', MAIN, ['--config=experiments/__init__.py'],
     r'defines no get_config\(\)'),
    ('no --config', MAIN, [NO_CONFIG], r'--config=\.\.\. is required'),
    ('unknown mode', MAIN, ['--mode=bogus'],
     r'--mode=bogus: value should be one of <train\|train_and_eval\|eval\|data>'),
    ('unknown flag', MAIN, ['--bogus_flag=1'], r"Unknown command line flag 'bogus_flag'"),
    ('positional argument', MAIN, ['extra'], r'unexpected argument\(s\) extra'),
    ('int flag given text', MAIN, ['--num_processes=abc'], r'--num_processes=abc'),
    ('half a multi-process setup', MAIN, ['--num_processes=2'],
     r'--coordinator_address=HOST:PORT, --num_processes=N and --process_id=I'),
    ('no --workdir', MAIN, ['--workdir='], r'--mode=train needs --workdir=DIR'),
    ('unwritable workdir', MAIN, lambda tmp_path, _: _unwritable(tmp_path),
     r'Cannot write to workdir'),
    ('evaluator on a workdir that does not exist', MAIN,
     lambda tmp_path, _: ['--mode=eval', f'--workdir={tmp_path / "never"}',
                          '--config.eval.timeout_secs=1'],  # it waits for the trainer that long
     r'does not exist; start the trainer first'),
    ('missing data path', MAIN,
     ['--mode=data', '--config.dataset.source=image_folder', '--config.dataset.path=/no/such'],
     r'/no/such'),
    ('corrupt image', MAIN, lambda tmp_path, _: _image_folder(tmp_path, 'corrupt'), r'0001.png'),
    ('image of another size', MAIN, lambda tmp_path, _: _image_folder(tmp_path, 'size'),
     r'0001.png'),
    ('empty split folder', MAIN, lambda tmp_path, _: _image_folder(tmp_path, 'empty'),
     r'train'),
    ('another model on resume', MAIN,
     lambda tmp_path, trained: [f'--workdir={_copy_of(trained, tmp_path)}',
                                '--config.model.local3_features=32'],
     r'other parameter shapes .*model.local3_features: 16 -> 32'),
    ('corrupt latest checkpoint', MAIN, _corrupt_latest,
     r'checkpoints/10 cannot be .*delete that step folder'),
    ('diverging loss', MAIN, ['--config.learning_rate=1e30'], r'Training diverged'),
    ('unknown test-time augmentation', MAIN, ['--config.eval.tta=flip'],
     r"Unknown config.eval.tta 'flip'; use one of \['none', 'mirror', 'mirror_translate'\]"),
    ('unknown optimizer in a group', MAIN,
     [AIRBENCH_SMOKE, '--config.optimizer_groups.whiten_kernel.optimizer=adam'],
     r"Unknown optimizer 'adam' \(group whiten_kernel\); use one of"),
    ('an optimizer group that matches nothing', MAIN,
     [AIRBENCH_SMOKE, '--config.optimizer_groups.norm_biases.params=("*bn*/bias",)'],
     r'config.optimizer_groups.norm_biases matches no parameter'),
    ('unknown loss reduction', MAIN, [AIRBENCH_SMOKE, '--config.loss_reduction=max'],
     r"Unknown config.loss_reduction 'max'"),
    ('negative checkpoint interval', MAIN, ['--config.checkpoint_every_secs=-1'],
     r'config.checkpoint_every_secs is -1.0; use 0 \(save by steps only\)'),
    ('unknown model dtype', MAIN, ['--config.model.dtype=float16'],
     r"Unknown config.model.dtype 'float16'; use one of \['float32', 'bfloat16'\]"),
    ('no steps per call', MAIN, ['--config.steps_per_call=0'],
     r'config.steps_per_call is 0; it must be at least 1'),
    ('bad profile range', MAIN, ['--config.profile_steps=(5,)'],
     r'config.profile_steps is \(5,\); use \(\) \(off\) or \(start, count\)'),
    ('zero evaluation batch', MAIN, ['--mode=eval', '--config.eval.batch_size=0'],
     r'config.eval.batch_size is 0; it must be at least 1'),
    ('label smoothing above 1', MAIN, ['--config.label_smoothing=1.5'],
     r'config.label_smoothing is 1.5; it must be less than 1'),
    ('no replicas', MAIN, ['--config.num_replicas=0'],
     r'config.num_replicas is 0; it must be at least 1'),
    ('replicas not a whole number', MAIN, ['--config.num_replicas=1.5'],
     r'--config.num_replicas=1.5: invalid literal for int'),
    ('a sweep field without a tuple', MAIN, ['--config.sweep.learning_rate=0.1'],
     r"--config.sweep.learning_rate=0.1: a sweep field takes a tuple of values"),
    ('a swept field that changes shapes', MAIN, ['--config.sweep.per_device_batch_size=(8, 16)'],
     r'per_device_batch_size'),
    ('benchmark: config file missing', BENCHMARK, ['--config=experiments/nope.py'],
     r'no such file'),
    ('benchmark: bad value', BENCHMARK, ['--steps=abc'], r'--steps=abc'),
    ('benchmark: out of range', BENCHMARK, ['--steps=0', '--synthetic'],
     r'--steps and --repeats must be at least 1'),
    ('benchmark: unknown flag', BENCHMARK, ['--bogus=1'], r"Unknown command line flag 'bogus'"),
    ('compare: folders without evaluator records', COMPARE,
     lambda tmp_path, _: [str(tmp_path), str(tmp_path)], r'holds no evaluator records'),
    ('compare: one folder', COMPARE, lambda tmp_path, _: [str(tmp_path)], r'give two or more'),
]


def _mistake_arguments(module, arguments, tmp_path, trained_workdir):
  """The command line (after `python -m module`) of one mistake."""
  if callable(arguments):
    arguments = arguments(tmp_path, trained_workdir)
  flags = list(TINY_FLAGS) if module != COMPARE else []
  if module == MAIN:
    flags.insert(0, f'--workdir={tmp_path / "workdir"}')
  for argument in arguments:
    if argument is NO_CONFIG:
      flags = [f for f in flags if not f.startswith('--config')]
    elif argument.startswith('--config='):
      flags[flags.index(TINY_FLAGS[0])] = argument
      if argument == AIRBENCH_SMOKE:
        flags = [f for f in flags if not f.startswith('--config.model.')]
    else:
      flags.append(argument)
  return flags


# One real process per command: `python -m ...` exits with 1 and prints no traceback (app.run,
# absl's handlers, the interpreter's exit); the table's other lines run in-process.
IN_A_REAL_PROCESS = ('config value out of range', 'benchmark: out of range',
                     'compare: one folder')


def _real_process(arguments):
  module, *flags = arguments
  started = time.time()
  result = subprocess.run([sys.executable, '-m', module, *flags], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  return {'returncode': result.returncode, 'stdout': result.stdout, 'stderr': result.stderr,
          'seconds': time.time() - started}


@pytest.fixture(scope='module')
def mistakes_run(tmp_path_factory, trained_workdir):
  """Every mistake's command line, {id: result}: each command's table in one process through its
  parser and main (tests/command_runner.py), the three commands at once, and a real process for
  each of IN_A_REAL_PROCESS (the same line again)."""
  by_module = {}
  for case_id, module, arguments, _ in COMMAND_LINE_MISTAKES:
    flags = _mistake_arguments(module, arguments, tmp_path_factory.mktemp('mistake'),
                               trained_workdir)
    by_module.setdefault(module, []).append((case_id, flags))
  jobs = {module: functools.partial(command_runner.run_many, module, [f for _, f in cases])
          for module, cases in by_module.items()}
  for case_id, module, _, _ in COMMAND_LINE_MISTAKES:
    if case_id in IN_A_REAL_PROCESS:
      (flags,) = [f for i, f in by_module[module] if i == case_id]
      jobs[('process', case_id)] = functools.partial(_real_process, [module, *flags])
  with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
    futures = {key: pool.submit(job) for key, job in jobs.items()}
  results = {}
  for module, cases in by_module.items():
    results.update(zip([i for i, _ in cases], futures[module].result(), strict=True))
  for case_id in IN_A_REAL_PROCESS:
    results[('process', case_id)] = futures[('process', case_id)].result()
  return results


def _assert_one_error_line(result, expected):
  assert result['returncode'] == 1, result['stderr'][-2000:]
  assert 'Traceback' not in result['stderr'] + result['stdout'], result['stderr'][-3000:]
  errors = [line for line in result['stderr'].splitlines() if line.startswith('error:')]
  assert len(errors) == 1, result['stderr'][-3000:]
  assert re.search(expected, errors[0]), errors[0]


@pytest.mark.parametrize('case_id, expected',
                         [(case[0], case[3]) for case in COMMAND_LINE_MISTAKES],
                         ids=[case[0] for case in COMMAND_LINE_MISTAKES])
def test_a_command_line_mistake_is_one_error_line(case_id, expected, mistakes_run):
  result = mistakes_run[case_id]
  assert result['seconds'] < 60
  _assert_one_error_line(result, expected)


@pytest.mark.parametrize('case_id', IN_A_REAL_PROCESS)
def test_each_command_exits_with_1_and_no_traceback_in_a_real_process(case_id, mistakes_run):
  (expected,) = [case[3] for case in COMMAND_LINE_MISTAKES if case[0] == case_id]
  _assert_one_error_line(mistakes_run[('process', case_id)], expected)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_sweep_given_on_the_command_line_trains_its_points(tmp_path):
  (result,) = command_runner.run_many(MAIN, [[
      f'--workdir={tmp_path}', *TINY_FLAGS, '--config.num_train_steps=4',
      "--config.sweep.learning_rate=(0.02, 0.1)", '--config.sweep.ema.decay=[0.9, 0.99]',
      '--config.sweep_mode=zip']])
  assert result['returncode'] == 0, result['stderr'][-2000:]
  assert 'step 4, loss = ' in result['stdout'] and '(mean of 2 runs;' in result['stdout']
