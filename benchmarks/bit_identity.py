"""Fingerprints of what a few training steps leave behind, to prove a refactoring changed nothing.

  python benchmarks/bit_identity.py --data=../shared/data/cifar10-jpeg-train.tar.gz

trains each case below a few steps (the recipe's own batch, schedule, model and
replicas, on a small part of an image folder) and prints one SHA-256 prefix
each of every parameter, every BatchNorm statistic and every EMA leaf (leaves
in path order, their dtypes, shapes and bytes). Run it on the commit before a
change and on the change, on the same machine: equal lines mean the runs are
bit-identical. Without --data it uses the recipes' synthetic data, for a quick
check (`tests/test_benchmark_scripts.py` runs it so). `--formulation=reference`
sets config.model.formulation: the commit before the fast BatchNorm prints the
same lines as `--formulation=reference` after it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from typing import Any

# Two CPU devices unless told otherwise: the gradient and BatchNorm statistics are combined
# across devices, as on a GPU host.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cifar_jax import experiment  # noqa: E402

# (name, recipe, overrides): small steps of each family, replicas and a sweep.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ('tutorial', 'cifar10_jpeg.py', {'per_device_batch_size': 32}),
    # (global batches: 128 and 16 per device on the script's two devices, as before the
    # recipes gave theirs globally)
    ('airbench94', 'airbench94_jpeg.py', {'batch_size': 256}),
    ('airbench94_muon x2 replicas', 'airbench94_muon_jpeg.py',
     {'batch_size': 256, 'num_replicas': 2}),
    ('resnet18', 'resnet18_jpeg.py', {'batch_size': 32}),
    ('tutorial lr sweep', 'cifar10_jpeg.py',
     {'per_device_batch_size': 32, 'sweep.learning_rate': (0.05, 0.2)}),
]
SYNTHETIC = {'dataset.source': 'synthetic', 'dataset.synthetic_train_size': 512,
             'dataset.synthetic_test_size': 10,
             'dataset.synthetic_image_size': 32, 'dataset.train_split': 'train',
             'dataset.eval_split': 'test', 'dataset.path': ''}


def fingerprint(tree: Any) -> str:
  """SHA-256 prefix of every leaf of `tree` in path order: dtype, shape and bytes."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)} {array.dtype} {array.shape}'.encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


def run_case(recipe: str, overrides: dict[str, Any], data: str | None, steps: int,
             per_class: int, formulation: str = '') -> dict[str, str]:
  fields = dict(overrides)
  if formulation:
    fields['model.formulation'] = formulation
  if data:
    fields.update({'dataset.path': data, 'dataset.train_split': f'train[:{per_class}]',
                   'dataset.eval_split': f'train[{per_class}:{per_class + 10}]'})
  else:
    fields.update(SYNTHETIC)
  fields.update({'compilation_cache_dir': '', 'num_train_steps': steps, 'num_train_epochs': 0.0,
                 'steps_per_call': 1,
                 'log_every_steps': steps, 'checkpoint_every_steps': steps,
                 'eval_every_steps': 0, 'histogram_every_steps': steps})
  config = experiment.load_config(os.path.join(ROOT, 'experiments', recipe), fields)
  with tempfile.TemporaryDirectory() as workdir:
    state = experiment.train(config, workdir, evaluate_in_process=False)
  return {'params': fingerprint(state.params), 'batch_stats': fingerprint(state.batch_stats),
          'ema': fingerprint(state.ema_params)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default='', help='an image folder or tarball (default: synthetic)')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--per_class', type=int, default=60, help='training files per class')
  parser.add_argument('--cases', default='', help='comma-separated case names (default: all)')
  parser.add_argument('--formulation', default='', help="config.model.formulation (default: the "
                      "recipe's)")
  args = parser.parse_args()
  wanted = set(filter(None, args.cases.split(',')))
  print(f'{"case":30s} {"params":16s} {"batch_stats":16s} {"ema":16s}')
  for name, recipe, overrides in CASES:
    if wanted and name not in wanted:
      continue
    hashes = run_case(recipe, overrides, args.data or None, args.steps, args.per_class,
                      args.formulation)
    print(f'{name:30s} {hashes["params"]} {hashes["batch_stats"]} {hashes["ema"]}', flush=True)


if __name__ == '__main__':
  main()
