"""What the summary writers cost a run: per write, per training step, and in a whole run.

  WANDB_MODE=offline python benchmarks/writer_cost.py --config=experiments/cifar10.py \
      --steps=400 --writes=2000

1. Each writer set of config.summaries.writers is started on the recipe's config (its W&B
   runs, its event file) and given `--writes` records of the trainer's log line and of an
   evaluation: the seconds to start, the microseconds per record, and per training step at the
   recipe's config.log_every_steps.
2. The recipe trains `--steps` steps (synthetic data unless --data) with the JSON lines alone,
   then with every writer: the seconds of each run and the fingerprints of what it left
   (parameters, BatchNorm statistics, EMA), which must be equal -- writers change no bit.

W&B needs the `wandb` package; WANDB_MODE=offline measures it without a login.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

from bit_identity import SYNTHETIC, fingerprint  # noqa: E402

from cifar_jax import experiment  # noqa: E402
from cifar_jax.core import summaries  # noqa: E402

WRITER_SETS = (('jsonl',), ('jsonl', 'tensorboard'), ('jsonl', 'wandb'),
               ('jsonl', 'tensorboard', 'wandb'))


def _records(config) -> tuple[dict[str, float], dict[str, float]]:
  """A trainer's log-line scalars and an evaluation's, as the run writes them."""
  train = {'loss': 2.1, 'cross_entropy': 2.0, 'learning_rate': 0.1, 'precision': 0.3,
           'examples_per_sec': 900.0}
  evaluation = {'precision': 0.7, 'precision_raw': 0.69, 'loss': 0.9, 'loss_raw': 0.91,
                'count': 10000.0, 'eval_seconds': 3.0,
                **{f'per_class_precision/class_{c}': 0.7 for c in range(10)}}
  runs = config.num_replicas
  if runs > 1:
    for values in (train, evaluation):
      for key in list(values):
        values.update({f'{key}/replica_{r}': values[key] for r in range(runs)})
  return train, evaluation


def time_writes(config, writes: int) -> dict[str, float]:
  """Seconds to start config's writers; microseconds per trainer and per evaluation record."""
  train, evaluation = _records(config)
  with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    writer = summaries.create_writer(workdir, True, config)
    start = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(writes):
      writer.write_scalars(step, train)
    per_train = (time.perf_counter() - started) / writes * 1e6
    started = time.perf_counter()
    for step in range(writes):
      writer.write_scalars(step, evaluation, record={'status': 'scored'})
    per_eval = (time.perf_counter() - started) / writes * 1e6
    started = time.perf_counter()
    writer.close()
    close = time.perf_counter() - started
  return {'start_s': start, 'train_us': per_train, 'eval_us': per_eval, 'close_s': close}


def train_with(config_path: str, overrides: dict, writers: tuple[str, ...]
               ) -> tuple[float, str]:
  """Seconds of a whole run (start to end) with `writers`, and the fingerprint of its state."""
  config = experiment.load_config(config_path, {**overrides, 'summaries.writers': writers})
  with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    state = experiment.train(config, workdir, evaluate_in_process=False)
    seconds = time.perf_counter() - started
  return seconds, ' '.join(fingerprint(t) for t in
                           (state.params, state.batch_stats, state.ema_params))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='experiments/cifar10.py', help='a recipe')
  parser.add_argument('--data', default='', help='an image folder (default: synthetic data)')
  parser.add_argument('--steps', type=int, default=200, help='training steps of each run')
  parser.add_argument('--writes', type=int, default=1000, help='records timed per writer set')
  parser.add_argument('--replicas', type=int, default=1, help='config.num_replicas')
  parser.add_argument('--batch_size', type=int, default=0, help="config.batch_size (0: the "
                      "recipe's)")
  args = parser.parse_args()
  config_path = os.path.join(ROOT, args.config) if not os.path.isabs(args.config) else args.config
  overrides = {'num_replicas': args.replicas, 'compilation_cache_dir': '',
               'num_train_epochs': 0.0, 'num_train_steps': args.steps}
  overrides.update({'dataset.path': args.data, 'dataset.train_split': 'train[:4500]'}
                   if args.data else SYNTHETIC)
  if args.batch_size:
    overrides.update({'batch_size': args.batch_size, 'per_device_batch_size': 0})
  try:
    import wandb  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    sets = WRITER_SETS
  except ImportError:
    print('(no wandb package: its sets are left out)')
    sets = tuple(s for s in WRITER_SETS if 'wandb' not in s)
  config = experiment.load_config(config_path, overrides)
  every = config.log_every_steps
  print(f'Writers per record ({args.writes} records each; the trainer writes one every '
        f'{every} steps):')
  print(f'{"writers":28s} {"start s":>8s} {"train us":>9s} {"eval us":>9s} {"us/step":>8s} '
        f'{"close s":>8s}')
  for writers in sets:
    row = time_writes(experiment.load_config(
        config_path, {**overrides, 'summaries.writers': writers}), args.writes)
    print(f'{",".join(writers):28s} {row["start_s"]:8.3f} {row["train_us"]:9.1f} '
          f'{row["eval_us"]:9.1f} {row["train_us"] / every:8.2f} {row["close_s"]:8.3f}',
          flush=True)
  print(f'\nWhole runs of {args.steps} steps (start to end):')
  results = {}
  for writers in (sets[0], sets[-1]):
    seconds, prints = train_with(config_path, overrides, writers)
    results[writers] = prints
    print(f'{",".join(writers):28s} {seconds:8.2f} s  {prints}', flush=True)
  identical = len(set(results.values())) == 1
  print(f'bit-identical: {identical}')
  if not identical:
    sys.exit('error: the runs differ; a writer changed the training.')


if __name__ == '__main__':
  main()
