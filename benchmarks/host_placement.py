r"""Training from a cached split several times larger than what the process keeps in memory.

  python benchmarks/host_placement.py [--gib=4] [--image_size=64] [--steps=200]

Writes a generated uint8 split of about `--gib` GiB in the decoded cache's
own format (images.npy, labels.npy, class_names.json) under `--dir`, and in a
fresh process (as a trainer reads a cache an earlier run wrote) opens it as
the trainer does and trains the tutorial network on it with
`config.dataset.placement=host` for `--steps` steps (the host reads each
call's rows from the cache file and copies them ahead). Reports images/s,
the peak resident memory of that process (VmHWM, compilation included)
against the split's size, and its resident memory at the end by kind
(RssAnon: the process's own; RssFile: mapped file pages, its libraries).
Nothing is timed as a pass/fail.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def write_split(path: str, gib: float, image_size: int, num_classes: int = 10) -> int:
  """A generated split of ~`gib` GiB as a cache entry at `path`, written in chunks; its size."""
  per_image = image_size * image_size * 3
  count = max(1, int(gib * 2**30 // per_image))
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, num_classes, count).astype(np.int32)
  chunk = max(1, 2**25 // per_image)  # 32 MiB at a time
  # Plain file writes, not a map: the pages go to the kernel's cache, not this process's
  # resident memory, so the training below is measured alone.
  with open(os.path.join(path, 'images.npy'), 'wb') as f:
    np.lib.format.write_array_header_1_0(f, {
        'descr': '|u1', 'fortran_order': False, 'shape': (count, image_size, image_size, 3)})
    for start in range(0, count, chunk):
      stop = min(count, start + chunk)
      # A class-dependent mean plus noise: learnable, so the loss shows training happens.
      base = (labels[start:stop, None, None, None] * 20 + 30).astype(np.uint8)
      noise = rng.integers(0, 40, (stop - start, image_size, image_size, 3), dtype=np.uint8)
      f.write((base + noise).tobytes())
  np.save(os.path.join(path, 'labels.npy'), labels)
  with open(os.path.join(path, 'class_names.json'), 'w') as f:
    json.dump([f'class_{i}' for i in range(num_classes)], f)
  return count


def memory_mib() -> dict[str, float]:
  """VmHWM, VmRSS, RssAnon and RssFile of this process, in MiB (Linux /proc)."""
  fields = {}
  with open('/proc/self/status') as f:
    for line in f:
      name, _, value = line.partition(':')
      if name in ('VmHWM', 'VmRSS', 'RssAnon', 'RssFile'):
        fields[name] = int(value.split()[0]) / 1024
  return fields


def train_from_map(path: str, steps: int, batch: int, steps_per_call: int) -> dict:
  """Trains the tutorial net from the memory-mapped split at `path`; figures."""
  import jax  # pylint: disable=g-import-not-at-top

  from cifar_jax.config import validation  # noqa: E401
  from cifar_jax.core import parallel  # noqa: E401
  from cifar_jax.data import decoded_cache  # noqa: E401
  from cifar_jax.training import builder, loop  # noqa: E401
  from experiments import cifar10  # pylint: disable=g-import-not-at-top

  split = decoded_cache.read_cached_split(path)
  assert isinstance(split.images, np.memmap)
  config = cifar10.get_config()
  config.dataset.source = 'synthetic'  # the split is given; the source fields go unused
  config.dataset.synthetic_train_size = config.dataset.synthetic_test_size = 1
  config.dataset.synthetic_image_size = split.image_shape[0]  # what the config check knows
  config.dataset.placement = 'host'
  config.crop_size = min(48, split.image_shape[0])  # most of each image: no small-crop warning
  config.per_device_batch_size = batch
  config.num_devices = 1
  config.num_train_steps = steps
  config.steps_per_call = steps_per_call
  validation.validate(config)
  devices = parallel.select_devices(1)
  before = memory_mib()
  setup = builder.build(config, split, devices)
  assert setup.placement == 'host'
  # The first call compiles: timed apart, the rest at the training's pace.
  progress = loop.Progress(parallel.replicate(setup.state, devices), 0, steps_per_call,
                           setup.batches.examples_per_step)
  feed = setup.feed(split)
  try:
    jax.block_until_ready(loop.run(setup, progress, feed, steps_per_call).replicated_state)
    started = time.perf_counter()
    progress.end_step = steps
    loop.run(setup, progress, feed, steps_per_call)
    losses = np.asarray(progress.metrics()['loss'])
    jax.block_until_ready(progress.replicated_state)
  finally:
    feed.close()
  seconds = time.perf_counter() - started
  timed_steps = steps - steps_per_call
  after = memory_mib()
  return {'images': split.num_examples, 'split_mib': split.images.nbytes / 2**20,
          'steps': steps, 'img_per_s': timed_steps * batch / seconds,
          'loss': float(np.mean(losses)), 'before': before, 'after': after}


def report(figures: dict, batch: int) -> None:
  after = figures['after']
  print(f'trained {figures["steps"]} steps of {batch} from the cache file: '
        f'{figures["img_per_s"]:.0f} images/s, mean loss {figures["loss"]:.3f}')
  print(f'split {figures["split_mib"]:,.0f} MiB; peak resident {after["VmHWM"]:,.0f} MiB '
        f'({100 * after["VmHWM"] / figures["split_mib"]:.0f}% of the split); at the end '
        f'{after["RssAnon"]:,.0f} MiB own + {after["RssFile"]:,.0f} MiB mapped file pages '
        f'(before training: {figures["before"]["VmRSS"]:,.0f} MiB)')
  print(' '.join(f'{k}={v:.1f}' for k, v in {
      'split_mib': figures['split_mib'], 'peak_rss_mib': after['VmHWM'],
      'rss_anon_mib': after['RssAnon'], 'rss_file_mib': after['RssFile'],
      'img_per_s': figures['img_per_s']}.items()))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--gib', type=float, default=4.0, help='size of the generated split')
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps_per_call', type=int, default=10)
  parser.add_argument('--dir', default='', help="where to write it ('': a temporary folder)")
  parser.add_argument('--train_from', default='',
                      help='train from this split (the child process that measures)')
  args = parser.parse_args()
  if args.train_from:
    report(train_from_map(args.train_from, args.steps, args.batch, args.steps_per_call),
           args.batch)
    return
  root = args.dir or tempfile.mkdtemp(prefix='cifar_jax_host_placement_')
  path = os.path.join(root, 'split')
  try:
    started = time.perf_counter()
    count = write_split(path, args.gib, args.image_size)
    print(f'wrote {count:,} images of {args.image_size}x{args.image_size}x3 '
          f'({count * args.image_size**2 * 3 / 2**30:.2f} GiB) in '
          f'{time.perf_counter() - started:.0f} s', flush=True)
    # A fresh process trains, as a trainer reads a cache an earlier run wrote: the writer's
    # buffers are not counted in its memory.
    subprocess.run([sys.executable, __file__, f'--train_from={path}', f'--steps={args.steps}',
                    f'--batch={args.batch}', f'--steps_per_call={args.steps_per_call}'],
                   check=True)
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  main()
