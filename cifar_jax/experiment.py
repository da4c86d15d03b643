"""Notebook API: the functions the command line is built on, one call each.

  from cifar_jax import experiment
  config = experiment.load_config('experiments/smoke.py', {'num_train_steps': 200})
  model, state = experiment.create_train_state(config, experiment.load_data(config))
  logits = model.apply(state.variables(), images)
  state = experiment.train(config, '/tmp/run', on_log=lambda step, m: print(step, m['loss']))
  run = experiment.load_checkpoint('/tmp/run')               # latest step, saved config
  start = experiment.load_pretrained(config)                 # what config.init_from loads
  probabilities = experiment.predict(run, images_uint8)      # EMA parameters by default
  experiment.read_evaluations('/tmp/run')                    # the evaluator's record, a table

Training goes through `train.train_and_evaluate` (the same loop, checkpoints
and logs as `python -m cifar_jax.main`), so a notebook run can be resumed,
evaluated by `--mode=eval` and viewed in TensorBoard like any other.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import importlib.util
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from cifar_jax import compare as compare_lib
from cifar_jax import models
from cifar_jax.config import overrides as overrides_lib
from cifar_jax.config import validation
from cifar_jax.core import layout, summaries, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import augmentations, datasets, input_pipeline
from cifar_jax.evaluation import scoring
from cifar_jax.run import train as train_lib
from cifar_jax.training import builder, train_state
from cifar_jax.workdir import checkpoints, pretrained


def load_config(path: str, overrides: dict[str, Any] | None = None
                ) -> ml_collections.ConfigDict:
  """`get_config()` of an experiments/*.py file, with dotted-name overrides.

  load_config('experiments/smoke.py', {'model.conv_features': 8}). The overrides are the
  command line's (`config.overrides`): an extension they name brings its fields, so
  {'augment.extra': ('fork:Cutout',), 'augment.cutout_size': 12} works in any order; new keys
  are made only for a sweep ({'sweep.learning_rate': (0.05, 0.1, 0.2)}), an evaluation set, an
  optimizer group and a field of the named model; other unknown names are refused. The result
  is checked (`validation.validate`) as the command line checks it.
  """
  if not os.path.isfile(path):
    raise UserError(f'No config file {path}; pass the path of an experiments/*.py file.')
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path,
      submodule_search_locations=None)
  module = importlib.util.module_from_spec(spec)
  # Variants import their base as `experiments.<name>`: resolve from the repo root.
  if root not in sys.path:
    sys.path.insert(0, root)
  spec.loader.exec_module(module)
  config = module.get_config()
  overrides_lib.apply(config, overrides or {}, where='override ')
  builder.respect_given_fields(config, overrides or {})
  validation.validate(config)
  return config


def load_data(config: ml_collections.ConfigDict, split: str = 'train') -> datasets.Split:
  """The config's 'train' or 'eval' split (or any split name) as uint8 arrays in memory."""
  if split == 'eval':
    return datasets.load_eval_split(config.dataset)
  return datasets.load_split(config.dataset, config.dataset.train_split if split == 'train'
                             else split)


def augmented_batch(config: ml_collections.ConfigDict, split: datasets.Split, step: int = 0,
                    count: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """The first `count` images (float, as the network sees them) and labels of step `step`.

  The trainer's own batch schedule and on-device augmentation (one device), keyed the same way.
  """
  batches = input_pipeline.BatchSchedule(split.num_examples,
                                         input_pipeline.global_batch(config), 1, config.seed)
  indices = batches.indices(step)[0, 0, :count]
  _, train_key = train_state.seed_keys(config.seed)
  augmentation = augmentations.Augmentation.from_config(config, batches.steps_per_epoch)
  images = augmentations.augmented_examples(split.images[indices], indices, train_key, step,
                                             augmentation)
  return np.asarray(images), split.labels[indices]


def create_train_state(config: ml_collections.ConfigDict, split: datasets.Split
                       ) -> tuple[Any, train_state.TrainState]:
  """(model, fresh state on the host) for `split`, exactly as the trainer starts (config.seed).

  model.apply(state.variables(), images) runs the network on a batch
  (inference mode). A model with a data-dependent initialisation (airbench's
  whitening) gets it from `split`, as the trainer does.
  """
  setup = builder.build(config, split)
  return setup.model, setup.state


def load_pretrained(config: ml_collections.ConfigDict, split: datasets.Split | None = None
                    ) -> Checkpoint:
  """The state `config.init_from` gives before any step, as a `Checkpoint` of step 0.

  `predict(checkpoint, images)` and `checkpoint.model.apply(...)` then show what was loaded
  (the head, where the classes differ, is the fresh one the run starts with). `split`
  (default: the config's training split, loaded) gives the classes and the image shape.
  """
  if not config.init_from:
    raise UserError('config.init_from is empty; name a run\'s WORKDIR[@STEP] or a PyTorch '
                    '.pt / .pth file to load.')
  split = split if split is not None else load_data(config)
  setup = builder.build(config, split)
  state = pretrained.initialise(jax.tree.map(np.asarray, setup.state), config,
                                split.num_classes)
  return Checkpoint(config=config, model=setup.model, state=state, step=0,
                    class_names=list(split.class_names), image_shape=list(split.image_shape))


def train(config: ml_collections.ConfigDict, workdir: str, num_steps: int | None = None,
          on_log: Callable[[int, dict[str, float]], None] | None = None,
          evaluate_in_process: bool = True) -> train_state.TrainState:
  """Trains to `num_steps` (default `config.num_train_steps`) in WORKDIR, resuming if it can.

  `on_log(step, metrics)` is called at every log line (loss, precision,
  learning_rate, examples_per_sec...), e.g. to draw a live loss curve.
  Returns the final state as host arrays.
  """
  if num_steps is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    config.num_train_steps = num_steps
    config.num_train_epochs = 0.0
  return train_lib.train_and_evaluate(config, workdir, evaluate_in_process=evaluate_in_process,
                                  on_log=on_log)


@dataclasses.dataclass
class Checkpoint:
  """A restored checkpoint: the config it was trained with, the model and the state."""

  config: ml_collections.ConfigDict
  model: Any
  state: train_state.TrainState
  step: int
  class_names: list[str]
  image_shape: list[int] | None = None  # of the training images (None: not recorded)

  def params(self, which: str = 'ema') -> Any:
    """'ema' (the averaged parameters the tutorial evaluates) or 'raw'."""
    if which not in ('ema', 'raw'):
      raise UserError(f'Parameters are ema or raw, not {which!r}.')
    return self.state.ema_params if which == 'ema' else self.state.params

  def variables(self, which: str = 'ema') -> dict[str, Any]:
    """What `model.apply` takes: the 'ema' or 'raw' parameters and the model state."""
    return self.state.variables(self.params(which))

  @property
  def num_replicas(self) -> int:
    """The runs it holds: a sweep's points x seeds, or config.num_replicas."""
    return sweeps.num_runs(self.config)

  @property
  def num_points(self) -> int:
    return sweeps.num_points(self.config)

  def point(self, index: int) -> Checkpoint:
    """Point `index` of a sweep's checkpoint: its config alone and its config.num_replicas runs."""
    if not sweeps.is_sweep(self.config):
      raise UserError('This checkpoint is not of a sweep (config.sweep is empty); load it '
                      'without point=.')
    if not 0 <= index < self.num_points:
      raise UserError(f'This checkpoint holds a sweep of {self.num_points} points: point is 0 '
                      f'to {self.num_points - 1}, not {index}.')
    seeds = self.config.num_replicas
    runs = jax.tree.map(lambda x: x[index * seeds:(index + 1) * seeds], self.state)
    return dataclasses.replace(self, config=sweeps.point_config(self.config, index),
                               state=train_state.replica(runs, 0) if seeds == 1 else runs)

  def replica(self, index: int) -> Checkpoint:
    """Run `index` of a checkpoint of `config.num_replicas` runs (seed + index), on its own."""
    if sweeps.is_sweep(self.config):
      raise UserError(f'This checkpoint holds a sweep of {self.num_points} points x '
                      f'{self.config.num_replicas} seeds; choose the point too: '
                      'load_checkpoint(workdir, point=p, replica=r) or checkpoint.point(p).')
    if not 0 <= index < self.num_replicas:
      raise UserError(f'This checkpoint holds {self.num_replicas} run(s): replica is 0 to '
                      f'{self.num_replicas - 1}, not {index}.')
    if self.num_replicas == 1:
      return self
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.num_replicas, config.seed = 1, self.config.seed + index
    return dataclasses.replace(self, config=config,
                               state=train_state.replica(self.state, index))


def load_checkpoint(workdir: str, step: int | None = None, replica: int | None = None,
                    point: int | None = None) -> Checkpoint:
  """The latest (or the given) checkpoint in WORKDIR, with the config saved beside it.

  Safe while a trainer is writing: only finalised checkpoints are read. In a
  run of several replicas, `replica=r` keeps run r alone (`predict` needs one);
  in a sweep, `point=p` keeps point p (its config and seeds) and `replica=r`
  then its seed r.
  """
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    raise UserError(f'No checkpoints in {workdir}; train there first or fix the path.')
  manager = checkpoints.create_manager(workdir, read_only=True)
  try:
    steps = manager.all_steps()
    if not steps:
      raise UserError(f'No finished checkpoint in {workdir} yet; wait for the trainer.')
    step = max(steps) if step is None else step
    if step not in steps:
      raise UserError(f'No checkpoint of step {step} in {workdir}; it has {sorted(steps)}.')
    loaded = checkpoints.load(manager, step, lambda config, trained: builder.build(
        config, num_classes=len(trained['class_names']),
        image_shape=trained.get('image_shape')).state)
  finally:
    manager.close()
  image_shape = loaded.dataset.get('image_shape') or (32, 32, loaded.config.dataset.channels or 3)
  model = models.create_model(loaded.config.model, len(loaded.dataset['class_names']),
                              in_channels=image_shape[-1])
  checkpoint = Checkpoint(config=loaded.config, model=model, state=loaded.state, step=step,
                          class_names=list(loaded.dataset['class_names']),
                          image_shape=loaded.dataset.get('image_shape'))
  if point is not None:
    checkpoint = checkpoint.point(point)
  return checkpoint if replica is None else checkpoint.replica(replica)


def predict(checkpoint: Checkpoint, images: np.ndarray, which: str = 'ema',
            batch_size: int = 1000, tta: str | None = None) -> np.ndarray:
  """Class probabilities [N, classes] of uint8 images [N, H, W, 3] (eval preprocessing).

  `tta` (default: the checkpoint config's `eval.tta`): none, mirror or
  mirror_translate, as the evaluator (softmax of the averaged logits).
  """
  if checkpoint.num_replicas > 1:
    how = ('point=p, replica=r' if sweeps.is_sweep(checkpoint.config) else 'replica=r')
    raise UserError(f'This checkpoint holds {checkpoint.num_replicas} runs; predict with one: '
                    f'load_checkpoint(workdir, {how}) or checkpoint.replica(r).')
  images = np.asarray(images)
  preprocessing = input_pipeline.EvalPreprocessing.from_config(checkpoint.config)
  preprocessing.check(images.shape, 'The images given to predict', checkpoint.image_shape)
  variables = checkpoint.variables(which)
  tta = checkpoint.config.eval.tta if tta is None else tta
  preprocess = jax.vmap(preprocessing)

  @jax.jit
  def probabilities(batch):
    logits = scoring.tta_logits(
        lambda x: checkpoint.model.apply(variables, x, train=False), preprocess(batch), tta)
    return jax.nn.softmax(logits)

  return np.concatenate([np.asarray(probabilities(images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def _table(logdir: str):
  """LOGDIR/metrics.jsonl as a DataFrame indexed by step (a resumed run's repeats: last kept)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  table = pd.DataFrame(summaries.read_records(os.path.join(logdir, layout.METRICS)))
  return table.drop_duplicates('step', keep='last').set_index('step') if len(table) else table


def read_metrics(workdir: str):
  """The training log (WORKDIR/metrics.jsonl) as a pandas DataFrame indexed by step."""
  return _table(workdir)


def read_evaluations(workdir: str):
  """The evaluator's record (WORKDIR/eval/metrics.jsonl) as a DataFrame indexed by step.

  Columns: precision (EMA), precision_raw, loss, loss_raw, count, status
  (scored / unreadable / deleted), ...
  """
  return _table(layout.path(workdir, layout.EVAL))


def plot_run(workdir: str, title: str | None = None):
  """Training loss and precision@1 (EMA vs raw) of a WORKDIR, as a matplotlib Figure."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics, evaluations = read_metrics(workdir), read_evaluations(workdir)
  figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
  if len(metrics):
    left.plot(metrics.index, metrics['loss'], label='total loss')
    left.plot(metrics.index, metrics['cross_entropy'], label='cross-entropy')
  left.set(xlabel='step', ylabel='training loss', title='training loss')
  left.legend()
  if len(evaluations):
    scored = evaluations[evaluations.get('status', 'scored') == 'scored']
    right.plot(scored.index, scored['precision'], 'o-', label='EMA parameters')
    right.plot(scored.index, scored['precision_raw'], 's--', label='raw parameters')
  right.set(xlabel='step', ylabel='precision @ 1', title='held-out precision @ 1')
  right.legend()
  for axis in (left, right):
    axis.grid(alpha=0.3)
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  return figure


def compare(*workdirs: str, tta: str | None = None, metric: str = 'precision',
            step: int | None = None, allow_different_steps: bool = False, eval_set: str = '',
            direction: str | None = None):
  """`python -m cifar_jax.compare` as a DataFrame: one row per group of runs.

  Each argument is a WORKDIR (its replicas) or a folder of WORKDIRs (seeds run
  apart); columns step, n, mean, ci95, std, min, max and, against the first
  group, difference, difference_ci_low/high and Welch's p_value. Groups are
  compared at one `step` (default: the latest scored step they share); see
  `cifar_jax.compare`. A sweep's WORKDIR alone gives one row per point: its
  swept values as columns, `best`, and the differences against the best point.
  `metric` is any recorded figure ('nll', 'ece', 'auroc', ...) of the evaluation
  set `eval_set` ('': the run's split); its direction decides the best.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  comparison = compare_lib.compare(workdirs, tta, metric, step, allow_different_steps,
                                   eval_set, direction)
  return pd.DataFrame(comparison.rows()).set_index('group')


def plot_sweep(workdir: str, field: str | None = None, tta: str | None = None,
               metric: str = 'precision', step: int | None = None, title: str | None = None,
               eval_set: str = '', direction: str | None = None):
  """A sweep's `metric` (of `eval_set`) against one swept `field` (default: the first), with
  95% CI bars.

  With several swept fields, one line per combination of the others.
  """
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  comparison = compare_lib.compare([workdir], tta, metric, step, eval_set=eval_set,
                                   direction=direction)
  fields = list(comparison.groups[0].point)
  field = field or fields[0]
  if field not in fields:
    raise UserError(f'{field!r} is not swept in {workdir}; its swept fields are {fields}.')
  lines: dict[str, list] = {}
  for group in comparison.groups:
    others = ', '.join(f'{k}={v:g}' for k, v in group.point.items() if k != field)
    lines.setdefault(others, []).append(group)
  figure, axis = plt.subplots(figsize=(5.5, 3.6))
  for label, groups in lines.items():
    groups = sorted(groups, key=lambda g: g.point[field])
    x = [g.point[field] for g in groups]
    means = [g.summary.mean for g in groups]
    errors = [0.0 if g.summary.n < 2 else g.summary.ci95 for g in groups]
    axis.errorbar(x, means, yerr=errors, fmt='o-', capsize=4, label=label or None)
  best = comparison.groups[comparison.best]
  axis.plot([best.point[field]], [best.summary.mean], '*', color='black', markersize=12,
            label='best')
  positive = all(g.point[field] > 0 for g in comparison.groups)
  if positive and max(g.point[field] for g in comparison.groups) / min(
      g.point[field] for g in comparison.groups) >= 10:
    axis.set_xscale('log')
  axis.set(xlabel=field, ylabel=compare_lib.describe_metric(comparison),
           title=title or f'sweep at step {best.step}: mean and 95% CI over seeds')
  axis.grid(alpha=0.3)
  axis.legend()
  figure.tight_layout()
  return figure


def plot_comparison(*workdirs: str, tta: str | None = None, metric: str = 'precision',
                    title: str | None = None, step: int | None = None,
                    allow_different_steps: bool = False, eval_set: str = '',
                    direction: str | None = None):
  """Every run of each group as a dot, with the group's mean and 95% CI, as a Figure."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  comparison = compare_lib.compare(workdirs, tta, metric, step, allow_different_steps,
                                   eval_set, direction)
  figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(comparison.groups), 3.6))
  jitter = np.random.default_rng(0)
  for index, group in enumerate(comparison.groups):
    summary = group.summary
    axis.plot(index + jitter.uniform(-0.12, 0.12, summary.n), group.values, 'o', alpha=0.6)
    if summary.n > 1:
      axis.errorbar(index + 0.3, summary.mean, yerr=summary.ci95, fmt='s', color='black',
                    capsize=4)
  axis.set_xticks(range(len(comparison.groups)),
                  [f'{g.name}\n(n={g.summary.n}, step {g.step})' for g in comparison.groups])
  axis.set(ylabel=compare_lib.describe_metric(comparison),
           title=title or 'runs, and the mean with its 95% CI')
  axis.grid(alpha=0.3)
  figure.tight_layout()
  return figure
