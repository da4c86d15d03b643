r"""Is B better than A, or is it noise? Groups of runs compared from their evaluator records.

  python -m cifar_jax.compare DIR_A DIR_B [DIR_C ...] [--tta=mirror_translate] [--step=N]
  python -m cifar_jax.compare SWEEP_WORKDIR
  python -m cifar_jax.compare DIR_A DIR_B --metric=ece [--set=corrupted]

`--metric` is any figure the evaluator recorded (precision by default; nll, ece,
brier, top5_precision, auroc, fpr95, a fork's metric, ..., `_raw` for the raw
parameters), `--set` an evaluation set of `config.eval.sets` (docs/evaluation.md).
Which way is better is the metric's own (lower for loss, nll, ece, brier, fpr95;
`--direction` for a metric from outside that does not say): it picks a sweep's best
point.

Each DIR is one group of runs:

* a WORKDIR of a run with `config.num_replicas` = R: its R replicas, scored by
  the evaluator at the final step (every replica's precision@1 is in the
  record); a WORKDIR of one run is a group of one;
* a folder of such WORKDIRs (seeds run apart): all their runs together;
* what `benchmarks/airbench_reference.py --train --seeds=N --out=DIR` writes
  (the original recipe in PyTorch, one record of N seeds).

It prints each group's n and mean ± the 95% confidence interval of the mean
(t distribution), std, min and max; then, for every group against the first,
the difference of the means with its 95% CI and the p-value of Welch's
t-test (`run_statistics`). The last line is JSON. `--tta` picks the records
of one test-time augmentation where a run was scored with several.

A WORKDIR of a sweep (`config.sweep`) given alone is a table by point: each
point's seeds are a group, the swept values are columns, the best mean is
marked, and every other point is compared with the best (Welch), so the
runner-up's p-value says whether the best is significantly better. Picking the
best of P points and testing it against the runner-up is P - 1 comparisons at
once; the table says when the p-value does not survive Bonferroni's 0.05 / (P - 1).

Groups are compared at one step: each group's latest scored step, which must
be the same for all (the table shows it), or the step `--step=N` names;
`--allow_different_steps` compares groups at different latest steps on
purpose. The confidence intervals are over seeds only: the sampling noise of
the finite test set, the same for every run scored on it, is not in them
(the table's note gives its size).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import math
import os

from absl import app, flags

from cifar_jax import cli
from cifar_jax.core import layout, summaries, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.evaluation import metrics, run_statistics

FLAGS = flags.FLAGS
flags.DEFINE_string('tta', None, 'Compare the records of this test-time augmentation '
                    '(none, mirror, mirror_translate); default: the one every run has.')
flags.DEFINE_string('metric', 'precision', 'Any figure the evaluator recorded: precision (the '
                    'EMA parameters\', the raw ones\' without an EMA), precision_raw, loss, '
                    'nll, ece, brier, top5_precision, auroc, fpr95, ... (_raw: the raw '
                    'parameters\'); lower is better for loss, nll, ece, brier and fpr95.')
flags.DEFINE_string('set', '', 'Compare on this evaluation set of config.eval.sets (its '
                    'figures are recorded as SET/METRIC); default: the run\'s eval split.')
flags.DEFINE_enum('direction', None, ['higher', 'lower'], 'Which way is better, for a metric '
                  'from outside cifar_jax that does not declare it.')
flags.DEFINE_integer('step', None, 'Compare the records of this step (every run must have '
                     'been scored there); default: each group\'s latest scored step.')
flags.DEFINE_bool('allow_different_steps', False, 'Compare groups whose latest scored steps '
                  'differ (each at its own; the table shows them).')

@dataclasses.dataclass(frozen=True)
class Group:
  """The runs of one DIR: their final step's values of the metric."""

  name: str
  values: tuple[float, ...]
  step: int
  tta: str
  count: int | None = None  # images each run was scored on (None: not recorded)
  point: dict | None = None  # a sweep point's swept values (None: not a sweep point)

  @property
  def summary(self) -> run_statistics.Summary:
    return run_statistics.Summary.of(self.values)


def record_values(record: dict, metric: str = 'precision', where: str = '') -> list[float]:
  """Every replica's value of `metric` in one evaluator record (one value for a single run);
  `where` (the run's WORKDIR) starts the sentence of a missing figure."""
  replicas = sorted((run[1], value) for key, value in record.items()
                    if (run := sweeps.run_of_key(key)) and run[0] == metric)
  if replicas:
    return [value for _, value in replicas]
  if metric not in record:
    recorded = sorted(key for key in record if not sweeps.run_of_key(key)
                      and isinstance(record[key], (int, float)) and key not in _NOT_FIGURES)
    lead = f'{where}: the' if where else 'The'
    raise UserError(f'{lead} record of step {record.get("step")} has no {metric!r} (it has '
                    f'{recorded}); name one of them with --metric (and --set), or score the '
                    'run again with it (--mode=eval --config.eval.run_once=true, '
                    'config.eval.metrics, config.eval.sets).')
  return [record[metric]]


_NOT_FIGURES = {'step', 'wall_time', 'count', 'num_replicas'}


def record_key(metric: str, eval_set: str = '') -> str:
  """The record key of `metric` on `eval_set` ('': the run's split): 'svhn/auroc'."""
  return f'{eval_set}/{metric}' if eval_set else metric


def lower_is_better(key: str, direction: str | None = None) -> bool:
  """Whether `key` is better low: `direction` where given, else the metric's declaration."""
  if direction is not None:
    return direction == 'lower'
  lower = metrics.lower_is_better(key)
  if lower is None:
    raise UserError(f'Which way is better for {key!r} is not known (a metric from outside '
                    'cifar_jax that declares none); pass --direction=higher or '
                    '--direction=lower.')
  return lower


def _scored_records(workdir: str) -> list[dict]:
  path = layout.path(workdir, layout.EVAL, layout.METRICS)
  return [r for r in summaries.read_records(path) if r.get('status') == 'scored']


def _records_at(workdir: str, step: int | None) -> list[dict]:
  """The scored records of WORKDIR at `step` (None: its latest scored step), one per TTA."""
  scored = _scored_records(workdir)
  if not scored:
    return []
  if step is None:
    step = max(r['step'] for r in scored)
  at_step = [r for r in scored if r['step'] == step]
  if not at_step:
    raise UserError(f'{workdir} was not scored at step {step} (its scored steps: '
                    f'{sorted({r["step"] for r in scored})}); choose one of them with --step.')
  return at_step


def _pick(records: list[dict], tta: str | None, where: str) -> dict:
  """The record of `tta` at one step: the latest value of each figure over all its records (a
  run scored again with other metrics or sets keeps the figures of the earlier scoring)."""
  by_tta: dict[str, dict] = {}
  for record in records:
    by_tta.setdefault(record.get('tta', 'none'), {}).update(record)
  if tta is None:
    if len(by_tta) > 1:
      raise UserError(f'{where} was scored with several test-time augmentations '
                      f'({sorted(by_tta)}); choose one with --tta.')
    return next(iter(by_tta.values()))
  if tta not in by_tta:
    raise UserError(f'{where} has no record with --tta={tta} (it has {sorted(by_tta)}); score '
                    f'it with --mode=eval --config.eval.run_once=true --config.eval.tta={tta}.')
  return by_tta[tta]


def read_group(directory: str, tta: str | None = None, metric: str = 'precision',
               step: int | None = None) -> Group:
  """The group of runs in `directory` (a WORKDIR, or a folder of WORKDIRs); see the module doc.

  `step`: the records of that step; default the latest scored one, which
  every run of a folder must share.
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise UserError(f'{directory} does not exist; give WORKDIRs or folders of them.')
  name = os.path.basename(directory)
  if _scored_records(directory):
    record = _pick(_records_at(directory, step), tta, directory)
    if record.get('sweep_points'):
      raise UserError(f'{directory} is a sweep of {len(record["sweep_points"])} points; compare '
                      f'its points on their own: python -m cifar_jax.compare {directory}')
    return Group(name, tuple(record_values(record, metric, directory)), int(record['step']),
                 record.get('tta', 'none'), record.get('count'))
  runs = sorted(os.path.join(directory, entry) for entry in os.listdir(directory)
                if _scored_records(os.path.join(directory, entry)))
  if not runs:
    raise UserError(f'{directory} holds no evaluator records ({layout.EVAL}/{layout.METRICS} '
                    'with a scored step), nor folders that do; run the evaluator on it first '
                    '(--mode=eval).')
  picked = {run: _pick(_records_at(run, step), tta, run) for run in runs}
  steps = {os.path.basename(run): int(r['step']) for run, r in picked.items()}
  if len(set(steps.values())) > 1:
    raise UserError(f'The runs in {directory} were last scored at different steps ({steps}); '
                    'compare them at one step with --step=N.')
  values = tuple(v for run, record in picked.items() for v in record_values(record, metric, run))
  ttas = {r.get('tta', 'none') for r in picked.values()}
  counts = {r.get('count') for r in picked.values()}
  return Group(name, values, next(iter(steps.values())),
               ttas.pop() if len(ttas) == 1 else 'mixed',
               counts.pop() if len(counts) == 1 else None)


def read_sweep(workdir: str, tta: str | None = None, metric: str = 'precision',
               step: int | None = None) -> tuple[Group, ...] | None:
  """A sweep WORKDIR's points as groups (each its seeds' values); None if it is not a sweep."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir) or not _scored_records(workdir):
    return None
  record = _pick(_records_at(workdir, step), tta, workdir)
  points = record.get('sweep_points')
  if not points:
    return None
  per_point = sweeps.by_point(record_values(record, metric, workdir), len(points))
  return tuple(Group(sweeps.describe(point), tuple(values), int(record['step']),
                     record.get('tta', 'none'), record.get('count'), point=point)
               for point, values in zip(points, per_point, strict=True))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Groups, and each group after the first against the first (None where n < 2).

  A sweep's (`best` set): each point against the best point instead.
  """

  groups: tuple[Group, ...]
  differences: tuple[run_statistics.Difference | None, ...]
  best: int | None = None  # a sweep: the index of the best point; differences are against it
  metric: str = 'precision'  # the record key compared: 'nll', 'svhn/auroc'
  lower_is_better: bool = False

  @property
  def is_sweep(self) -> bool:
    return self.best is not None

  def rows(self) -> list[dict]:
    """One dict per group: its summary and its difference from the first (a sweep's: best)."""
    rows = []
    against = ((None, *self.differences) if not self.is_sweep else self.differences)
    for index, (group, difference) in enumerate(zip(self.groups, against, strict=True)):
      summary = group.summary
      row = {'group': group.name, **(group.point or {}), 'n': summary.n, 'mean': summary.mean,
             'ci95': summary.ci95, 'std': summary.std, 'min': summary.min, 'max': summary.max,
             'step': group.step, 'tta': group.tta}
      if self.is_sweep:
        row['best'] = index == self.best
      if difference is not None:
        row.update({'difference': difference.difference, 'difference_ci_low': difference.ci_low,
                    'difference_ci_high': difference.ci_high, 'p_value': difference.p_value})
      rows.append(row)
    return rows


def compare(directories: Sequence[str], tta: str | None = None, metric: str = 'precision',
            step: int | None = None, allow_different_steps: bool = False, eval_set: str = '',
            direction: str | None = None) -> Comparison:
  """Reads every group and compares each with the first (Welch's t-test where both n >= 2).

  `metric`: any recorded figure, on the evaluation set `eval_set` ('': the
  run's split); which way is better is the metric's (`direction`: 'higher' or
  'lower' for one that declares none). Groups are compared at one step
  (`step`, or the latest scored step they share); groups at different latest
  steps are refused unless `allow_different_steps`.
  """
  key = record_key(metric, eval_set)
  lower = lower_is_better(key, direction)
  if len(directories) == 1:
    points = read_sweep(directories[0], tta, key, step)
    if points is None:
      raise UserError(f'{directories[0]} is not a sweep; give two or more WORKDIRs (or folders '
                      'of them) to compare, or a sweep\'s WORKDIR alone.')
    return _compare_points(points, key, lower)
  groups = tuple(read_group(d, tta, key, step) for d in directories)
  steps = {group.name: group.step for group in groups}
  if len(set(steps.values())) > 1 and not allow_different_steps:
    raise UserError(f'The groups were last scored at different steps ({steps}); compare them '
                    'at one step with --step=N (one every run was scored at), or pass '
                    '--allow_different_steps to compare each at its own latest step.')
  first = groups[0]
  differences = tuple(
      run_statistics.welch(first.values, g.values) if min(first.summary.n, g.summary.n) > 1
      else None for g in groups[1:])
  return Comparison(groups, differences, metric=key, lower_is_better=lower)


def _goodness(group: Group, lower: bool) -> float:
  return -group.summary.mean if lower else group.summary.mean


def _compare_points(points: tuple[Group, ...], key: str = 'precision', lower: bool = False
                    ) -> Comparison:
  """Every point against the best (Welch where both have two seeds or more)."""
  best = int(max(range(len(points)), key=lambda p: _goodness(points[p], lower)))
  differences = tuple(
      None if p == best or min(points[best].summary.n, g.summary.n) < 2
      else run_statistics.welch(points[best].values, g.values) for p, g in enumerate(points))
  return Comparison(points, differences, best=best, metric=key, lower_is_better=lower)


def runner_up(comparison: Comparison) -> int | None:
  """The index of a sweep's second-best point (None with one point)."""
  others = [p for p in range(len(comparison.groups)) if p != comparison.best]
  return (max(others, key=lambda p: _goodness(comparison.groups[p], comparison.lower_is_better))
          if others else None)


def describe_metric(comparison: Comparison) -> str:
  """'precision @ 1', 'nll (lower is better)', 'svhn/auroc' for the tables' first line."""
  name = comparison.metric
  shown = name.replace('precision', 'precision @ 1') if 'precision' in name and (
      'top5' not in name) else name
  return f'{shown} (lower is better)' if comparison.lower_is_better else shown


def format_sweep_table(comparison: Comparison) -> str:
  """A sweep by point: swept values, mean ± CI, the best marked, each against the best."""
  groups, best = comparison.groups, comparison.best
  fields = list(groups[0].point)
  seeds = {g.summary.n for g in groups}
  lines = [f'{describe_metric(comparison)} of each sweep point at step {groups[0].step} '
           f'(mean ± 95% CI over {"/".join(map(str, sorted(seeds)))} seeds); differences '
           'against the best (*, Welch\'s t-test)', '',
           '| point | ' + ' | '.join(fields) + ' | n | mean ± 95% CI | std | min | max | '
           'difference (95% CI) | p |',
           '| --- | ' + '--- | ' * len(fields) + '--- | --- | --- | --- | --- | --- | --- |']
  for index, row in enumerate(comparison.rows()):
    several = row['n'] > 1
    spread = f'{row["mean"]:.4f} ± {row["ci95"]:.4f}' if several else f'{row["mean"]:.4f}'
    difference, p = ('best', '') if index == best else ('needs n >= 2', '—')
    if 'difference' in row:
      difference = (f'{row["difference"]:+.4f} ({row["difference_ci_low"]:+.4f} to '
                    f'{row["difference_ci_high"]:+.4f})')
      p = f'{row["p_value"]:.3g}'
    mark = '*' if index == best else ''
    lines.append(f'| {index}{mark} | ' + ' | '.join(f'{row[f]:g}' for f in fields) +
                 f' | {row["n"]} | {spread} | {row["std"]:.4f} | {row["min"]:.4f} | '
                 f'{row["max"]:.4f} | {difference} | {p} |'.replace('nan', '—'))
  return '\n'.join([*lines, '', _verdict(comparison),
                    _sampling_note([groups[best]], comparison.metric)])


def _verdict(comparison: Comparison) -> str:
  """Whether the best point is significantly better than the runner-up, and how strongly."""
  second = runner_up(comparison)
  if second is None:
    return 'One point: nothing to compare.'
  best, other = comparison.groups[comparison.best], comparison.groups[second]
  difference = comparison.differences[second]
  if difference is None:
    return (f'The best point ({best.name}) leads the runner-up ({other.name}) by '
            f'{abs(best.summary.mean - other.summary.mean):.4f}; a test needs two seeds or '
            'more (config.num_replicas >= 2).')
  comparisons = len(comparison.groups) - 1
  threshold = 0.05 / comparisons
  verdict = ('significantly better than' if difference.p_value < 0.05
             else 'not significantly better than')
  text = (f'The best point ({best.name}) is {verdict} the runner-up ({other.name}): '
          f'{-difference.difference:+.4f}, Welch p = {difference.p_value:.3g}.')
  if comparisons > 1 and difference.p_value < 0.05 <= difference.p_value * comparisons:
    text += (f' With {comparisons + 1} points the best is chosen among {comparisons} '
             f'comparisons: the evidence is weak (Bonferroni asks p < {threshold:.3g}).')
  elif comparisons > 1 and difference.p_value < threshold:
    text += f' It survives Bonferroni for {comparisons} comparisons (p < {threshold:.3g}).'
  return text


def format_table(comparison: Comparison) -> str:
  if comparison.is_sweep:
    return format_sweep_table(comparison)
  lines = [f'{describe_metric(comparison)} of each group (mean ± 95% CI of the mean, t '
           f'distribution); differences against {comparison.groups[0].name} (Welch\'s t-test)', '',
           '| group | step | n | mean ± 95% CI | std | min | max | difference (95% CI) | p |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for index, row in enumerate(comparison.rows()):
    several = row['n'] > 1
    spread = f'{row["mean"]:.4f} ± {row["ci95"]:.4f}' if several else f'{row["mean"]:.4f}'
    std = f'{row["std"]:.4f}' if several else '—'
    difference, p = '—', '—'
    if 'difference' in row:
      difference = (f'{row["difference"]:+.4f} ({row["difference_ci_low"]:+.4f} to '
                    f'{row["difference_ci_high"]:+.4f})')
      p = f'{row["p_value"]:.3g}'
    elif index:
      difference = 'needs n >= 2 in both groups'
    lines.append(f'| {row["group"]} | {row["step"]} | {row["n"]} | {spread} | {std} | '
                 f'{row["min"]:.4f} | {row["max"]:.4f} | {difference} | {p} |')
  return '\n'.join([*lines, '', _sampling_note(comparison.groups, comparison.metric)])


def _sampling_note(groups: Sequence[Group], metric: str = 'precision') -> str:
  """What the CIs leave out: the test set's own sampling noise, sized where the count is known
  (for a precision: binomial)."""
  note = ('The CIs are over seeds only (the spread between runs); the sampling noise of the '
          'finite test set, shared by every run scored on it, is not in them')
  counts = {g.count for g in groups}
  if len(counts) != 1 or None in counts or metric not in ('precision', 'precision_raw'):
    return note + '.'
  count, mean = counts.pop(), groups[0].summary.mean
  half_width = 1.96 * math.sqrt(max(mean * (1 - mean), 0.0) / count)
  return (f'{note}: ±{half_width:.4f} (95%, binomial) at {mean:.4f} on {round(count):,} '
          'images, for generalising beyond this test set.')


def _json_safe(value):
  return None if isinstance(value, float) and not math.isfinite(value) else value


def parse_flags(argv: list[str]) -> list[str]:
  """The command line's flags, with the WORKDIRs as positional arguments."""
  return cli.parse_flags(argv, positional=True)


def main(argv: list[str]) -> None:
  if len(argv) < 2:
    cli.fail('give two or more WORKDIRs (or folders of them), or one sweep\'s WORKDIR: '
             'python -m cifar_jax.compare DIR_A DIR_B [...]')
  try:
    comparison = compare(argv[1:], FLAGS.tta, FLAGS.metric, FLAGS.step,
                         FLAGS.allow_different_steps, FLAGS.set, FLAGS.direction)
  except UserError as e:
    cli.fail(str(e))
  print(format_table(comparison))
  print(json.dumps({'metric': comparison.metric, 'lower_is_better': comparison.lower_is_better,
                    'groups': [
      {k: _json_safe(v) for k, v in row.items()} for row in comparison.rows()]}), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
