r"""Command line: flags -> `train_and_evaluate`, `evaluate` or a data summary.

  python -m cifar_jax.main --workdir=/tmp/cifar10 --config=experiments/cifar10.py
  python -m cifar_jax.main --workdir=/tmp/cifar10 --mode=eval   # the run's own config
  python -m cifar_jax.main --config=experiments/cifar10.py --mode=data

Any config field can be overridden, e.g. `--config.num_train_steps=2000`, an extension's too
(`--config.augment.extra="('fork:Cutout',)" --config.augment.cutout_size=12`).
"""

import sys

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from cifar_jax import cli
from cifar_jax.config import validation
from cifar_jax.core import parallel, summaries, terminal
from cifar_jax.core.errors import UserError, WriteError
from cifar_jax.data import datasets, splits
from cifar_jax.run import evaluate, train
from cifar_jax.training import builder, lifecycle
from cifar_jax.workdir import run_config

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, summaries and logs.')
flags.DEFINE_enum(
    'mode', 'train', ['train', 'train_and_eval', 'eval', 'data'],
    'train: train (and resume) in WORKDIR; train_and_eval: also score every '
    'config.eval_every_steps in the same process; eval: the evaluator, scoring each new '
    'checkpoint in WORKDIR; data: describe the train and eval splits (and fill the cache).')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process runs: HOST:PORT of process 0 (see docs/multi_host.md). '
                    'Under SLURM it is detected.')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: the number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0..N-1.')
flags.DEFINE_bool('verbose', False, 'Show the INFO log (config, parameter table, start-up '
                  'times, ...) on the terminal too; it always goes to WORKDIR/logs/.')
flags.DEFINE_integer('distributed_timeout_secs', 300,
                     'How long to wait for the other processes to join.')
config_flags.DEFINE_config_file(
    'config', None, 'Path to an experiments/*.py config file (--mode=eval without it: the '
    "run's own, WORKDIR/config.json).", lock_config=True)


def describe_data(config) -> None:
  train_split = config.dataset.train_split
  print(splits.describe(datasets.load_split(config.dataset, train_split), train_split),
        flush=True)
  print(splits.describe(datasets.load_eval_split(config.dataset), config.dataset.eval_split),
        flush=True)


def _config() -> ml_collections.ConfigDict:
  """--config's recipe with its overrides; without --config, the run in WORKDIR's own config
  (WORKDIR/config.json) with the overrides on top: the evaluator's (evaluation fields only) or
  a resume's."""
  if FLAGS.config is not None:
    return cli.with_overrides(FLAGS.config)
  if FLAGS.mode == 'data' or not FLAGS.workdir:
    raise UserError(f'--config=... is required (for --config: {cli.CONFIG_HINT}; without it, '
                    '--workdir=DIR reads the run there).')
  if FLAGS.mode == 'eval':
    return run_config.for_evaluation(FLAGS.workdir, cli.config_overrides())
  return run_config.for_resume(FLAGS.workdir, cli.config_overrides())


def main(argv):
  del argv  # cli.parse_flags refuses positional arguments
  terminal.show_on_terminal(FLAGS.verbose)
  try:
    config = _config()
    builder.respect_given_fields(config, cli.config_overrides())
    validation.validate(config)
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id, FLAGS.distributed_timeout_secs,
                                    config.collective_timeout_secs)
    if FLAGS.workdir and FLAGS.mode != 'data':
      terminal.log_to_workdir(FLAGS.workdir, 'eval' if FLAGS.mode == 'eval' else 'train')
    logging.info('Config:\n%s', config)
    if FLAGS.mode == 'data':
      describe_data(config)
      return
    if not FLAGS.workdir:
      raise UserError(f'--mode={FLAGS.mode} needs --workdir=DIR (checkpoints and summaries).')
    if FLAGS.mode in ('train', 'train_and_eval'):
      train.train_and_evaluate(config, FLAGS.workdir,
                               evaluate_in_process=FLAGS.mode == 'train_and_eval')
    else:
      evaluate.evaluate(config, FLAGS.workdir)
  except UserError as e:
    cli.fail(str(e), at_once=isinstance(e, WriteError))
  except lifecycle.Preempted as e:
    if jax.process_index() == 0:
      summaries.print_line(str(e))
    sys.exit(e.exit_status)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
