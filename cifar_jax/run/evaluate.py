"""The evaluator process: scores every checkpoint of a WORKDIR once, as the trainer writes them.

The tutorial's `cifar10_eval.py` re-scored the same checkpoint forever. This
evaluator

* waits for the WORKDIR and then for finalised checkpoints (one started with
  the trainer, as a job script does, says once that it waits);
* scores each checkpoint at most once per test-time augmentation (and again
  when metrics or evaluation sets were added), also across restarts: what it
  has handled is recorded in WORKDIR/eval/metrics.jsonl;
* scores the run's evaluation split and every set of `config.eval.sets`
  (`eval_sets`: other splits, corrupted copies, out-of-distribution sets),
  all in the step's one record, each with its own line;
* reports and skips checkpoints that are unreadable, corrupt (their files
  differ from the checksums recorded when they were saved) or that the
  trainer deleted (`keep_checkpoints`) before they could be scored;
* stops by itself after the trainer's final checkpoint (WORKDIR/train_complete)
  or after `config.eval.timeout_secs` without a new checkpoint.

With `config.eval.run_once` it handles the latest checkpoint and returns
(`run_once`). The scoring itself is `scoring.Evaluator`'s.
"""

from __future__ import annotations

from collections.abc import Callable
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections

from cifar_jax.config import validation
from cifar_jax.core import layout, parallel, summaries
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.evaluation import eval_sets, metrics, scoring
from cifar_jax.training import builder
from cifar_jax.workdir import checkpoints


def handled_steps(eval_dir: str, tta: str = 'none', wanted: tuple[str, ...] = ()
                  ) -> dict[int, str]:
  """{step: status} of every checkpoint an evaluator already handled with this `tta`.

  A step scored with another test-time augmentation, or whose record lacks a
  key of `wanted` (a metric or an evaluation set added since), is not handled
  for this evaluator (re-scoring a run with `--config.eval.tta=...` or more
  metrics adds records); skipped steps (deleted, unreadable) are handled
  whatever the TTA.
  """
  return {int(record['step']): record['status']
          for record in summaries.read_records(os.path.join(eval_dir, layout.METRICS))
          if 'status' in record and (record['status'] != 'scored' or (
              record.get('tta', 'none') == tta and all(key in record for key in wanted)))}


def recorded_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Keys a record scored with `config` has: its metrics' and evaluation sets'."""
  return (*(metrics.result_name(name) for name in config.eval.get('metrics', ())),
          *(f'{name}/eval_seconds' for name in config.eval.get('sets', {}).keys()))


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[int, scoring.Result]:
  """Scores the checkpoints of WORKDIR as they appear; returns {step: result} of this run.

  Runs beside a trainer (`--mode=eval`) until the trainer's final step has
  been handled or no new checkpoint came for `config.eval.timeout_secs`.
  With `config.eval.run_once`, handles the latest checkpoint and returns.
  """
  validation.validate(config)
  workdir = os.path.abspath(workdir)
  if config.eval.run_once:
    if not os.path.isdir(workdir):
      raise UserError(f'Workdir {workdir} does not exist; start the trainer first or fix '
                      '--workdir.')
  else:
    _wait_for_workdir(workdir, config.eval)
  with _Scorer(config, workdir) as scorer:
    return run_once(scorer) if config.eval.run_once else _watch(scorer, config.eval)


def _wait_for_workdir(workdir: str, eval_config: ml_collections.ConfigDict) -> None:
  """Returns once WORKDIR exists; one line says it waits; fails after eval.timeout_secs."""
  started = time.time()
  if not os.path.isdir(workdir):
    summaries.print_line(f'waiting for {workdir} (the trainer creates it; up to '
                         f'{eval_config.timeout_secs:g} s)')
  while not os.path.isdir(workdir):
    waited = time.time() - started
    if waited >= eval_config.timeout_secs:
      raise UserError(f'Workdir {workdir} does not exist; start the trainer first or fix '
                      f'--workdir (waited {waited:.0f} s, config.eval.timeout_secs).')
    time.sleep(min(eval_config.poll_secs, eval_config.timeout_secs - waited))


class _Scorer:
  """The evaluator's state: the split on the devices, the restore target, what was handled."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    parallel.use_compilation_cache(config.compilation_cache_dir, workdir)
    self.eval_dir = layout.path(workdir, layout.EVAL)
    split = datasets.load_eval_split(config.dataset)
    # The evaluation images' shape: where it differs from the training images', the
    # checks (scoring.check_eval_split) refuse what the network cannot take.
    setup = builder.build(config, num_classes=split.num_classes, image_shape=split.image_shape)
    self.template = setup.state
    devices = parallel.select_devices(config.num_devices, config.eval.platform or None)
    logging.info('Evaluating on %d %s device(s): %d images of %r.', len(devices),
                 devices[0].platform, split.num_examples, config.dataset.eval_split)
    self.evaluator = scoring.Evaluator(config, split, setup.model, devices,
                                       probabilities=eval_sets.needs_probabilities(config))
    self.sets = eval_sets.load(config, setup.model, devices)
    self.writer = summaries.create_writer(self.eval_dir, jax.process_index() == 0, config, workdir)
    self.handled = handled_steps(self.eval_dir, config.eval.tta, recorded_keys(config))
    self.results: dict[int, scoring.Result] = {}
    self.set_scores: dict[int, dict[str, dict[str, float]]] = {}  # step -> set -> 'NAME/...'
    self.manager = None
    self._checked: dict[str, Any] | None = None  # the training-split info checked last

  def __enter__(self) -> _Scorer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.writer.close()
    if self.manager is not None:
      self.manager.close()

  def steps(self) -> list[int]:
    """The finalised checkpoint steps now in WORKDIR/checkpoints."""
    if self.manager is None:
      if not os.path.isdir(checkpoints.checkpoint_dir(self.workdir)):
        return []
      self.manager = checkpoints.create_manager(self.workdir, read_only=True)
    reload_steps(self.manager)
    return sorted(self.manager.all_steps())

  def skip(self, step: int, status: str, reason: str) -> None:
    logging.warning('Skipping checkpoint step %d: %s', step, reason)
    summaries.print_line(f'step {step}, skipped: {reason}')
    self.writer.write_record({'step': int(step), 'status': status, 'reason': reason,
                              'wall_time': time.time()})
    self.writer.flush()
    self.handled[step] = status

  def score(self, step: int) -> None:
    """Restores and scores one step (or records why it was skipped).

    The eval split is checked against what the checkpoint records of its
    training split (classes, image shape) before anything else is read.
    """
    loaded = self._read(step, lambda manager, step: checkpoints.load(
        manager, step, self.template, self.config, check=self._check_split))
    if loaded is None:
      return  # corrupt, gone or unreadable: reported
    state = loaded.state
    split = self.evaluator.split
    started = time.time()
    result = self.evaluator.score_state(state)
    extra = {'eval_seconds': time.time() - started}
    scored_sets = [eval_sets.score(eval_set, state, result, step) for eval_set in self.sets]
    for scored in scored_sets:
      extra.update(scored.scalars)
    scoring.report(self.writer, step, result, split, self.config.eval.num_misclassified_images,
                   extra, self.config.eval.calibration_bins)
    for scored in scored_sets:
      summaries.print_line(scored.line)
    self.results[step] = result
    self.set_scores[step] = {s.name: scored.scalars for s, scored in zip(self.sets, scored_sets,
                                                                        strict=True)}
    self.handled[step] = 'scored'

  def _check_split(self, saved_config: ml_collections.ConfigDict, trained: dict[str, Any]
                   ) -> None:
    """The eval split against what the checkpoint records of its training split (classes,
    image shape), before its arrays are read; a mismatch ends the evaluator."""
    del saved_config
    if trained != self._checked:
      scoring.check_eval_split(self.config, self.evaluator.split, trained)
      eval_sets.check_trained(self.sets, self.config, trained)
      self._checked = trained

  def _read(self, step: int, read: Callable[[Any, int], Any]) -> Any:
    """read(manager, step), or None after recording why the step is skipped."""
    try:
      return read(self.manager, step)
    except checkpoints.CorruptCheckpointError as e:
      self.skip(step, 'corrupt', str(e))
      return None
    except checkpoints.UnreadableCheckpointError as e:
      reload_steps(self.manager)
      if step not in self.manager.all_steps():
        self.skip(step, 'deleted', 'the trainer deleted it before it could be scored; raise '
                  'the trainer\'s config.keep_checkpoints to score every checkpoint')
      else:
        self.skip(step, 'unreadable', str(e))
      return None

  def report_never_seen(self, steps: list[int]) -> None:
    """Steps the trainer saved and deleted (keep_checkpoints) before this evaluator saw them."""
    try:
      earlier = checkpoints.read_earlier_steps(self.manager, steps[-1])
    except Exception:  # pylint: disable=broad-except
      return  # the latest checkpoint is unreadable; it is reported when scored
    for step in earlier:
      if step not in self.handled and step not in steps:
        self.skip(step, 'deleted', 'the trainer deleted it before the evaluator saw it; raise '
                  'the trainer\'s config.keep_checkpoints to score every checkpoint')


def run_once(scorer: _Scorer) -> dict[int, scoring.Result]:
  """Handles the latest checkpoint (if not yet handled with this TTA) and returns."""
  steps = scorer.steps()
  if not steps:
    raise UserError(f'{checkpoints.checkpoint_dir(scorer.workdir)} holds no finished checkpoint.')
  latest = steps[-1]
  if latest in scorer.handled:
    summaries.print_line(_already_handled(scorer, latest))
  else:
    scorer.score(latest)
  return scorer.results


def _already_handled(scorer: _Scorer, step: int) -> str:
  """The line that says `step` was handled before: its precision (or why it was skipped) and
  where its record is."""
  path = os.path.join(scorer.eval_dir, layout.METRICS)
  status = scorer.handled[step]
  if status != 'scored':
    return f'step {step} was already handled ({status}); its record is in {path}'
  tta = scorer.config.eval.tta
  (record, *_) = [r for r in reversed(summaries.read_records(path)) if r.get('step') == step
                  and r.get('status') == 'scored' and r.get('tta', 'none') == tta]
  raw = (f' (raw parameters: {record["precision_raw"]:.3f})'
         if record.get('precision_raw') is not None else '')
  return (f'step {step} was already scored: precision @ 1 = {record["precision"]:.3f}{raw}; '
          f'its record is in {path}')


def _watch(scorer: _Scorer, eval_config: ml_collections.ConfigDict
           ) -> dict[int, scoring.Result]:
  """Scores new checkpoints until the final one is handled or none came for timeout_secs."""
  last_new_checkpoint = time.time()
  while True:
    steps = scorer.steps()
    pending = [s for s in steps if s not in scorer.handled]
    if pending:
      last_new_checkpoint = time.time()
      scorer.report_never_seen(steps)
    for step in pending:
      scorer.score(step)
    final = checkpoints.final_step(scorer.workdir)
    if final is not None and final in scorer.handled:
      logging.info('Handled the final checkpoint (step %d); the evaluator stops.', final)
      return scorer.results
    if time.time() - last_new_checkpoint > eval_config.timeout_secs:
      summaries.print_line(
          f'no new checkpoint for {eval_config.timeout_secs} s; the evaluator stops')
      return scorer.results
    time.sleep(eval_config.poll_secs)


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

