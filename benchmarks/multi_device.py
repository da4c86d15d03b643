r"""The tutorial's multi-GPU exercise: one device at batch 128 vs two at batch 64.

  python benchmarks/multi_device.py [--steps=50] [--configs=A.py,B.py]

Each config runs in its own process (so that, on a CPU-only machine, it can be
given fake devices with XLA_FLAGS) on synthetic CIFAR-sized data already on the
device(s), and reports compile seconds, examples/sec and sec/batch of the
training step. On a CPU, the "devices" are fake: they share the same cores, so
the comparison says how well each layout keeps those cores busy (one XLA CPU
device does not use two cores fully), not what two real GPUs would give.
"""

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = 'experiments/exercise_one_device.py,experiments/exercise_two_devices.py'


def _load_config(path: str):
  sys.path.insert(0, REPO_ROOT)
  module = os.path.relpath(os.path.abspath(path), REPO_ROOT)[:-3].replace(os.sep, '.')
  return importlib.import_module(module).get_config()


def measure(config_path: str, steps: int, repeats: int) -> dict:
  """Runs in the child process: times compilation and `repeats` x `steps` train steps."""
  sys.path.insert(0, REPO_ROOT)
  import jax  # pylint: disable=g-import-not-at-top

  from cifar_jax.config import validation  # noqa: E401
  from cifar_jax.core import parallel  # noqa: E401
  from cifar_jax.data import datasets, input_pipeline  # noqa: E401
  from cifar_jax.training import builder  # noqa: E401

  config = _load_config(config_path)
  config.dataset.source = 'synthetic'
  config.dataset.synthetic_train_size = 10_000
  config.dataset.synthetic_test_size = 10
  config.dataset.train_split, config.dataset.eval_split = 'train', 'test'
  validation.validate(config)
  split = datasets.load_split(config.dataset, 'train')
  devices = parallel.select_devices(config.num_devices)
  setup = builder.build(config, split, devices)
  state = parallel.replicate(setup.state, devices)
  data = input_pipeline.put_on_devices(split, devices)
  started = time.perf_counter()
  state, metrics = setup.parallel_steps(state, data, setup.batches.indices(0))
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - started
  seconds_per_batch = []
  step = 1
  for _ in range(repeats):
    started = time.perf_counter()
    for _ in range(steps):
      state, metrics = setup.parallel_steps(state, data, setup.batches.indices(step))
      step += 1
    jax.block_until_ready(metrics)
    seconds_per_batch.append((time.perf_counter() - started) / steps)
  sec_per_batch = statistics.median(seconds_per_batch)
  return {
      'config': os.path.basename(config_path),
      'platform': devices[0].platform,
      'devices': len(devices),
      'per_device_batch': setup.batches.per_device_batch_size,
      'global_batch': setup.batches.global_batch_size,
      'examples_per_sec': setup.batches.global_batch_size / sec_per_batch,
      'sec_per_batch': sec_per_batch,
      'spread_sec_per_batch': (min(seconds_per_batch), max(seconds_per_batch)),
      'compile_seconds': compile_seconds,
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', default=DEFAULT_CONFIGS)
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--fake_cpu_devices', type=int, default=2,
                      help='fake CPU devices per process where JAX finds no accelerator')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.child, args.steps, args.repeats)))
    return
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={args.fake_cpu_devices}')
  rows = []
  for config_path in args.configs.split(','):
    result = subprocess.run(
        [sys.executable, __file__, f'--child={config_path}', f'--steps={args.steps}',
         f'--repeats={args.repeats}'], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        check=False)
    if result.returncode:
      sys.exit(f'{config_path} failed:\n{result.stderr[-3000:]}')
    rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
  header = (f'{"config":<26} {"platform":>8} {"devices":>7} {"per-dev":>7} {"global":>6} '
            f'{"examples/sec":>12} {"sec/batch":>9} {"compile s":>9}')
  print(header)
  print('-' * len(header))
  for r in rows:
    print(f'{r["config"]:<26} {r["platform"]:>8} {r["devices"]:>7} {r["per_device_batch"]:>7} '
          f'{r["global_batch"]:>6} {r["examples_per_sec"]:>12.1f} {r["sec_per_batch"]:>9.3f} '
          f'{r["compile_seconds"]:>9.1f}')
  if rows and rows[0]['platform'] == 'cpu':
    print(f'note: these CPU "devices" are fake (XLA_FLAGS=--xla_force_host_platform_device_count)'
          f' and share the same {os.cpu_count()} cores; real accelerators are needed to measure '
          'the speed-up the tutorial asks about.')


if __name__ == '__main__':
  main()
