"""Exact precision@1 of a state on a whole split: EMA and raw parameters, test-time augmentation.

Unlike the tutorial's `cifar10_eval.py`, which counted
ceil(10000 / 128) * 128 = 10,112 images, `Evaluator` counts every image of
the split exactly once (the last batch is padded and the padding masked out),
with a batch size independent of training. It holds the split on the
device(s); the evaluator process (`evaluate`) and the trainer's in-process
evaluation use it alike, and `report` writes what it found.

A state of R replicas (`config.num_replicas`) is scored in one pass over the
split: each batch is gathered and preprocessed once and goes through every
replica's model (test-time augmentation included), batched or one after the
other as the trainer runs them (`config.replica_execution`). The result holds
every replica's score and their mean, standard deviation, min/max and the 95%
confidence interval of the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cifar_jax.core import fields as spec
from cifar_jax.core import metric_writers, parallel, summaries, sweeps
from cifar_jax.data import datasets, input_pipeline, splits
from cifar_jax.evaluation import calibration, run_statistics
from cifar_jax.evaluation import metrics as metrics_lib
from cifar_jax.training import placement, train_step
from cifar_jax.training.train_state import TrainState


def tta_logits(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, tta: str
               ) -> jax.Array:
  """Test-time augmentation of preprocessed NHWC images: airbench's tta_level 0 / 1 / 2.

  ``none``: logits(x). ``mirror``: the mean of x and its left-right mirror.
  ``mirror_translate``: 1/2 mirror(x) + 1/4 mirror(x shifted one pixel up-left)
  + 1/4 mirror(x shifted down-right), shifts with reflect padding; logits
  are averaged, as in the original.
  """
  if tta == 'none':
    return logits_fn(images)
  mirror = lambda x: 0.5 * logits_fn(x) + 0.5 * logits_fn(x[:, :, ::-1])  # noqa: E731
  if tta == 'mirror':
    return mirror(images)
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  shifted = [padded[:, :height, :width], padded[:, 2:height + 2, 2:width + 2]]
  return 0.5 * mirror(images) + 0.25 * (mirror(shifted[0]) + mirror(shifted[1]))


def eval_step(variables: dict[str, Any], batch: dict, *, apply_fn: Callable[..., jax.Array],
              tta: str = 'none', extra: tuple[tuple[str, metrics_lib.Metric], ...] = (),
              probabilities: bool = False) -> dict[str, jax.Array]:
  """Per-example predicted class, cross-entropy and `extra` metrics for one device's batch.

  The per-example metrics of `extra` are computed here; the of-the-split ones
  later on the host, from the softmax `probabilities` this step then returns.
  """
  logits = tta_logits(lambda x: apply_fn(variables, x, train=False), batch['image'], tta)
  outputs = {
      'prediction': jnp.argmax(logits, axis=-1).astype(jnp.int32),
      'loss': optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']),
  }
  for name, metric in extra:
    if not metrics_lib.is_of_split(metric):
      outputs[metrics_lib.result_name(name)] = metric(logits.astype(jnp.float32),
                                                      batch['label'])
  if probabilities:
    outputs['probabilities'] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return outputs


def _device_eval_step(variables, data, indices, *, apply_fn, tta, preprocessing,
                      replica_execution=None, unroll=False, gathered=False, extra=(),
                      probabilities=False):
  """One batch, preprocessed once, through the model of every replica (`replica_execution`).

  `data` is the split on this device, or (`gathered`: host placement) the
  batch's rows themselves.
  """
  batch = (input_pipeline.eval_batch(data, indices, preprocessing) if not gathered else
           {'image': jax.vmap(preprocessing)(data.images), 'label': data.labels})
  step = functools.partial(eval_step, apply_fn=apply_fn, tta=tta, extra=extra,
                           probabilities=probabilities)
  if replica_execution is None:
    return step(variables, batch)
  return train_step.map_replicas(step, replica_execution, unroll)((variables,), batch)


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


@dataclasses.dataclass(frozen=True)
class Score:
  """One set of parameters on the split."""

  precision: float  # top-1
  loss: float  # mean cross-entropy
  count: int  # examples scored: the whole split
  confusion: np.ndarray  # [true class, predicted class]
  predictions: np.ndarray  # per example, in split order
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # config.eval.metrics'
  # Softmax probabilities [N, classes] in split order, where a metric of the split, a
  # reliability diagram or an out-of-distribution set needs them (else None).
  probabilities: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Result:
  """A state's scores: EMA and raw parameters (the same scores when there is no EMA).

  `ema` and `raw` hold one `Score` per replica (one for a single run); the
  figures of a result are the replicas' means.
  """

  tta: str
  ema: tuple[Score, ...]
  raw: tuple[Score, ...]
  headline: str = 'ema'  # which of the two the log line leads with
  has_ema: bool = True
  # A sweep's points ({field: value}, `sweeps.points`); run k is point k // (runs / points).
  points: tuple[dict[str, Any], ...] = ()

  @property
  def num_replicas(self) -> int:
    return len(self.ema)

  @property
  def precision(self) -> float:
    return float(np.mean([s.precision for s in self.ema]))

  @property
  def precision_raw(self) -> float:
    return float(np.mean([s.precision for s in self.raw]))

  @property
  def count(self) -> int:
    return self.ema[0].count

  @property
  def lead(self) -> Score:
    """The headline parameters' score of the (first) run: per-class figures, images."""
    return (self.ema if self.headline == 'ema' else self.raw)[0]

  def summary(self, which: str = 'ema') -> run_statistics.Summary:
    """The replicas' precisions: n, mean, std, min, max, 95% CI of the mean."""
    return run_statistics.Summary.of([s.precision for s in getattr(self, which)])

  @property
  def _lead_kind(self) -> str:
    return 'ema' if self.headline == 'ema' and self.has_ema else 'raw'

  def point_summaries(self, which: str | None = None) -> list[run_statistics.Summary]:
    """Each sweep point's precisions over its seeds (the headline parameters by default)."""
    scores = getattr(self, which or self._lead_kind)
    return [run_statistics.Summary.of([s.precision for s in seeds])
            for seeds in sweeps.by_point(scores, len(self.points))]

  def scalars(self) -> dict[str, float]:
    """What metrics.jsonl and TensorBoard get: precision (EMA), precision_raw, losses, count.

    With replicas, also every replica's precisions (`precision/replica_3`, one
    TensorBoard curve each) and the spread of the headline's.
    """
    scalars = {'precision': self.precision, 'precision_raw': self.precision_raw,
               'loss': float(np.mean([s.loss for s in self.ema])),
               'loss_raw': float(np.mean([s.loss for s in self.raw])), 'count': self.count}
    for name in self.ema[0].metrics:  # config.eval.metrics: as precision, by replica too
      for key, scores in ((name, self.ema), (f'{name}_raw', self.raw)):
        values = [s.metrics[name] for s in scores]
        scalars[key] = float(np.mean(values))
        if self.num_replicas > 1:
          scalars.update({sweeps.replica_key(key, r): v for r, v in enumerate(values)})
          scalars[f'{key}_ci95'] = run_statistics.Summary.of(values).ci95
    if self.num_replicas == 1:
      return scalars
    for name, scores in (('precision', self.ema), ('precision_raw', self.raw)):
      scalars.update({sweeps.replica_key(name, r): s.precision for r, s in enumerate(scores)})
    summary = self.summary(self._lead_kind)
    scalars.update({'num_replicas': summary.n, 'precision_std': summary.std,
                    'precision_min': summary.min, 'precision_max': summary.max,
                    'precision_ci95': summary.ci95})
    # A sweep: each point's mean and CI over its seeds (the headline parameters), one
    # TensorBoard curve per point.
    for p, point in enumerate(self.point_summaries() if self.points else ()):
      scalars.update({f'point_precision/point_{p}': point.mean,
                      f'point_precision_ci95/point_{p}': point.ci95})
    return scalars

  def line(self, step: int) -> str:
    """'step 2000, precision @ 1 = 0.860 (raw parameters: 0.842)', with the TTA if any.

    With replicas: 'step 426, precision @ 1 = 0.9402 ± 0.0011 (n=8, 95% CI)'.
    """
    suffix = f'; TTA {self.tta}' if self.tta != 'none' else ''
    lead, other = ('raw', 'ema') if self.headline == 'raw' or not self.has_ema else ('ema', 'raw')
    if self.points:
      return self._sweep_lines(step, lead, suffix)
    return self._precision_line(step, lead, other, suffix) + self._calibration_text(lead)

  def _calibration_text(self, lead: str) -> str:
    """'; NLL 0.452, ECE 0.031' of the headline parameters, where config.eval.metrics has them."""
    scores = getattr(self, lead)
    shown = [f'{label} {np.mean([s.metrics[name] for s in scores]):.3f}'
             for label, name in (('NLL', 'nll'), ('ECE', 'ece')) if name in scores[0].metrics]
    return f'; {", ".join(shown)}' if shown else ''

  def _precision_line(self, step: int, lead: str, other: str, suffix: str) -> str:
    if self.num_replicas > 1:
      summary, second = self.summary(lead), self.summary(other)
      extra = ('no EMA' if not self.has_ema else
               f'{"EMA" if other == "ema" else "raw"} parameters: {second.mean:.4f} ± '
               f'{second.ci95:.4f}')
      return (f'step {step}, precision @ 1 = {summary.mean:.4f} ± {summary.ci95:.4f} '
              f'(n={summary.n}, 95% CI; {extra}{suffix})')
    if not self.has_ema:
      return f'step {step}, precision @ 1 = {self.precision_raw:.4f} (no EMA{suffix})'
    if self.headline == 'raw':
      return (f'step {step}, precision @ 1 = {self.precision_raw:.3f} '
              f'(EMA parameters: {self.precision:.3f}{suffix})')
    return (f'step {step}, precision @ 1 = {self.precision:.3f} '
            f'(raw parameters: {self.precision_raw:.3f}{suffix})')

  def _sweep_lines(self, step: int, lead: str, suffix: str) -> str:
    """A line per sweep point: its values and mean ± 95% CI over its seeds; * marks the best."""
    summaries_ = self.point_summaries(lead)
    best = int(np.argmax([s.mean for s in summaries_]))
    which = 'EMA' if lead == 'ema' else ('raw' if self.has_ema else 'no EMA')
    lines = [f'step {step}, precision @ 1 of {len(self.points)} sweep points '
             f'({which} parameters{suffix}):']
    for p, (point, summary) in enumerate(zip(self.points, summaries_, strict=True)):
      mark = '*' if p == best else ' '
      lines.append(f'  {mark} point {p} ({sweeps.describe(point)}): {summary.text()}')
    return '\n'.join(lines)


def check_eval_split(config: ml_collections.ConfigDict, split: datasets.Split,
                     trained: dict[str, Any] | None = None, classes: bool = True) -> None:
  """Refuses an eval split the model cannot score meaningfully, in one sentence.

  Images smaller than the central crop, or (given `trained`, a checkpoint's
  dataset info) with other classes (`classes`: an out-of-distribution set has
  others by design) or another channel count than the training split's;
  another image size only warns.
  """
  what = datasets.split_label(config.dataset, config.dataset.eval_split, evaluation=True)
  input_pipeline.EvalPreprocessing.from_config(config).check(
      split.image_shape, f'The images of {what}', (trained or {}).get('image_shape'))
  if trained is not None and classes:
    splits.check_same_classes(trained, split, what[0].upper() + what[1:])


class Evaluator:
  """Scores parameters on one split held on the devices.

  `trained` (the training split's `info()`, where known): the split is
  checked against it (`check_eval_split`; not its classes for an
  out-of-distribution set, `classes=False`: its classes are not the model's). Scores keep
  the softmax probabilities when a metric of the split needs them, or when
  asked (`probabilities`).
  """

  def __init__(self, config: ml_collections.ConfigDict, split: datasets.Split, model: Any,
               devices: Sequence[jax.Device], trained: dict[str, Any] | None = None, *,
               probabilities: bool = False, classes: bool = True):
    check_eval_split(config, split, trained, classes)
    self.split = split
    self.calibration_bins = config.eval.calibration_bins
    self.devices = list(devices)
    self.headline = config.eval.headline
    self.tta = config.eval.tta
    self.num_replicas = sweeps.num_runs(config)
    self.points = tuple(sweeps.points(config)) if sweeps.is_sweep(config) else ()
    # Without an EMA the EMA parameters are the parameters: scored once.
    self.has_ema = config.ema.kind != 'none'
    self.extra = metrics_lib.named(config.eval.get('metrics', ()), config.eval)
    self.with_probabilities = probabilities or any(
        metrics_lib.is_of_split(metric) for _, metric in self.extra)
    # As the training split: on every device, or (host) each batch's rows copied in turn.
    self._on_host = placement.choose(config.dataset.placement, split, devices) == 'host'
    self._data = None if self._on_host else input_pipeline.put_on_devices(split, devices)
    self._indices, self._masks = padded_batches(split.num_examples, config.eval.batch_size,
                                                len(devices))
    self._step = parallel.pmap(
        functools.partial(_device_eval_step, apply_fn=model.apply, tta=self.tta,
                          preprocessing=input_pipeline.EvalPreprocessing.from_config(config),
                          replica_execution=(config.replica_execution if self.num_replicas > 1
                                             else None),
                          unroll=self.devices[0].platform == 'cpu', gathered=self._on_host,
                          extra=self.extra, probabilities=self.with_probabilities),
        self.devices, out_of_memory=(
            f'{self.num_replicas} runs x config.eval.batch_size='
            f'{config.eval.batch_size} do not fit the memory of a device; lower '
            'config.eval.batch_size'))

  def predict(self, variables: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and loss of every example, in split order: [N], or [R, N] for replicas."""
    outputs = self.outputs(variables)
    predictions, losses = outputs['prediction'], outputs['loss']
    return (predictions[0], losses[0]) if self.num_replicas == 1 else (predictions, losses)

  def outputs(self, variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every output of the evaluation step, [replicas, examples, ...] in split order."""
    replicated = parallel.replicate(variables, self.devices)
    outputs = jax.device_get([self._step(replicated, self._batch_data(indices), indices)
                              for indices in self._indices])
    mask = self._masks.reshape(-1)
    per_device = self._indices.shape[-1]

    def gathered(name):  # [devices, (replicas,) per device, ...] per batch -> [R, N, ...]
      tail = outputs[0][name].shape[-1:] if name == 'probabilities' else ()  # the model's
      shape = (len(self.devices), self.num_replicas, per_device, *tail)
      return np.concatenate([np.moveaxis(np.reshape(o[name], shape), 1, 0)
                             .reshape(self.num_replicas, -1, *tail) for o in outputs],
                            axis=1)[:, mask]

    return {name: gathered(name) for name in outputs[0]}

  def _batch_data(self, indices: np.ndarray) -> input_pipeline.DeviceData:
    if not self._on_host:
      return self._data
    return parallel.shard(input_pipeline.DeviceData(images=self.split.images[indices],
                                                    labels=self.split.labels[indices]),
                          self.devices)

  def scores(self, variables: dict[str, Any]) -> tuple[Score, ...]:
    """Every replica's precision, mean loss, count, confusion matrix, predictions and metrics."""
    return self.scores_of(self.outputs(variables))

  def scores_of(self, outputs: dict[str, np.ndarray], rows: slice | np.ndarray = slice(None)
                ) -> tuple[Score, ...]:
    """Every replica's `Score` from `outputs` (`outputs()`), on the examples `rows` only."""
    names = [metrics_lib.result_name(name) for name, metric in self.extra
             if not metrics_lib.is_of_split(metric)]
    labels = self.split.labels[rows]
    scores = []
    for r in range(self.num_replicas):
      predictions = outputs['prediction'][r][rows]
      probabilities = (outputs['probabilities'][r][rows] if 'probabilities' in outputs
                       else None)
      confusion = np.zeros((self.split.num_classes,) * 2, np.int64)
      np.add.at(confusion, (labels, predictions), 1)
      metrics = {name: float(np.mean(outputs[name][r][rows])) for name in names}
      if probabilities is not None:
        metrics.update(metrics_lib.of_split_scores(probabilities, labels, self.extra))
      metrics = {metrics_lib.result_name(name): metrics[metrics_lib.result_name(name)]
                 for name, _ in self.extra}  # in config.eval.metrics' order
      scores.append(Score(precision=float(np.mean(predictions == labels)),
                          loss=float(np.mean(outputs['loss'][r][rows])), count=int(len(labels)),
                          confusion=confusion, predictions=predictions, metrics=metrics,
                          probabilities=probabilities))
    return tuple(scores)

  def score(self, variables: dict[str, Any]) -> Score:
    """A single run's precision, mean loss, count, confusion matrix and predictions."""
    (score,) = self.scores(variables)
    return score

  def score_state(self, state: TrainState) -> Result:
    """EMA and raw parameters side by side, both with the state's BatchNorm statistics."""
    raw = self.scores(state.variables())
    ema = self.scores(state.variables(state.ema_params)) if self.has_ema else raw
    return Result(tta=self.tta, ema=ema, raw=raw, headline=self.headline, has_ema=self.has_ema,
                  points=self.points)


def report(writer: metric_writers.MultiWriter, step: int, result: Result, split: datasets.Split,
           num_misclassified_images: int, extra: dict[str, float] | None = None,
           calibration_bins: int = 15) -> None:
  """The log line, metrics.jsonl record, and TensorBoard scalars and images of one result.

  `extra`: more scalars for the same record (the evaluation time, the other
  evaluation sets'). Where the scores kept their probabilities, a reliability
  diagram of the headline parameters joins the images.
  """
  summaries.print_line(result.line(step))
  lead = result.lead
  confusion = lead.confusion
  per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
  writer.write_scalars(step, {
      **result.scalars(), **(extra or {}),
      **{f'per_class_precision/{name}': p
         for name, p in zip(split.class_names, per_class, strict=True)},
  }, record={'status': 'scored', 'tta': result.tta, 'wall_time': time.time(),
             # A sweep's points, for `compare` to group the runs by (run k is point k // R).
             **({'sweep_points': list(result.points)} if result.points else {})})
  wrong = np.flatnonzero(lead.predictions != split.labels)[:num_misclassified_images]
  names = split.class_names
  writer.write_images(step, {
      'confusion_matrix': summaries.confusion_matrix_image(confusion, names)[None],
      'misclassified': summaries.captioned_grid(
          split.images[wrong],
          [f'{names[lead.predictions[i]]}/{names[split.labels[i]]}' for i in wrong])[None],
      **({'reliability_diagram': calibration.reliability_diagram(calibration.bin_confidences(
          lead.probabilities, split.labels, calibration_bins))[None]}
         if lead.probabilities is not None else {}),
  })
  writer.flush()


# ----------------------------------------------------------------------------
# The config fields of the evaluator.

TTA = ('none', 'mirror', 'mirror_translate')
HEADLINES = ('ema', 'raw')
FIELDS = {
    'eval.batch_size': spec.Field(1000, spec.integer(1), 'images per evaluation batch'),
    'eval.headline': spec.Field('raw', spec.choice(HEADLINES), 'what leads the log line'),
    'eval.tta': spec.Field('none', spec.choice(TTA), 'test-time augmentation'),
    'eval.platform': spec.Field('', spec.text(), "the evaluator's devices ('': the default)"),
    'eval.poll_secs': spec.Field(10.0, spec.number(above=0.0), 'how often it looks'),
    'eval.timeout_secs': spec.Field(3600.0, spec.number(0.0), 'how long it waits for the next'),
    'eval.run_once': spec.Field(False, spec.flag(), 'score the latest checkpoint and stop'),
    'eval.num_misclassified_images': spec.Field(24, spec.integer(0), 'in the summaries'),
}


spec.declare(__name__, FIELDS)
