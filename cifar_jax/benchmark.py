r"""Throughput benchmark: how fast a config trains and evaluates on this machine.

  python -m cifar_jax.benchmark --config=experiments/cifar10.py [--config.field=value]
      [--synthetic] [--steps=30] [--repeats=5] [--pytorch]

After warm-up it times, over `--repeats` windows of `--steps` steps each
(median, with min and max):

  train step   the pure `train_step.train_step` (forward, backward, pmean,
               optimizer, EMA) on one augmented batch already on the device(s);
  end to end   the training loop itself (`loop.run`) with its periodic actions
               switched off: each call's indices from the `BatchSchedule` go
               to the device, examples are gathered and augmented there,
               `config.steps_per_call` steps per device call; with
               `--config.dataset.placement=host` the examples are gathered on
               the host and copied ahead instead (`placement`);
  host gather  the host placement's own work per step, alone: gathering one
               call's examples on the host and copying them to the devices
               (its share of an end-to-end step is what host placement costs
               where the copy does not overlap the step);
  eval         `scoring.Evaluator.predict` over the whole eval split (with the
               config's test-time augmentation, `config.eval.tta`).

With `--breakdown` it also times the loss's forward and its gradient alone
(one device's batch, the trainer's compiler options): what a train step
spends beyond the gradient is its optimizer, BatchNorm statistics, device
mean and metrics. It also reports compile seconds, peak host (and, on GPUs/TPUs, device) memory,
and the achieved GFLOP/s of the train step (XLA's FLOP count of the step) next
to a 2048x2048 float32 matmul measured in the same run. With
`--config.num_replicas=R` (or a recipe with a sweep: P points x R) every figure counts the
images of all R runs, and
"one run" is each run's share of the time of `config.num_train_steps` steps
(compare with R = 1 for R runs one after the other). `--synthetic` swaps the dataset for random
images of the same shape (no data needed; TensorFlow not needed). With
`--pytorch`, the same network's training step in PyTorch runs afterwards in
its own process (`benchmarks/pytorch_reference.py` for the tutorial net,
`benchmarks/resnet_reference.py --speed` for the ResNet families (Nesterov
SGD with PyTorch's weight decay, as the recipes),
`benchmarks/airbench_reference.py --speed` for airbench94, with the config's
optimizer recipe) with `--pytorch_python` (default: this Python), when torch
is installed there. The last line is machine-readable.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from cifar_jax import cli
from cifar_jax.config import validation
from cifar_jax.core import parallel, sweeps, terminal
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations, datasets, input_pipeline
from cifar_jax.evaluation import scoring
from cifar_jax.training import builder, loop, placement, train_state, train_step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to an experiments/*.py config file.',
                                lock_config=True)
flags.DEFINE_integer('steps', 30, 'Train steps per timed window.')
flags.DEFINE_integer('repeats', 5, 'Timed windows; the median is reported.')
flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps after compilation.')
flags.DEFINE_bool('synthetic', False,
                  'Random images of the config\'s shape instead of its dataset.')
flags.DEFINE_integer('synthetic_train_size', 50_000, 'Training examples with --synthetic.')
flags.DEFINE_integer('synthetic_eval_size', 10_000, 'Eval examples with --synthetic.')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the float32 matmul timed as a yardstick.')
flags.DEFINE_bool('breakdown', False, "Also time the loss's forward and its gradient alone "
                  '(the rest of a train step: the optimizer, statistics and metrics).')
flags.DEFINE_bool('pytorch', False, 'Also time the network in PyTorch (needs torch).')
flags.DEFINE_string('pytorch_python', sys.executable, 'The Python that runs the PyTorch half.')
flags.DEFINE_string('pytorch_references', 'benchmarks', 'The folder of the PyTorch reference '
                    'scripts: benchmarks/ of a cifar_jax checkout (the package has none).')
flags.DEFINE_bool('verbose', False, 'Show the INFO log on the terminal too.')
flags.mark_flags_as_required(['config'])

RESNET_FAMILIES = ('resnet', 'preact_resnet', 'wide_resnet')


def _timed_windows(run_steps: Callable[[int], Any], steps: int, repeats: int) -> list[float]:
  """Seconds per step of `repeats` windows of `steps` steps (each ends with a sync)."""
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(run_steps(steps))
    seconds.append((time.perf_counter() - started) / steps)
  return seconds


def _rate(items_per_call: int, seconds: list[float]) -> dict[str, float]:
  rates = sorted(items_per_call / s for s in seconds)
  return {'median': statistics.median(rates), 'min': rates[0], 'max': rates[-1]}


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """float32 [size, size] @ [size, size] on the default device, median GFLOP/s."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    for _ in range(5):
      out = matmul(a)
    jax.block_until_ready(out)
    seconds.append((time.perf_counter() - started) / 5)
  return 2 * size**3 / statistics.median(seconds) / 1e9


def _load_splits(config: ml_collections.ConfigDict, synthetic: bool, train_size: int,
                 eval_size: int) -> tuple[datasets.Split, datasets.Split]:
  if synthetic:
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset.source = 'synthetic'
    config.dataset.synthetic_train_size = train_size
    config.dataset.synthetic_test_size = eval_size
    config.dataset.train_split, config.dataset.eval_split = 'train', 'test'
  return (datasets.load_split(config.dataset, config.dataset.train_split),
          datasets.load_eval_split(config.dataset))


def _one_device_loss(setup: builder.Setup, batch: dict[str, jax.Array]
                     ) -> tuple[Callable[[Any], jax.Array], Any]:
  """(params -> the training-mode loss of one device's batch, the first run's params)."""
  model = setup.model.clone(axis_name=None) if hasattr(setup.model, 'axis_name') else setup.model
  loss_options = setup.pieces.options.loss
  state = setup.state
  if jax.tree.leaves(state)[0].ndim:  # replicas: the first run's
    state = train_state.replica(state, 0)

  def loss(params):
    logits, _ = model.apply(state.variables(params), batch['image'], train=True,
                            mutable=['batch_stats'])
    return train_step.cross_entropy_loss(logits, batch['label'], loss_options.label_smoothing)
  return loss, state.params


def _step_flops_per_example(setup: builder.Setup, batch: dict[str, jax.Array]) -> float:
  """XLA's FLOP count of one device's loss gradient (training mode), per example of one run."""
  loss, params = _one_device_loss(setup, batch)
  try:
    cost = jax.jit(jax.grad(loss)).lower(params).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops']) / batch['image'].shape[0]
  except Exception:  # pylint: disable=broad-except
    logging.warning('No XLA cost analysis on this backend; GFLOP/s not reported.')
    return float('nan')


def _end_to_end(setup: builder.Setup, feed: Any, devices: list[jax.Device],
                config: ml_collections.ConfigDict, steps: int, repeats: int, warmup_steps: int
                ) -> tuple[float, list[float]]:
  """(compile seconds, seconds per step of each window) of the training loop, no actions."""
  devices_state = parallel.replicate(setup.state, devices)
  progress = loop.Progress(devices_state, 0, 1, setup.batches.global_batch_size)
  started = time.perf_counter()
  jax.block_until_ready(loop.run(setup, progress, feed, 1).replicated_state)
  compile_seconds = time.perf_counter() - started

  def loop_steps(n):
    progress.end_step = progress.step + n
    return loop.run(setup, progress, feed, config.steps_per_call).replicated_state.step

  # Warm-up also compiles each call length the timed windows use.
  loop_steps(max(warmup_steps, steps if config.steps_per_call > 1 else 0))
  return compile_seconds, _timed_windows(loop_steps, steps, repeats)


def _host_gather(setup: builder.Setup, split: datasets.Split, devices: list[jax.Device],
                 config: ml_collections.ConfigDict, steps: int, repeats: int) -> list[float]:
  """Seconds per step of the host placement's gather and copy of one call's examples, alone."""
  host = placement.HostFeed(split, devices, setup.batches)
  calls = max(1, steps // config.steps_per_call)

  def gather(n):
    for call in range(n):
      jax.block_until_ready(host.gather(setup.batches.indices(call * config.steps_per_call,
                                                              config.steps_per_call)))

  try:
    gather(1)
    return [t / config.steps_per_call for t in _timed_windows(gather, calls, repeats)]
  finally:
    host.close()


def _pure_train_step(setup: builder.Setup, split: datasets.Split,
                     devices: list[jax.Device], config: ml_collections.ConfigDict, steps: int,
                     repeats: int, warmup_steps: int
                     ) -> tuple[list[float], dict[str, jax.Array]]:
  """Seconds per step of `train_step.train_step` on one augmented batch; that batch.

  With replicas, every replica steps on that batch (`train_step.map_replicas`).
  """
  make_batch = parallel.pmap(lambda rows, indices: {
      'image': augmentations.augment_batch(rows.images, indices, jax.random.PRNGKey(0), 0,
                                            setup.pieces.options.augmentation),
      'label': rows.labels}, devices)
  indices = setup.batches.indices(0)  # [devices, (replicas,) 1, batch]
  indices = indices.reshape(len(devices), -1, indices.shape[-1])[:, 0]
  rows = parallel.shard(input_pipeline.DeviceData(images=split.images[indices],
                                                  labels=split.labels[indices]), devices)
  batch = make_batch(rows, indices)
  unroll = devices[0].platform == 'cpu'
  def one_run(state, values, batch):  # (a sweep's run: its optimizer and options from values)
    return train_step.train_step(state, batch, apply_fn=setup.model.apply,
                                 pieces=setup.pieces_of(values))
  step = one_run
  if sweeps.num_runs(config) > 1:
    each = train_step.map_replicas(one_run, config.replica_execution, unroll)
    step = lambda state, values, batch: each((state, values), batch)  # noqa: E731
  pure_step = parallel.pmap(step, devices, donate_argnums=(0,))
  p_state = parallel.replicate(setup.state, devices)
  p_values = parallel.replicate(setup.run_values, devices)

  def pure_steps(n):
    nonlocal p_state
    for _ in range(n):
      p_state, step_metrics = pure_step(p_state, p_values, batch)
    return step_metrics

  pure_steps(1 + warmup_steps)
  return _timed_windows(pure_steps, steps, repeats), batch


def _step_parts(setup: builder.Setup, batch: dict[str, jax.Array], devices: list[jax.Device],
                steps: int, repeats: int) -> dict[str, list[float]]:
  """Seconds per step of the loss's forward and of its gradient alone, on one device's batch.

  Compiled with the trainer's options (`parallel.compiler_options`) but without
  the step's optimizer, BatchNorm statistics, device mean and metrics: a train
  step minus the gradient is what those cost.
  """
  loss, params = _one_device_loss(setup, batch)
  params = jax.device_put(params, devices[0])
  options = parallel.compiler_options(devices[0].platform)
  parts = {}
  for name, fn in (('forward', loss), ('gradient', jax.grad(loss))):
    executable = jax.jit(fn).lower(params).compile(options)
    run_part = lambda n, executable=executable: [  # noqa: E731
        jax.block_until_ready(executable(params)) for _ in range(n)]
    run_part(1)
    parts[name] = _timed_windows(run_part, steps, repeats)
  return parts


def run(config: ml_collections.ConfigDict, *, steps: int = 30, repeats: int = 5,
        warmup_steps: int = 3, synthetic: bool = False, synthetic_train_size: int = 50_000,
        synthetic_eval_size: int = 10_000, matmul_size: int = 2048,
        breakdown: bool = False) -> dict[str, Any]:
  """Measures `config`; returns the figures `main` prints (`breakdown`: the step's parts too)."""
  validation.validate(config)
  if steps < 1 or repeats < 1:
    raise UserError('--steps and --repeats must be at least 1.')
  devices = parallel.select_devices(config.num_devices)
  train_split, eval_split = _load_splits(config, synthetic, synthetic_train_size,
                                         synthetic_eval_size)
  setup = builder.build(config, train_split, devices)
  config = setup.config
  replicas = sweeps.num_runs(config)  # a sweep's points x seeds
  examples = setup.batches.examples_per_step  # the global batch of every replica
  figures: dict[str, Any] = {
      'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
      'devices': len(devices), 'global_batch': setup.batches.global_batch_size,
      'num_replicas': replicas, 'replica_execution': config.replica_execution,
      'placement': setup.placement, 'matmul_gflops': matmul_gflops(matmul_size)}
  with contextlib.closing(setup.feed(train_split)) as feed:
    figures['compile_s'], end_to_end = _end_to_end(setup, feed, devices, config, steps, repeats,
                                                   warmup_steps)
  train_seconds, batch = _pure_train_step(setup, train_split, devices, config, steps, repeats,
                                          warmup_steps)
  figures['train_step'] = _rate(examples, train_seconds)
  figures['end_to_end'] = _rate(examples, end_to_end)
  figures['host_gather'] = _rate(examples, _host_gather(setup, train_split, devices, config,
                                                        steps, repeats))
  figures['host_share'] = figures['end_to_end']['median'] / figures['host_gather']['median']
  figures['sec_per_batch'] = statistics.median(train_seconds)
  # Each run's share of the time: its num_train_steps at the R runs' pace, divided by R.
  figures['run_s'] = config.num_train_steps * statistics.median(end_to_end) / replicas
  one_device_batch = jax.tree.map(lambda x: x[0], batch)
  flops = _step_flops_per_example(setup, one_device_batch)
  if breakdown:
    per_device = examples // len(devices)  # the examples of one device's share
    figures['parts'] = {name: _rate(per_device // replicas, seconds) for name, seconds in
                        _step_parts(setup, one_device_batch, devices, steps, repeats).items()}
  figures['gflop_per_example'] = flops / 1e9
  figures['achieved_gflops'] = flops * figures['train_step']['median'] / 1e9

  evaluator = scoring.Evaluator(config, eval_split, setup.model, devices)
  evaluator.predict(setup.state.variables())  # compiles
  eval_seconds = _timed_windows(
      lambda n: [evaluator.predict(setup.state.variables()) for _ in range(n)], 1,
      max(2, repeats // 2))
  figures['eval'] = _rate(eval_split.num_examples * replicas, eval_seconds)
  figures['epoch_s'] = train_split.num_examples * replicas / figures['end_to_end']['median']
  figures['peak_host_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  figures['peak_device_mib'] = _peak_device_mib(devices)
  return figures


def _peak_device_mib(devices: list[jax.Device]) -> float | None:
  """The devices' peak allocated memory (GPUs, TPUs); None where JAX keeps no count (CPUs)."""
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in devices]
  return sum(peaks) / 2**20 if all(p is not None for p in peaks) else None


def _pytorch_command(config: ml_collections.ConfigDict, steps: int, repeats: int,
                     references: str = 'benchmarks') -> list[str]:
  """The reference script (in the folder `references`) and its arguments for this config's
  network and batch."""
  common = [f'--batch={input_pipeline.global_batch(config)}', f'--steps={steps}',
            f'--repeats={repeats}']
  if config.model.name == 'airbench94':
    recipe = ('airbench94_muon' if any(g.get('optimizer') == 'muon'
                                       for g in dict(config.optimizer_groups).values())
              else 'airbench94')
    return [os.path.join(references, 'airbench_reference.py'), '--speed', f'--recipe={recipe}',
            *common]
  if config.model.name in RESNET_FAMILIES:
    model = {k: v for k, v in config.model.items() if k != 'dtype'}
    return [os.path.join(references, 'resnet_reference.py'), '--speed',
            f'--model={json.dumps(model)}', f'--image_size={config.crop_size or 32}', *common]
  return [os.path.join(references, 'pytorch_reference.py'), f'--crop={config.crop_size}',
          *common]


def run_pytorch_reference(config: ml_collections.ConfigDict, steps: int, repeats: int,
                          python: str = sys.executable, references: str = 'benchmarks'
                          ) -> dict[str, float] | None:
  """The PyTorch reference in its own process; None when torch or the script is missing."""
  command = _pytorch_command(config, steps, repeats, references)
  if not os.path.exists(command[0]):
    logging.warning('No %s here; skipping PyTorch (run from a cifar_jax checkout or pass '
                    '--pytorch_references=PATH/benchmarks).', command[0])
    return None
  result = subprocess.run([python, *command], capture_output=True, text=True, check=False)
  if result.returncode:
    logging.warning('PyTorch reference failed or torch is not installed:\n%s',
                    result.stderr[-2000:])
    return None
  print(result.stdout.strip())
  last = result.stdout.strip().splitlines()[-1]
  return {'train_step_img_per_s': float(dict(item.split('=') for item in last.split())[
      'train_step_img_per_s'])}


def format_figures(figures: dict[str, Any]) -> str:
  """The human-readable table."""
  def row(name, rate, unit='images/s'):
    return (f'{name:<22} {rate["median"]:9.1f} {unit}  (min {rate["min"]:.1f}, '
            f'max {rate["max"]:.1f})')
  replicas = figures['num_replicas']
  runs = (f', {replicas} runs at once ({figures["replica_execution"]}; images/s summed over them)'
          if replicas > 1 else '')
  lines = [
      f'{figures["devices"]} {figures["platform"]} device(s) ({figures["device_kind"]}), '
      f'global batch {figures["global_batch"]}{runs}, the split on the {figures["placement"]}',
      f'{"compile":<22} {figures["compile_s"]:9.1f} s',
      row('train step', figures['train_step']),
      row('end to end', figures['end_to_end']),
      row('host gather', figures['host_gather']) + (
          f'; {100 * figures["host_share"]:.1f}% of an end-to-end step'),
      row('eval', figures['eval']),
      f'{"one epoch (end to end)":<22} {figures["epoch_s"]:9.1f} s',
      f'{"one run (end to end)":<22} {figures["run_s"]:9.1f} s (config.num_train_steps; '
      'its share of the time)',
      f'{"train step FLOPs":<22} {figures["achieved_gflops"]:9.1f} GFLOP/s '
      f'({figures["gflop_per_example"] * 1e3:.1f} MFLOP per example; matmul '
      f'{figures["matmul_gflops"]:.1f} GFLOP/s)',
      f'{"peak host memory":<22} {figures["peak_host_mib"]:9.0f} MiB',
  ]
  if 'parts' in figures:  # --breakdown: per image of one run, each on one device
    step_ms = 1e3 / figures['train_step']['median'] * replicas * figures['devices']
    for name, label in (('forward', 'loss forward alone'), ('gradient', 'loss gradient alone')):
      part_ms = 1e3 / figures['parts'][name]['median']
      lines.append(row(label, figures['parts'][name]) + (
          f'; {100 * part_ms / step_ms:.0f}% of a train step'))
  if figures['peak_device_mib'] is not None:
    lines.append(f'{"peak device memory":<22} {figures["peak_device_mib"]:9.0f} MiB')
  return '\n'.join(lines)


def machine_line(figures: dict[str, Any], pytorch: dict[str, float] | None) -> str:
  items = {
      'train_step_img_per_s': figures['train_step']['median'],
      **{f'{name}_img_per_s': rate['median'] for name, rate in figures.get('parts', {}).items()},
      'end_to_end_img_per_s': figures['end_to_end']['median'],
      'host_gather_img_per_s': figures['host_gather']['median'],
      'eval_img_per_s': figures['eval']['median'],
      'compile_s': figures['compile_s'],
      'matmul_gflops': figures['matmul_gflops'],
      'achieved_gflops': figures['achieved_gflops'],
      'peak_host_mib': figures['peak_host_mib'],
      'num_replicas': figures['num_replicas'],
      'run_s': figures['run_s'],
  }
  if figures['peak_device_mib'] is not None:
    items['peak_device_mib'] = figures['peak_device_mib']
  if pytorch:
    items['pytorch_train_step_img_per_s'] = pytorch['train_step_img_per_s']
  return ' '.join(f'{k}={v:.1f}' for k, v in items.items())


def main(argv):
  del argv
  terminal.show_on_terminal(FLAGS.verbose)
  try:
    config = cli.with_overrides(FLAGS.config)
    figures = run(config, steps=FLAGS.steps, repeats=FLAGS.repeats,
                  warmup_steps=FLAGS.warmup_steps, synthetic=FLAGS.synthetic,
                  synthetic_train_size=FLAGS.synthetic_train_size,
                  synthetic_eval_size=FLAGS.synthetic_eval_size, matmul_size=FLAGS.matmul_size,
                  breakdown=FLAGS.breakdown)
  except UserError as e:
    cli.fail(str(e))
  print(format_figures(figures))
  pytorch = (run_pytorch_reference(config, FLAGS.steps, FLAGS.repeats, FLAGS.pytorch_python,
                                   FLAGS.pytorch_references)
             if FLAGS.pytorch else None)
  print(machine_line(figures, pytorch), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
