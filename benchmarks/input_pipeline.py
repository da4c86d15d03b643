r"""Throughput of the on-device input pipeline: gather + augmentation, no model.

  python benchmarks/input_pipeline.py [--batch_size=128] [--num_examples=50000] [--steps=200]

Prints images/s produced on the device(s) for the tutorial's training
preprocessing (crop, flip, brightness, contrast, standardisation) and for the
evaluation preprocessing, over several repetitions (median and spread).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cifar_jax.core import parallel  # noqa: E402
from cifar_jax.data import augmentations, input_pipeline  # noqa: E402
from cifar_jax.data.datasets import Split  # noqa: E402
from experiments import cifar10  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch_size', type=int, default=128, help='per device')
  parser.add_argument('--num_examples', type=int, default=50_000)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  config = cifar10.get_config()
  devices = jax.local_devices()
  rng = np.random.default_rng(0)
  split = Split(rng.integers(0, 256, (args.num_examples, 32, 32, 3), dtype=np.uint8),
                rng.integers(0, 10, args.num_examples).astype(np.int32), tuple('0123456789'))
  data = input_pipeline.put_on_devices(split, devices)
  schedule = input_pipeline.BatchSchedule(args.num_examples, args.batch_size, len(devices), 0)
  augmentation = augmentations.Augmentation.from_config(config, schedule.steps_per_epoch)
  preprocessing = input_pipeline.EvalPreprocessing.from_config(config)

  def train_images(data, indices, step):
    return augmentations.train_batch(data, indices, jax.random.PRNGKey(0), step,
                                      augmentation)['image'].sum()

  def eval_images(data, indices, step):
    del step
    return input_pipeline.eval_batch(data, indices, preprocessing)['image'].sum()

  print(f'{len(devices)} {devices[0].platform} device(s), {args.batch_size} images per device '
        'per batch')
  results = {}
  for name, fn in (('train', train_images), ('eval', eval_images)):
    mapped = parallel.pmap(fn, devices)
    steps = np.zeros((len(devices),), np.int32)
    jax.block_until_ready(mapped(data, schedule.indices(0)[:, 0], steps))  # compile
    rates = []
    for _ in range(args.repeats):
      started = time.perf_counter()
      out = None
      for step in range(args.steps):
        out = mapped(data, schedule.indices(step)[:, 0], steps + step)
      jax.block_until_ready(out)
      rates.append(args.steps * schedule.global_batch_size / (time.perf_counter() - started))
    results[name] = rates
    print(f'{name} preprocessing: {statistics.median(rates):,.0f} images/s '
          f'(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.repeats} x {args.steps} batches)')
  print(f'train_img_per_s={statistics.median(results["train"]):.0f} '
        f'eval_img_per_s={statistics.median(results["eval"]):.0f}')


if __name__ == '__main__':
  main()
