"""The evaluator: exact precision@1 of every checkpoint, EMA and raw side by side.

Unlike the tutorial's `cifar10_eval.py`, which counted
ceil(10000 / 128) * 128 = 10,112 images and re-scored the same checkpoint
forever, this evaluator

* counts every image of the split exactly once (the last batch is padded and
  the padding masked out), with a batch size independent of training;
* scores each finalised checkpoint at most once, also across restarts: what it
  has handled is recorded in WORKDIR/eval/metrics.jsonl;
* reports and skips checkpoints that are unreadable or that the trainer
  deleted (max-to-keep) before they could be scored;
* stops by itself after the trainer's final checkpoint (WORKDIR/train_complete)
  or after `config.eval.timeout_secs` without a new checkpoint.

`Evaluator` holds the split on the device(s) and scores parameters; the
trainer uses the same class for `--mode=train_and_eval`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax import checkpoints, datasets, input_pipeline, parallel, summaries, train_state
from cifar_jax.errors import UserError

TTA = ('none', 'mirror', 'mirror_translate')


def tta_logits(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, tta: str
               ) -> jax.Array:
  """Test-time augmentation of preprocessed NHWC images: airbench's tta_level 0 / 1 / 2.

  ``none``: logits(x). ``mirror``: the mean of x and its left-right mirror.
  ``mirror_translate``: 1/2 mirror(x) + 1/4 mirror(x shifted one pixel up-left)
  + 1/4 mirror(x shifted down-right), shifts with reflect padding; logits
  are averaged, as in the original.
  """
  if tta not in TTA:
    raise UserError(f'Unknown config.eval.tta {tta!r}; use one of {list(TTA)}.')
  if tta == 'none':
    return logits_fn(images)
  mirror = lambda x: 0.5 * logits_fn(x) + 0.5 * logits_fn(x[:, :, ::-1])  # noqa: E731
  if tta == 'mirror':
    return mirror(images)
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  shifted = [padded[:, :height, :width], padded[:, 2:height + 2, 2:width + 2]]
  return 0.5 * mirror(images) + 0.25 * (mirror(shifted[0]) + mirror(shifted[1]))


def eval_step(params: Any, batch_stats: Any, batch: dict, *,
              apply_fn: Callable[..., jax.Array], tta: str = 'none') -> dict[str, jax.Array]:
  """Per-example predicted class and cross-entropy for one device's batch."""
  logits = tta_logits(
      lambda x: apply_fn({'params': params, 'batch_stats': batch_stats}, x, train=False),
      batch['image'], tta)
  return {
      'prediction': jnp.argmax(logits, axis=-1).astype(jnp.int32),
      'loss': optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']),
  }


def _device_eval_step(params, batch_stats, data, indices, *, apply_fn, tta, eval_options):
  batch = input_pipeline.eval_batch(data, indices, **eval_options)
  return eval_step(params, batch_stats, batch, apply_fn=apply_fn, tta=tta)


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
    self.headline = config.eval.headline
    if self.headline not in ('ema', 'raw'):
      raise UserError(f'config.eval.headline is {self.headline!r}; use ema or raw.')
    self.tta = config.eval.tta
    if self.tta not in TTA:
      raise UserError(f'Unknown config.eval.tta {self.tta!r}; use one of {list(TTA)}.')
    # Without an EMA the EMA parameters are the parameters: scored once.
    self.has_ema = config.ema.kind != 'none'
    self._data = input_pipeline.put_on_devices(split, devices)
    self._indices, self._masks = padded_batches(split.num_examples, config.eval.batch_size,
                                                len(devices))
    self._step = parallel.pmap(
        functools.partial(_device_eval_step, apply_fn=model.apply, tta=self.tta,
                          eval_options=input_pipeline.eval_options(config)),
        self.devices)

  def predict(self, params: Any, batch_stats: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and loss of every example, in split order."""
    replicated = parallel.replicate((params, batch_stats or {}), self.devices)
    outputs = [self._step(*replicated, self._data, indices) for indices in self._indices]
    outputs = jax.device_get(outputs)
    mask = self._masks.reshape(-1)
    predictions = np.concatenate([o['prediction'].reshape(-1) for o in outputs])[mask]
    losses = np.concatenate([o['loss'].reshape(-1) for o in outputs])[mask]
    return predictions, losses

  def score(self, params: Any, batch_stats: Any = None) -> dict[str, Any]:
    """precision (top-1), mean loss, count, confusion matrix and predictions."""
    predictions, losses = self.predict(params, batch_stats)
    labels = self.split.labels
    confusion = np.zeros((self.split.num_classes,) * 2, np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return {
        'precision': float(np.mean(predictions == labels)),
        'loss': float(np.mean(losses)),
        'count': int(len(labels)),
        'confusion': confusion,
        'predictions': predictions,
    }

  def score_state(self, state: train_state.TrainState) -> dict[str, Any]:
    """EMA and raw parameters side by side; details (confusion...) of the headline.

    Both use the state's BatchNorm statistics. Without an EMA
    (config.ema.kind 'none') the parameters are scored once and both columns
    hold that result.
    """
    raw = self.score(state.params, state.batch_stats)
    ema = self.score(state.ema_params, state.batch_stats) if self.has_ema else raw
    headline = ema if self.headline == 'ema' else raw
    return {
        'tta': self.tta,
        'precision': ema['precision'],
        'precision_raw': raw['precision'],
        'loss': ema['loss'],
        'loss_raw': raw['loss'],
        'count': ema['count'],
        'confusion': headline['confusion'],
        'predictions': headline['predictions'],
    }


def format_result(step: int, result: dict[str, Any], headline: str = 'ema',
                  has_ema: bool = True) -> str:
  """'step 2000, precision @ 1 = 0.860 (raw parameters: 0.842)', with the TTA if any."""
  tta = result.get('tta', 'none')
  suffix = f'; TTA {tta}' if tta != 'none' else ''
  if not has_ema:
    return (f'step {step}, precision @ 1 = {result["precision_raw"]:.4f} '
            f'(no EMA{suffix})')
  if headline == 'raw':
    return (f'step {step}, precision @ 1 = {result["precision_raw"]:.3f} '
            f'(EMA parameters: {result["precision"]:.3f}{suffix})')
  return (f'step {step}, precision @ 1 = {result["precision"]:.3f} '
          f'(raw parameters: {result["precision_raw"]:.3f}{suffix})')


def report(writer: summaries.Writer, step: int, result: dict[str, Any], split: datasets.Split,
           config: ml_collections.ConfigDict, extra: dict[str, float] | None = None) -> None:
  """The log line, metrics.jsonl record, and TensorBoard scalars and images of one result."""
  summaries.print_line(format_result(step, result, config.eval.headline,
                                    config.ema.kind != 'none'))
  confusion = result['confusion']
  per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
  scalars = {k: result[k] for k in ('precision', 'precision_raw', 'loss', 'loss_raw', 'count')}
  scalars.update(extra or {})
  writer.write_scalars(step, {
      **scalars,
      **{f'per_class_precision/{name}': p
         for name, p in zip(split.class_names, per_class, strict=True)},
  }, record={'status': 'scored', 'tta': result.get('tta', 'none'), 'wall_time': time.time()})
  wrong = np.flatnonzero(result['predictions'] != split.labels)
  wrong = wrong[:config.eval.num_misclassified_images]
  names = split.class_names
  writer.write_images(step, {
      'confusion_matrix': summaries.confusion_matrix_image(confusion, names)[None],
      'misclassified': summaries.captioned_grid(
          split.images[wrong],
          [f'{names[result["predictions"][i]]}/{names[split.labels[i]]}' for i in wrong])[None],
  })
  writer.flush()


# ----------------------------------------------------------------------------
# The evaluator process.


def handled_steps(eval_dir: str, tta: str = 'none') -> dict[int, str]:
  """{step: status} of every checkpoint an evaluator already handled with this `tta`.

  A step scored with another test-time augmentation is not handled for this
  one (re-scoring a run with `--config.eval.tta=...` adds records); skipped
  steps (deleted, unreadable) are handled whatever the TTA.
  """
  return {int(record['step']): record['status']
          for record in summaries.read_records(os.path.join(eval_dir, summaries.METRICS_FILE))
          if 'status' in record and (record['status'] != 'scored'
                                     or record.get('tta', 'none') == tta)}


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[int, dict[str, Any]]:
  """Scores the checkpoints of WORKDIR as they appear; returns {step: result} of this run.

  Runs beside a trainer (`--mode=eval`): waits for finalised checkpoints and
  scores each once, until the trainer's final step has been handled or no new
  checkpoint came for `config.eval.timeout_secs`. With `config.eval.run_once`,
  handles the latest checkpoint and returns.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise UserError(f'Workdir {workdir} does not exist; start the trainer first or fix --workdir.')
  parallel.use_compilation_cache(config.compilation_cache_dir, workdir)
  eval_dir = os.path.join(workdir, 'eval')
  split = datasets.load_split(config.dataset, config.dataset.eval_split)
  template, model = train_state.abstract_train_state(config, split.num_classes)
  devices = parallel.select_devices(config.num_devices, config.eval.platform or None)
  logging.info('Evaluating on %d %s device(s): %d images of %r.', len(devices),
               devices[0].platform, split.num_examples, config.dataset.eval_split)
  evaluator = Evaluator(config, split, model, devices)
  writer = summaries.create_writer(eval_dir, enabled=jax.process_index() == 0)
  handled = handled_steps(eval_dir, config.eval.tta)
  results: dict[int, dict[str, Any]] = {}
  manager = None
  last_new_checkpoint = time.time()
  try:
    while True:
      if manager is None and os.path.isdir(checkpoints.checkpoint_dir(workdir)):
        manager = checkpoints.create_manager(workdir, read_only=True)
      if manager is not None:
        reload_steps(manager)
        steps = sorted(manager.all_steps())
        pending = [s for s in steps if s not in handled]
        # Only when something new appeared: it reads the latest checkpoint's config.
        if pending and not config.eval.run_once:
          for step in _never_seen_steps(manager, steps, handled):
            _skip(writer, step, 'deleted', 'the trainer deleted it before the evaluator saw it; '
                  'raise the trainer\'s config.keep_checkpoints to score every checkpoint')
            handled[step] = 'deleted'
        if config.eval.run_once:
          pending = pending[-1:] if steps and steps[-1] not in handled else []
        if pending:
          last_new_checkpoint = time.time()
        for step in pending:
          status = _score_checkpoint(manager, step, template, config, evaluator, writer, results)
          handled[step] = status
      if config.eval.run_once:
        if manager is None or not manager.all_steps():
          raise UserError(f'{checkpoints.checkpoint_dir(workdir)} holds no finished checkpoint.')
        latest = max(manager.all_steps())
        if latest not in results:
          logging.info('Step %d was already handled (%s); see %s.', latest, handled[latest],
                       os.path.join(eval_dir, summaries.METRICS_FILE))
        return results
      final = checkpoints.final_step(workdir)
      if final is not None and final in handled:
        logging.info('Handled the final checkpoint (step %d); the evaluator stops.', final)
        return results
      if time.time() - last_new_checkpoint > config.eval.timeout_secs:
        summaries.print_line(
            f'no new checkpoint for {config.eval.timeout_secs} s; the evaluator stops')
        return results
      time.sleep(config.eval.poll_secs)
  finally:
    writer.close()
    if manager is not None:
      manager.close()


def reload_steps(manager, attempts: int = 5) -> None:
  """`manager.reload()`, again if the trainer deleted a step while it was being listed.

  Orbax lists the step folders, then reads each one's time; a step that
  `keep_checkpoints` removes in between is a FileNotFoundError, not a fault.
  """
  for attempt in range(attempts):
    try:
      manager.reload()
      return
    except FileNotFoundError:
      if attempt == attempts - 1:
        raise
      time.sleep(0.1)


def _never_seen_steps(manager, steps: list[int], handled: dict[int, str]) -> list[int]:
  """Steps the trainer saved and deleted (keep_checkpoints) before this evaluator saw them."""
  try:
    earlier = checkpoints.read_earlier_steps(manager, steps[-1])
  except Exception:  # pylint: disable=broad-except
    return []  # the latest checkpoint is unreadable; it is reported when scored
  present = set(steps)
  return [s for s in earlier if s not in handled and s not in present]


def _skip(writer, step: int, status: str, reason: str) -> None:
  logging.warning('Skipping checkpoint step %d: %s', step, reason)
  summaries.print_line(f'step {step}, skipped: {reason}')
  writer.write_record({'step': int(step), 'status': status, 'reason': reason,
                       'wall_time': time.time()})
  writer.flush()


def _score_checkpoint(manager, step, template, config, evaluator, writer, results) -> str:
  """Restores and scores one step; returns the status it recorded."""
  try:
    state, dataset_info = checkpoints.restore(manager, step, template, config)
  except UserError as e:
    reload_steps(manager)
    if step not in manager.all_steps():
      status, reason = 'deleted', (
          'the trainer deleted it before it could be scored; raise the trainer\'s '
          'config.keep_checkpoints to score every checkpoint')
    else:
      status, reason = 'unreadable', str(e)
    _skip(writer, step, status, reason)
    return status
  if tuple(dataset_info['class_names']) != evaluator.split.class_names:
    raise UserError(
        f'The checkpoint was trained on classes {dataset_info["class_names"]} but split '
        f'{config.dataset.eval_split!r} has {list(evaluator.split.class_names)}; evaluate on '
        'data with the same classes.')
  started = time.time()
  result = evaluator.score_state(state)
  report(writer, step, result, evaluator.split, config,
         {'eval_seconds': time.time() - started})
  results[step] = result
  return 'scored'
