"""A WORKDIR's layout: every file and folder a run keeps there, named in this one place.

  WORKDIR/
    config.json            the config the run trains with (workdir/run_config.py)
    checkpoints/STEP/      Orbax checkpoints, each with its checksums (workdir/checkpoints.py)
    corrupt_checkpoints/   steps found corrupt, moved aside (workdir/checkpointer.py)
    train_complete         the final step, for evaluators (workdir/checkpoints.py)
    trainer.lock           one trainer per WORKDIR (workdir/workdir_lock.py)
    metrics.jsonl          the trainer's log records; TensorBoard's event files beside them
    wandb/                 with the W&B writer: its files and runs.json (core/wandb_writer.py)
    eval/                  the evaluator's records (eval/metrics.jsonl), event files, wandb/
    logs/                  train.log, eval.log: the INFO detail (core/terminal.py)
    profile/               jax.profiler traces (config.profile_steps)
    compilation_cache/     compiled XLA programs (config.compilation_cache_dir's default)
"""

from __future__ import annotations

import os

CONFIG = 'config.json'
CHECKPOINTS = 'checkpoints'
CORRUPT_CHECKPOINTS = 'corrupt_checkpoints'
TRAIN_COMPLETE = 'train_complete'
TRAINER_LOCK = 'trainer.lock'
METRICS = 'metrics.jsonl'
EVAL = 'eval'
LOGS = 'logs'
PROFILE = 'profile'
COMPILATION_CACHE = 'compilation_cache'


def path(workdir: str, *parts: str) -> str:
  """WORKDIR/part/...: `path(workdir, layout.EVAL, layout.METRICS)`."""
  return os.path.join(workdir, *parts)
