"""Named evaluation sets beside the run's own (`config.eval.sets`): shifts, corruptions, OOD.

The evaluator scores the run's evaluation split (`config.dataset.eval_split`)
as always, and then every set of `config.eval.sets`, a name -> a dict:

  config.eval.sets = {
      'cifar10_1': {'source': 'tfds', 'name': 'cifar10_1', 'split': 'test'},
      'corrupted': {'corruptions': 'benchmark'},           # of the run's eval split
      'svhn': {'source': 'tfds', 'name': 'svhn_cropped', 'split': 'test', 'ood': True},
      'other': {'path': '/data/other_photos', 'split': 'val'},
  }

A set's keys are fields of `config.dataset` (source, name, path, data_dir,
image_size, channels, ...; the run's own where left out) and those of
`SET_FIELDS`. Three kinds:

* plain: the same metrics as the run's split (precision@1, loss,
  `config.eval.metrics`, per replica and sweep point);
* corrupted (`corruptions`): every corruption at every severity
  (`corruptions.py`), scored in one pass; the mean over them of precision@1,
  loss (= NLL) and ECE, per corruption and per severity;
* out of distribution (`ood=True`): no labels needed; AUROC and FPR at 95% TPR
  of the maximum softmax probability against the run's split (`ood.py`).

Every figure is recorded under 'NAME/...' in the evaluator's metrics.jsonl
record of the step and in TensorBoard, beside the time its scoring took
('NAME/eval_seconds'). The trainer's in-process evaluation scores only the
run's split: the sets are the evaluator process's work, off the trainer's path.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import ml_collections
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import corruptions, datasets
from cifar_jax.evaluation import calibration, ood, scoring
from cifar_jax.training.train_state import TrainState

SET_FIELDS = {
    'split': spec.Field('', spec.text(), "the split scored ('': config.dataset.eval_split)"),
    'corruptions': spec.Field('', spec.text(), "'' (none), 'benchmark' (15), 'all' (19) or "
                              "'name,name'"),
    'severities': spec.Field(corruptions.SEVERITIES, lambda c, path: c.sequence(
        path, int, min_length=1), 'of the corruptions, 1 to 5'),
    'corruption_source': spec.Field('auto', spec.choice(corruptions.SOURCES),
                                    'auto | tfds (CIFAR-10-C) | generated'),
    'ood': spec.Field(False, spec.flag(), 'an out-of-distribution set (AUROC, FPR95)'),
}
NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]*$')


def dataset_fields() -> set[str]:
  """The fields of config.dataset a set may give for itself (its split is `split`)."""
  return {path.split('.', 1)[1] for path in datasets.FIELDS} - {'train_split', 'eval_split'}


def set_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The set `name` with every field: SET_FIELDS' defaults, `dataset`: the merged data config."""
  overrides = config.eval.sets[name].to_dict()
  fields = {key: overrides.get(key, field.default) for key, field in SET_FIELDS.items()}
  dataset = config.dataset.to_dict()
  if 'source' in overrides or 'path' in overrides:  # another source: not the run's eval_path
    dataset['eval_path'] = ''
  dataset.update({k: v for k, v in overrides.items() if k not in SET_FIELDS})
  dataset['eval_split'] = fields['split'] or config.dataset.eval_split
  return ml_collections.ConfigDict({**fields, 'dataset': dataset})


def _check_one(config: ml_collections.ConfigDict, name: str) -> None:
  where = f'config.eval.sets[{name!r}]'
  if not NAME_RE.match(name):
    raise UserError(f'{where}: name a set with letters, digits, _ . - (starting with a '
                    'letter); its figures are recorded as NAME/precision.')
  if not isinstance(config.eval.sets[name], ml_collections.ConfigDict):
    raise UserError(f'{where} is {config.eval.sets[name]!r}; it must be a dict of fields.')
  unknown = set(config.eval.sets[name].keys()) - set(SET_FIELDS) - dataset_fields()
  if unknown:
    raise UserError(f'{where} has {sorted(unknown)}, not fields of an evaluation set; use '
                    f'{sorted(SET_FIELDS)} or fields of config.dataset.')
  merged = set_config(config, name)
  checker = spec.Checker(ml_collections.ConfigDict({**merged.to_dict(), 'eval': {}}))
  try:
    spec.check_section(checker, '', SET_FIELDS)
    spec.check_section(checker, '', datasets.FIELDS)
    if merged.corruptions:
      corruptions.names(merged.corruptions)
      if merged.ood:
        raise UserError('a set is either corrupted or out of distribution; make two sets.')
    if not set(merged.severities) <= set(corruptions.SEVERITIES):
      raise UserError(f'severities {merged.severities}: each must be 1 to 5.')
  except UserError as error:
    message = re.sub(r'config\.(dataset\.)?', '\0', str(error)).replace('\0', f'{where}.')
    if not message.startswith(where):
      message = f'{where}: {message[0].lower()}{message[1:]}'
    raise UserError(message) from None


def _check_sets(c: spec.Checker, path: str) -> None:
  sets = c.get(path)
  if not isinstance(sets, ml_collections.ConfigDict):
    raise UserError(f'config.eval.sets is {sets!r}; it must be a dict: name -> fields.')
  c.groups.add(path)  # its fields are checked here, set by set
  for name in sets.keys():
    _check_one(c.config, name)


FIELDS = {'eval.sets': spec.Field({}, _check_sets, 'named evaluation sets beside the run\'s',
                                  before={})}


spec.declare(__name__, FIELDS)


@dataclasses.dataclass
class EvalSet:
  """One set, loaded: its kind, its evaluator and (corrupted) the rows of each corruption."""

  name: str
  kind: str  # 'plain' | 'corrupted' | 'ood'
  evaluator: scoring.Evaluator
  groups: list[corruptions.Group] = dataclasses.field(default_factory=list)


def needs_probabilities(config: ml_collections.ConfigDict) -> bool:
  """Whether the run's own split must keep its probabilities (an out-of-distribution set)."""
  return any(set_config(config, name).ood for name in config.eval.get('sets', {}).keys())


def load(config: ml_collections.ConfigDict, model: Any, devices) -> list[EvalSet]:
  """Every set of config.eval.sets, loaded (corrupted copies generated once, cached)."""
  loaded = []
  for name in config.eval.get('sets', {}).keys():
    merged = set_config(config, name)
    split, groups = _load_split(merged)
    kind = 'corrupted' if merged.corruptions else 'ood' if merged.ood else 'plain'
    evaluator = scoring.Evaluator(_with_dataset(config, merged.dataset), split, model, devices,
                                  probabilities=kind != 'plain', classes=kind != 'ood')
    loaded.append(EvalSet(name, kind, evaluator, groups))
  return loaded


def _load_split(merged: ml_collections.ConfigDict):
  if not merged.corruptions:
    return datasets.load_eval_split(merged.dataset), []
  dataset = merged.dataset
  if dataset.get('eval_path'):
    dataset = ml_collections.ConfigDict({**dataset.to_dict(), 'path': dataset.eval_path})
  return corruptions.load_all(dataset, dataset.eval_split, corruptions.names(merged.corruptions),
                              tuple(merged.severities), merged.corruption_source)


def _with_dataset(config: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """`config` with the set's data fields: its preprocessing and placement follow them."""
  copied = ml_collections.ConfigDict(config.to_dict())
  copied.dataset = dataset
  return copied


def check_trained(sets: list[EvalSet], config: ml_collections.ConfigDict,
                  trained: dict[str, Any]) -> None:
  """Every labelled set against the checkpoint's training split (classes, image shape)."""
  for eval_set in sets:
    scoring.check_eval_split(config, eval_set.evaluator.split, trained, eval_set.kind != 'ood')


@dataclasses.dataclass(frozen=True)
class SetScore:
  """One set's figures at one step: its record entries ('NAME/...') and its terminal line."""

  scalars: dict[str, float]
  line: str


def score(eval_set: EvalSet, state: TrainState, run_result: scoring.Result, step: int
          ) -> SetScore:
  """Scores one set (its kind's figures) and times it."""
  started = time.time()
  score_kind = {'plain': _score_plain, 'corrupted': _score_corrupted, 'ood': _score_ood}
  scalars, line = score_kind[eval_set.kind](eval_set, state, run_result, step)
  scalars['eval_seconds'] = time.time() - started
  return SetScore({f'{eval_set.name}/{key}': value for key, value in scalars.items()},
                  f'{eval_set.name}: {line}')


def _outputs(evaluator: scoring.Evaluator, state: TrainState) -> dict[str, dict]:
  """{'ema': ..., 'raw': ...} outputs of the evaluator (one pass, twice, without an EMA)."""
  raw = evaluator.outputs(state.variables())
  return {'ema': evaluator.outputs(state.variables(state.ema_params)) if evaluator.has_ema
          else raw, 'raw': raw}


def _named(which: str) -> str:
  return 'EMA' if which == 'ema' else 'raw'


def _lead(result_or_evaluator) -> tuple[str, str]:
  headline, has_ema = result_or_evaluator.headline, result_or_evaluator.has_ema
  return ('raw', 'ema') if headline == 'raw' or not has_ema else ('ema', 'raw')


def _score_plain(eval_set, state, run_result, step):
  del run_result
  result = eval_set.evaluator.score_state(state)
  return result.scalars(), result.line(step)


def _score_corrupted(eval_set, state, run_result, step):
  """Mean precision, loss (NLL) and ECE over the corruptions x severities; per corruption and
  per severity."""
  del run_result
  evaluator = eval_set.evaluator
  bins = evaluator.calibration_bins
  scalars, means = {}, {}
  for which, outputs in _outputs(evaluator, state).items():
    per_group = [evaluator.scores_of(outputs, group.rows) for group in eval_set.groups]
    table = {  # [groups, replicas] of each figure
        'precision': [[s.precision for s in scores] for scores in per_group],
        'loss': [[s.loss for s in scores] for scores in per_group],
        'ece': [[calibration.expected_calibration_error(s.probabilities, labels, bins)
                 for s in scores] for scores, labels in zip(
                     per_group, [evaluator.split.labels[g.rows] for g in eval_set.groups],
                     strict=True)],
        **{name: [[s.metrics[name] for s in scores] for scores in per_group]
           for name in per_group[0][0].metrics},
    }
    suffix = '' if which == 'ema' else '_raw'
    for name, values in table.items():
      scalars.update(_with_replicas(name + suffix, np.mean(values, axis=0)))
      means[name, which] = scalars[name + suffix]
    precision = np.mean(table['precision'], axis=1)  # [groups]
    for key, members in _by(eval_set.groups).items():
      scalars[f'precision{suffix}/{key}'] = float(np.mean(precision[members]))
  scalars['count'] = evaluator.split.num_examples
  lead, other = _lead(evaluator)
  kinds = len({g.corruption for g in eval_set.groups})
  severities = len({g.severity for g in eval_set.groups})
  worst = min((k for k in _by(eval_set.groups) if not k.startswith('severity_')),
              key=lambda k: scalars[f'precision{"" if lead == "ema" else "_raw"}/{k}'])
  second = (f'{_named(other)} parameters: {means["precision", other]:.3f}'
            if evaluator.has_ema else 'no EMA')
  line = (f'step {step}, mean precision @ 1 over {kinds} corruptions x {severities} '
          f'severities = {means["precision", lead]:.3f} ({second}); NLL '
          f'{means["loss", lead]:.3f}, ECE {means["ece", lead]:.3f}; worst: {worst}')
  return scalars, line


def _with_replicas(key: str, per_replica) -> dict[str, float]:
  """{key: the mean} and, with replicas, every replica's ('KEY/replica_R'), as precision's."""
  values = [float(v) for v in per_replica]
  scalars = {key: float(np.mean(values))}
  if len(values) > 1:
    scalars.update({sweeps.replica_key(key, r): v for r, v in enumerate(values)})
  return scalars


def _by(groups: list[corruptions.Group]) -> dict[str, list[int]]:
  """Group indices by corruption ('fog') and by severity ('severity_3')."""
  members: dict[str, list[int]] = {}
  for i, group in enumerate(groups):
    members.setdefault(group.corruption, []).append(i)
    members.setdefault(f'severity_{group.severity}', []).append(i)
  return members


def _score_ood(eval_set, state, run_result, step):
  """AUROC and FPR95 of the maximum softmax probability: the run's split against this set."""
  evaluator = eval_set.evaluator
  scalars = {}
  for which, outputs in _outputs(evaluator, state).items():
    outside = outputs['probabilities']  # [R, N, classes]
    inside = [s.probabilities for s in getattr(run_result, which)]
    pairs = [(ood.maximum_softmax_probability(i), ood.maximum_softmax_probability(o))
             for i, o in zip(inside, outside, strict=True)]
    suffix = '' if which == 'ema' else '_raw'
    scalars.update(_with_replicas('auroc' + suffix, [ood.auroc(i, o) for i, o in pairs]))
    scalars.update(_with_replicas('fpr95' + suffix, [ood.fpr_at_tpr(i, o) for i, o in pairs]))
  scalars['count'] = evaluator.split.num_examples
  lead, other = _lead(evaluator)
  at = lambda which: '' if which == 'ema' else '_raw'  # noqa: E731
  second = (f'{_named(other)} parameters: AUROC {scalars["auroc" + at(other)]:.3f}, FPR95 '
            f'{scalars["fpr95" + at(other)]:.3f}' if evaluator.has_ema else 'no EMA')
  line = (f'step {step}, out of distribution: AUROC {scalars["auroc" + at(lead)]:.3f}, FPR95 '
          f'{scalars["fpr95" + at(lead)]:.3f} ({second}; maximum softmax probability)')
  return scalars, line
