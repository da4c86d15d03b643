"""Exact precision@1 on a whole split, with the EMA and the raw parameters.

Unlike the tutorial's `cifar10_eval.py`, which counted
ceil(10000 / 128) * 128 = 10,112 images, every image of the split is counted
exactly once: the last batch is padded and the padding masked out. The
evaluation batch size is independent of training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax import checkpoints, datasets, input_pipeline, parallel, summaries, train_state
from cifar_jax.errors import UserError


def eval_step(params: Any, batch: dict, mask: jax.Array, *, apply_fn: Callable[..., jax.Array]
              ) -> dict[str, jax.Array]:
  """Sums over the unmasked examples of one batch, summed over all devices."""
  logits = apply_fn({'params': params}, batch['image'])
  labels = batch['label']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels) & mask
  sums = {
      'correct': jnp.sum(correct.astype(jnp.int32)),
      'count': jnp.sum(mask.astype(jnp.int32)),
      'loss_sum': jnp.sum(jnp.where(mask, loss, 0.0)),
  }
  return jax.lax.psum(sums, parallel.AXIS_NAME)


def _device_eval_step(params, data, indices, mask, *, apply_fn, crop_size):
  batch = input_pipeline.eval_batch(data, indices, crop_size=crop_size)
  return eval_step(params, batch, mask, apply_fn=apply_fn)


def padded_batches(num_examples: int, batch_size: int, num_devices: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Indices and masks [num_batches, num_devices, per_device] covering every example once.

  `batch_size` is the global evaluation batch; it is rounded up to a multiple
  of `num_devices`. Padding positions point at example 0 and are masked out.
  """
  per_device = math.ceil(batch_size / num_devices)
  global_batch = per_device * num_devices
  num_batches = math.ceil(num_examples / global_batch)
  positions = np.arange(num_batches * global_batch)
  mask = positions < num_examples
  indices = np.where(mask, positions, 0).astype(np.int32)
  shape = (num_batches, num_devices, per_device)
  return indices.reshape(shape), mask.reshape(shape)


class Evaluator:
  """Scores parameters on one split held on the devices."""

  def __init__(self, config: ml_collections.ConfigDict, split: datasets.Split, model: Any,
               devices: Sequence[jax.Device]):
    self.split = split
    self.devices = list(devices)
    self._data = input_pipeline.put_on_devices(split, devices)
    self._indices, self._masks = padded_batches(split.num_examples, config.eval.batch_size,
                                                len(devices))
    self._step = parallel.pmap(
        functools.partial(_device_eval_step, apply_fn=model.apply, crop_size=config.crop_size),
        self.devices)

  def score(self, params: Any) -> dict[str, float]:
    """precision (top-1), mean loss and count over the whole split."""
    replicated = parallel.replicate(params, self.devices)
    totals = None
    for indices, mask in zip(self._indices, self._masks, strict=True):
      sums = self._step(replicated, self._data, indices, mask)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = parallel.unreplicate(totals)
    count = int(totals['count'])
    return {
        'precision': int(totals['correct']) / count,
        'loss': float(totals['loss_sum']) / count,
        'count': count,
    }

  def score_state(self, state: train_state.TrainState) -> dict[str, float]:
    """EMA and raw parameters side by side."""
    ema = self.score(state.ema_params)
    raw = self.score(state.params)
    return {
        'precision': ema['precision'],
        'precision_raw': raw['precision'],
        'loss': ema['loss'],
        'loss_raw': raw['loss'],
        'count': ema['count'],
    }


def format_result(step: int, result: dict[str, float], headline: str = 'ema') -> str:
  """'step 2000, precision @ 1 = 0.860 (raw parameters: 0.842)'."""
  if headline == 'raw':
    return (f'step {step}, precision @ 1 = {result["precision_raw"]:.3f} '
            f'(EMA parameters: {result["precision"]:.3f})')
  return (f'step {step}, precision @ 1 = {result["precision"]:.3f} '
          f'(raw parameters: {result["precision_raw"]:.3f})')


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Scores the latest checkpoint in WORKDIR on `config.dataset.eval_split` once.

  Writes the result to WORKDIR/eval/metrics.jsonl (and TensorBoard when
  available) and returns it.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    raise UserError(f'{workdir} has no checkpoints folder; train first or fix --workdir.')
  manager = checkpoints.create_manager(workdir, read_only=True)
  step = manager.latest_step()
  if step is None:
    raise UserError(f'{checkpoints.checkpoint_dir(workdir)} holds no finished checkpoint yet.')
  split = datasets.load_split(config.dataset, config.dataset.eval_split)
  template, model = train_state.abstract_train_state(config, split.num_classes)
  state, dataset_info = checkpoints.restore(manager, step, template, config)
  if tuple(dataset_info['class_names']) != split.class_names:
    raise UserError(
        f'The checkpoint was trained on classes {dataset_info["class_names"]} but split '
        f'{config.dataset.eval_split!r} has {list(split.class_names)}; evaluate on the same data.'
    )
  devices = parallel.select_devices(config.num_devices)
  started = time.time()
  result = Evaluator(config, split, model, devices).score_state(state)
  result['eval_seconds'] = time.time() - started
  summaries.print_line(format_result(step, result))
  writer = summaries.create_writer(os.path.join(workdir, 'eval'), jax.process_index() == 0)
  writer.write_scalars(step, result)
  writer.close()
  return result
