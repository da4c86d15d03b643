"""The pure train step, the loop's calls, and the trainer end to end."""

import functools
import os
import re
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cifar_jax import models
from cifar_jax.core import layout, parallel, summaries
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.evaluation import scoring
from cifar_jax.run import evaluate, train
from cifar_jax.training import builder, lifecycle, loop, train_state, train_step
from cifar_jax.workdir import checkpoints
from tests.conftest import restore_latest, run_steps, tiny_airbench_config, tiny_config


def test_l2_penalty_is_the_tutorials_l2_loss():
  params = {'local3': {'kernel': np.array([[1.0, 2.0]])}, 'local4': {'kernel': np.array([3.0])},
            'conv1': {'kernel': np.array([100.0])}}
  # 0.004 * (1 + 4 + 9) / 2; conv1 is not decayed.
  assert float(train_step.l2_penalty(params, ('local3', 'local4'), 0.004)) == (
      pytest.approx(0.028))


def test_cross_entropy_with_label_smoothing_by_hand():
  logits = np.array([[2.0, 0.0, -1.0]])
  log_probs = logits - np.log(np.exp(logits).sum())
  assert float(train_step.cross_entropy_loss(logits, np.array([0]))) == pytest.approx(
      -log_probs[0, 0])
  smoothed = (0.9 + 0.1 / 3) * -log_probs[0, 0] + (0.1 / 3) * -(log_probs[0, 1] + log_probs[0, 2])
  assert float(train_step.cross_entropy_loss(logits, np.array([0]), 0.1)) == pytest.approx(
      smoothed)


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
  config = tiny_config(learning_rate=0.3)
  config.augment.random_contrast = False
  config.augment.flip_left_right = False
  config.augment.max_brightness_delta = 0.0
  _, losses = run_steps(config, 25, fixed_indices=np.arange(16, dtype=np.int32)[None])
  # The tutorial net starts on a plateau near ln(10); 25 steps clearly leave it.
  assert losses[0] == pytest.approx(np.log(10) + 0.0, abs=0.1)
  assert losses[-1] < losses[0] - 0.25
  assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_train_and_evaluate_writes_everything(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  state = train.train_and_evaluate(tiny_config(), workdir)
  assert int(state.step) == 20
  manager = checkpoints.create_manager(workdir, read_only=True)
  assert manager.all_steps() == [10, 20]
  assert checkpoints.final_step(workdir) == 20
  train_metrics = summaries.read_records(os.path.join(workdir, 'metrics.jsonl'))
  assert [m['step'] for m in train_metrics] == [5, 10, 15, 20]
  assert {'loss', 'learning_rate', 'examples_per_sec', 'precision'} <= set(train_metrics[0])
  eval_metrics = summaries.read_records(os.path.join(workdir, 'eval', 'metrics.jsonl'))
  assert eval_metrics[0]['step'] == 20 and eval_metrics[0]['count'] == 200
  output = capsys.readouterr().out
  assert 'step 10, loss = ' in output and 'examples/sec; ' in output
  assert 'step 20, precision @ 1 = ' in output


def test_resume_continues_with_identical_state(tmp_path):
  interrupted = str(tmp_path / 'interrupted')
  train.train_and_evaluate(tiny_config(num_train_steps=10), interrupted, evaluate_in_process=False)
  resumed = train.train_and_evaluate(tiny_config(), interrupted, evaluate_in_process=False)
  straight = train.train_and_evaluate(tiny_config(), str(tmp_path / 'straight'),
      evaluate_in_process=False)
  assert int(resumed.step) == int(straight.step) == 20
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_resume_refuses_a_workdir_of_another_model(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_train_steps=10), workdir, evaluate_in_process=False)
  with pytest.raises(UserError, match='model.local3_features: 16 -> 32'):
    train.train_and_evaluate(tiny_config(**{'model.local3_features': 32}), workdir)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  good = train.train_and_evaluate(tiny_config(num_train_steps=10), workdir,
      evaluate_in_process=False)
  with pytest.raises(UserError, match='diverged.*step 10.*intact'):
    train.train_and_evaluate(tiny_config(learning_rate=1e30), workdir, evaluate_in_process=False)
  manager = checkpoints.create_manager(workdir, read_only=True)
  assert manager.latest_step() == 10
  restored = checkpoints.load(manager, 10, good, tiny_config()).state
  jax.tree.map(np.testing.assert_array_equal, restored, good)


def test_bad_inputs_end_in_one_sentence(tmp_path):
  a_file = tmp_path / 'file'
  a_file.write_text('')
  with pytest.raises(UserError, match='Cannot write to workdir'):
    train.train_and_evaluate(tiny_config(), str(a_file / 'sub'))
  with pytest.raises(UserError, match='per_device_batch_size is 0'):
    train.train_and_evaluate(tiny_config(per_device_batch_size=0), str(tmp_path / 'a'))
  with pytest.raises(UserError, match='fewer than one global batch'):
    train.train_and_evaluate(tiny_config(per_device_batch_size=1024), str(tmp_path / 'b'))


# ----------------------------------------------------------------------------
# airbench94: BatchNorm statistics, whitening, groups and lookahead in the same loop.


@pytest.mark.slow
def test_airbench_trains_resumes_bit_identically_and_is_scored_with_tta(tmp_path, capsys):
  straight_dir, interrupted_dir = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  config = tiny_airbench_config(num_train_steps=12, checkpoint_every_steps=5,
                                **{'lookahead.every_steps': 2})
  straight = train.train_and_evaluate(config, straight_dir)
  assert 'step 12, precision @ 1 = ' in capsys.readouterr().out
  records = summaries.read_records(os.path.join(straight_dir, 'eval', 'metrics.jsonl'))
  assert records[-1]['step'] == 12 and records[-1]['tta'] == 'mirror_translate'
  # SIGTERM at step 5: the next step (6) is saved and training stops; then resume.
  with pytest.raises(lifecycle.Preempted):
    train.train_and_evaluate(config, interrupted_dir, evaluate_in_process=False,
                             on_log=_sigterm_at(5))
  assert int(restore_latest(interrupted_dir, config).step) == 6
  resumed = train.train_and_evaluate(config, interrupted_dir, evaluate_in_process=False)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  assert set(straight.batch_stats) == {f'group{g}_norm{n}' for g in (1, 2, 3) for n in (1, 2)}
  assert np.any(straight.batch_stats['group1_norm1']['mean'] != 0)
  # The whitening filters are the ones computed at step 0, never trained.
  initial = builder.build(config, datasets.load_split(config.dataset, 'train')).state
  np.testing.assert_array_equal(straight.params['whiten']['kernel'],
                                initial.params['whiten']['kernel'])
  assert np.any(straight.params['whiten']['bias'] != initial.params['whiten']['bias'])
  # The evaluator process scores the final checkpoint with TTA, like the trainer did.
  scored = evaluate.evaluate(tiny_airbench_config(num_train_steps=12, **{'eval.run_once': True}),
                             interrupted_dir)
  assert scored[12].precision_raw == pytest.approx(records[-1]['precision_raw'])


def _sigterm_at(step):
  def on_log(done, _):
    if done == step:
      os.kill(os.getpid(), signal.SIGTERM)
  return on_log


# ----------------------------------------------------------------------------
# Checkpoint cadence by time.


@pytest.mark.slow  # (tier: docs/development.md#tests: waits on a clock)
def test_saves_by_time_as_well_as_by_steps(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(checkpoint_every_steps=8, checkpoint_every_secs=1, keep_checkpoints=100)
  train.train_and_evaluate(config, workdir, evaluate_in_process=False,
                           on_log=lambda step, _: time.sleep(1.1) if step in (5, 10) else None)
  manager = checkpoints.create_manager(workdir, read_only=True)
  steps = manager.all_steps()
  # 6 and 11: the first decisions after more than a second without a save (the log at 5
  # and 10 slept); 8 and 16 by steps; 20 the last. Steps 1-4 only if compiling took > 1 s.
  assert set(steps) - {1, 2, 3, 4} == {6, 8, 11, 16, 20}
  # Each checkpoint lists the ones before it, whatever the cadence.
  assert checkpoints.read_earlier_steps(manager, 20) == steps[:-1]


# ----------------------------------------------------------------------------
# Reduced precision.


def _float_dtypes(tree):
  return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.slow
def test_bfloat16_trains_close_to_float32_with_float32_state():
  fixed_batch = np.arange(16, dtype=np.int32)[None]
  no_augmentation = {'augment.random_contrast': False, 'augment.flip_left_right': False,
                     'augment.max_brightness_delta': 0.0, 'learning_rate': 0.3}
  state32, losses32 = run_steps(tiny_config(**no_augmentation), 25, fixed_batch)
  state16, losses16 = run_steps(tiny_config(**no_augmentation, **{'model.dtype': 'bfloat16'}),
                                25, fixed_batch)
  assert losses16[-1] < losses16[0] - 0.25  # it trains
  np.testing.assert_allclose(losses16, losses32, atol=0.05)  # like float32 does
  assert _float_dtypes(state16) == {jnp.dtype('float32')}  # params, optimizer, EMA
  airbench, _ = run_steps(tiny_airbench_config(**{'model.dtype': 'bfloat16'}), 3)
  assert _float_dtypes(airbench) == {jnp.dtype('float32')}  # BatchNorm statistics too
  del state32


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_a_bfloat16_run_is_scored_in_either_precision(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(**{'model.dtype': 'bfloat16'})
  train.train_and_evaluate(config, workdir, evaluate_in_process=False)
  state = restore_latest(workdir, config)
  split = datasets.load_split(config.dataset, config.dataset.eval_split)
  scores = {}
  for dtype in ('bfloat16', 'float32'):
    config_of_scoring = tiny_config(**{'model.dtype': dtype})
    model = models.create_model(config_of_scoring.model, split.num_classes)
    scores[dtype] = scoring.Evaluator(config_of_scoring, split, model,
                                      parallel.select_devices(1)).score_state(state)
  assert scores['bfloat16'].count == scores['float32'].count == 200
  # Rounding flips a few close calls at most.
  assert np.mean(scores['bfloat16'].lead.predictions != scores['float32'].lead.predictions) < 0.05


# ----------------------------------------------------------------------------
# Several steps per device call.


def test_steps_per_call_steps_of_each_call_end_on_every_cadence():
  # steps_per_call 4; the log every 5, checkpoints and histograms every 10, evaluation every 6.
  calls = [call.num_steps for call in loop.plan_calls(0, 20, 4, [5, 10, 10, 6, 0])]
  # Call ends: 4 5 | 6 | 10 | 12 | 15 | 18 | 20 (4 at most, never across 5, 6, 10, 12, ...).
  assert calls == [4, 1, 1, 4, 2, 3, 3, 2]


@pytest.mark.slow
def test_several_steps_per_call_give_the_same_run_as_one(tmp_path):
  config = functools.partial(tiny_config, eval_every_steps=10, schedule=ml_collections.ConfigDict(
      {'name': 'warmup_cosine', 'warmup_epochs': 0.0}), **{'ema.kind': 'optax_debiased'})

  def run(name, steps_per_call):
    workdir = str(tmp_path / name)
    state = train.train_and_evaluate(config(steps_per_call=steps_per_call), workdir)
    records = summaries.read_records(os.path.join(workdir, layout.METRICS))
    evaluations = summaries.read_records(os.path.join(workdir, 'eval', layout.METRICS))
    steps = checkpoints.create_manager(workdir, read_only=True).all_steps()
    return state, records, [r['step'] for r in evaluations], steps

  one, one_records, one_evaluations, one_checkpoints = run('one', 1)
  four, four_records, four_evaluations, four_checkpoints = run('four', 4)
  # A step inside a call is fused differently: float32 rounding apart, the same run.
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
  jax.tree.map(close, four, one)
  assert int(four.step) == 20
  assert [r['step'] for r in four_records] == [r['step'] for r in one_records] == [5, 10, 15, 20]
  for a, b in zip(four_records, one_records, strict=True):
    assert a['learning_rate'] == b['learning_rate']  # the schedule, step for step
    assert a['loss'] == pytest.approx(b['loss'], rel=1e-4)
  assert four_evaluations == one_evaluations == [10, 20]
  assert four_checkpoints == one_checkpoints == [10, 20]
  # Preempted inside a call of 4 (SIGTERM at the log of step 5: the next call is 6-9),
  # then resumed at step 9, which is no multiple of 4: bit-identical to not stopping (the
  # resumed run makes the same calls).
  workdir = str(tmp_path / 'preempted')
  with pytest.raises(lifecycle.Preempted) as stopped:
    train.train_and_evaluate(config(steps_per_call=4), workdir, on_log=_sigterm_at(5))
  assert stopped.value.step == 9
  resumed = train.train_and_evaluate(config(steps_per_call=4), workdir)
  jax.tree.map(np.testing.assert_array_equal, resumed, four)


# ----------------------------------------------------------------------------
# Several runs in one program (config.num_replicas).


@pytest.mark.slow
def test_replicas_resume_bit_identically_and_each_is_scored(tmp_path, capsys):
  config = functools.partial(tiny_config, num_replicas=3, eval_every_steps=0)
  straight_dir, interrupted_dir = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  straight = train.train_and_evaluate(config(), straight_dir)
  output = capsys.readouterr().out
  assert re.search(r'step 20, loss = [\d.]+ \(mean of 3 runs; [\d.]+ examples/sec', output)
  assert re.search(r'step 20, precision @ 1 = [\d.]+ ± [\d.]+ \(n=3, 95% CI; raw parameters: ',
                   output)
  train.train_and_evaluate(config(num_train_steps=10), interrupted_dir, evaluate_in_process=False)
  resumed = train.train_and_evaluate(config(), interrupted_dir, evaluate_in_process=False)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  # One record with every replica's precision; each is what that run alone scores.
  (record,) = summaries.read_records(os.path.join(straight_dir, 'eval', layout.METRICS))
  split = datasets.load_split(config().dataset, 'test')
  alone = scoring.Evaluator(tiny_config(), split, models.create_model(config().model, 10),
                            parallel.select_devices(1))
  for r in range(3):
    single = alone.score_state(train_state.replica(straight, r))
    assert record[f'precision/replica_{r}'] == single.precision
    assert record[f'precision_raw/replica_{r}'] == single.precision_raw
  assert record['precision'] == pytest.approx(np.mean([record[f'precision/replica_{r}']
                                                       for r in range(3)]))
  assert record['num_replicas'] == 3 and record['count'] == 200
