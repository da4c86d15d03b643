"""Sweeps: points x seeds on the replica axis; run (p, s) is the single run of point p, seed s."""

import functools
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from cifar_jax import compare, experiment
from cifar_jax.config import validation
from cifar_jax.core import parallel, sweeps
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.evaluation import run_statistics, scoring
from cifar_jax.training import builder, train_state
from tests.conftest import run_steps, tiny_airbench_config, tiny_config

STEPS, BATCH = 4, 16


def _sweep(config, mode='zip', **fields):
  """`config` with config.sweep set from dotted names: _sweep(c, **{'ema.decay': (...)})."""
  sweep = {}
  for path, values in fields.items():
    *parents, leaf = path.split('.')
    target = sweep
    for parent in parents:
      target = target.setdefault(parent, {})
    target[leaf] = values
  config.sweep = ml_collections.ConfigDict(sweep)
  config.sweep_mode = mode
  return config


# Every numeric field the tutorial recipe and airbench94 use, two values each: the step must
# take them all as arrays, and each run must be its point's single run.
TUTORIAL_SWEEP = {
    'learning_rate': (0.05, 0.2), 'weight_decay': (0.0, 1e-3), 'l2_penalty': (0.004, 0.0),
    'label_smoothing': (0.0, 0.1), 'ema.decay': (0.99, 0.9), 'momentum': (0.9, 0.5),
    'augment.max_brightness_delta': (63.0, 0.0), 'augment.contrast_lower': (0.2, 0.5),
    'augment.contrast_upper': (1.8, 1.2), 'schedule.decay_factor': (0.1, 0.5)}
AIRBENCH_SWEEP = {
    'learning_rate': (11.5, 6.0), 'weight_decay': (0.0153, 0.0), 'momentum': (0.85, 0.9),
    'label_smoothing': (0.2, 0.0), 'lookahead.decay_base': (0.95**5, 0.5),
    'lookahead.decay_power': (3.0, 1.0), 'schedule.start_scale': (0.2, 0.5),
    'schedule.end_scale': (0.07, 0.2), 'optimizer_groups.norm_biases.lr_multiplier': (64.0, 8.0)}


def _make(name, **overrides):
  make = {'tutorial': tiny_config, 'airbench': tiny_airbench_config}[name]
  config = make(**overrides)
  if name == 'airbench':
    config.lookahead.every_steps = 2  # a lookahead update inside the four steps
  return config


def test_points_cross_in_sorted_field_order_and_zip_together():
  config = _sweep(tiny_config(num_replicas=2), 'cross', learning_rate=(0.1, 0.2),
                  **{'ema.decay': (0.9, 0.99, 0.999)})
  assert sweeps.points(config)[:4] == [
      {'ema.decay': 0.9, 'learning_rate': 0.1}, {'ema.decay': 0.9, 'learning_rate': 0.2},
      {'ema.decay': 0.99, 'learning_rate': 0.1}, {'ema.decay': 0.99, 'learning_rate': 0.2}]
  assert (sweeps.num_points(config), sweeps.num_runs(config)) == (6, 12)
  assert sweeps.run_seeds(config) == [0, 1] * 6  # run p * R + s has seed + s
  np.testing.assert_array_equal(sweeps.run_values(config)['learning_rate'],
                                np.float32([0.1, 0.1, 0.2, 0.2] * 3))
  zipped = _sweep(tiny_config(), 'zip', learning_rate=(0.1, 0.2), weight_decay=(0.0, 1e-4))
  assert sweeps.points(zipped) == [{'learning_rate': 0.1, 'weight_decay': 0.0},
                                   {'learning_rate': 0.2, 'weight_decay': 1e-4}]
  point = sweeps.point_config(zipped, 1)
  assert (point.learning_rate, point.weight_decay, dict(point.sweep)) == (0.2, 1e-4, {})
  assert sweeps.describe(sweeps.points(zipped)[1]) == 'learning_rate=0.2, weight_decay=0.0001'
  assert sweeps.points(tiny_config()) == [{}] and sweeps.num_runs(tiny_config()) == 1


def test_per_run_values_cut_into_each_points_seeds():
  assert sweeps.by_point([10, 11, 20, 21, 30, 31], 3) == [[10, 11], [20, 21], [30, 31]]
  assert sweeps.by_point((1, 2, 3), 1) == [(1, 2, 3)]
  with pytest.raises(ValueError, match='^5 runs do not divide into 2 sweep points.$'):
    sweeps.by_point([0] * 5, 2)


@pytest.mark.parametrize('fields, message', [
    ({'model.conv_features': (8, 16)},
     r'^config.sweep.model.conv_features cannot be swept \(it changes shapes or code, so its '
     r'settings cannot share one program\); the fields a sweep may vary are learning_rate, '
     r'.*; run separate runs and compare them \(python -m cifar_jax.compare\).$'),
    ({'per_device_batch_size': (8, 16)}, r'^config.sweep.per_device_batch_size cannot be swept '
                                         r'\(it changes shapes or code'),
    ({'schedule.epochs_per_decay': (1.0, 2.0)}, r'^config.sweep.schedule.epochs_per_decay cannot'),
    ({'learning_rat': (0.1, 0.2)}, r'^config.sweep.learning_rat cannot be swept \(there is no such '
                               r'field\)'),
    ({'optimizer_groups.nope.learning_rate': (0.1, 0.2)},
     r'^config.sweep.optimizer_groups.nope.learning_rate names no field of this config'),
    ({'learning_rate': 0.1}, r'^config.sweep.learning_rate is 0.1; it must be a tuple of one or '
                             r'more numbers.$'),
    ({'learning_rate': ()}, r'^config.sweep.learning_rate is \(\); it must be a tuple'),
    ({'ema.decay': (0.9, 1.5)}, r'^config.ema.decay is 1.5; it must be less than 1.0.$'),
    ({'learning_rate': (0.1,), 'ema.decay': (0.9,)},
     r'^config.sweep has a single point \(ema.decay=0.9, learning_rate=0.1\); set those fields '
     r'themselves and leave config.sweep empty, or give a field two or more values.$'),
])
def test_the_config_check_refuses_what_cannot_be_swept_in_one_line(fields, message):
  with pytest.raises(UserError, match=message):
    validation.validate(_sweep(tiny_config(), 'cross', **fields))


def test_zip_needs_equal_lengths_and_the_mode_must_be_known():
  with pytest.raises(UserError, match=r'^config.sweep_mode is zip but the swept fields have 2 '
                                      r'values \(learning_rate\), 3 values \(weight_decay\); '):
    validation.validate(_sweep(tiny_config(), 'zip', learning_rate=(0.1, 0.2),
                               weight_decay=(0.0, 1e-4, 1e-3)))
  with pytest.raises(UserError, match=r"^Unknown config.sweep_mode 'grid'; use one of "):
    validation.validate(_sweep(tiny_config(), 'grid', learning_rate=(0.1, 0.2)))
  validation.validate(_sweep(tiny_config(), 'cross', learning_rate=(0.1, 0.2),
                             weight_decay=(0.0, 1e-4, 1e-3)))


@functools.cache
def _single_run(name, point_json, seed, num_devices):
  config = _make(name, seed=seed, num_devices=num_devices,
                 per_device_batch_size=BATCH // num_devices)
  for path, value in json.loads(point_json).items():
    *parents, leaf = path.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  state, _ = run_steps(config, STEPS)
  return state


@pytest.mark.parametrize('name, num_devices, execution, seeds', [
    pytest.param('tutorial', 1, 'loop', 2, marks=pytest.mark.slow),
    pytest.param('tutorial', 4, 'vmap', 2, marks=pytest.mark.slow),
    pytest.param('airbench', 1, 'vmap', 1, marks=pytest.mark.slow),
    pytest.param('airbench', 4, 'loop', 1, marks=pytest.mark.slow)])
def test_run_p_s_is_the_single_run_of_point_p_with_seed_s(name, num_devices, execution, seeds):
  fields = TUTORIAL_SWEEP if name == 'tutorial' else AIRBENCH_SWEEP
  config = _sweep(_make(name, seed=5, num_replicas=seeds, replica_execution=execution,
                        num_devices=num_devices, per_device_batch_size=BATCH // num_devices),
                  'zip', **fields)
  validation.validate(config)
  swept, losses = run_steps(config, STEPS)
  assert np.shape(losses[0]) == (2 * seeds,)
  for p, point in enumerate(sweeps.points(config)):
    for s in range(seeds):
      # The swept values' arithmetic is float32 in the step, double in a single run's set-up;
      # vmap batches the convolutions: float32 rounding apart, equal (the replicas' standard).
      # (The optimizer states' trees may differ: a swept weight decay of 0 is a g += 0 x p
      # transformation the single run without decay does not have.)
      run, single = (train_state.replica(swept, p * seeds + s),
                     _single_run(name, json.dumps(point), 5 + s, num_devices))
      for field in ('step', 'params', 'batch_stats', 'ema_params', 'lookahead', 'rng'):
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-6),
                     getattr(run, field), getattr(single, field))
  # The points really differ: another learning rate gives other parameters.
  first, second = (jax.tree.leaves(train_state.replica(swept, r).params)[0] for r in (0, seeds))
  assert not np.allclose(first, second)


@pytest.mark.slow
def test_the_whole_sweep_is_one_compilation_with_its_values_as_arguments():
  config = _sweep(tiny_config(num_replicas=2), 'cross', learning_rate=(0.05, 0.1, 0.2))
  devices = parallel.select_devices(1)
  split = datasets.load_split(config.dataset, 'train')
  setup = builder.build(config, split, devices)
  np.testing.assert_array_equal(setup.run_values['learning_rate'],
                                np.float32([0.05, 0.05, 0.1, 0.1, 0.2, 0.2]))
  state = parallel.replicate(setup.state, devices)
  feed = setup.feed(split)
  for step in range(3):
    state, metrics = setup.parallel_steps(state, feed.data, setup.batches.indices(step))
  # Each run reports its own learning rate: the values entered the step as arrays.
  np.testing.assert_allclose(np.asarray(metrics['learning_rate'])[0, :, 0],
                             [0.05, 0.05, 0.1, 0.1, 0.2, 0.2], rtol=1e-6)
  mapped = setup.parallel_steps.args[0]  # the values are the last argument of the mapped step
  assert len(mapped._executables) == 1  # pylint: disable=protected-access


def _result(points, precisions):
  scores = tuple(scoring.Score(precision=p, loss=0.5, count=1000, confusion=np.zeros((2, 2)),
                               predictions=np.zeros(3)) for p in precisions)
  return scoring.Result(tta='none', ema=scores, raw=scores, headline='raw', has_ema=False,
                        points=tuple(points))


def test_the_evaluator_reports_each_point_with_its_mean_and_ci():
  points = [{'learning_rate': 0.05}, {'learning_rate': 0.1}, {'learning_rate': 0.2}]
  precisions = [0.90, 0.92, 0.94, 0.95, 0.91, 0.90]
  result = _result(points, precisions)
  by_hand = [run_statistics.Summary.of(precisions[i:i + 2]) for i in (0, 2, 4)]
  scalars = result.scalars()
  for p in range(3):
    assert scalars[f'point_precision/point_{p}'] == pytest.approx(by_hand[p].mean)
    assert scalars[f'point_precision_ci95/point_{p}'] == pytest.approx(by_hand[p].ci95)
  # The best point, 0.94 and 0.95: std 0.01 / sqrt(2), CI t(0.975, 1 dof) = 12.7062 times
  # std / sqrt(2) = 0.005.
  assert by_hand[1].mean == pytest.approx(0.945)
  assert by_hand[1].ci95 == pytest.approx(12.7062 * 0.005, rel=1e-4)
  lines = result.line(400).splitlines()
  assert lines[0] == 'step 400, precision @ 1 of 3 sweep points (no EMA parameters):'
  assert lines[2] == f'  * point 1 (learning_rate=0.1): {by_hand[1].text()}'
  assert lines[1].startswith('    point 0 (learning_rate=0.05): 0.9100 ± ')


def _write_sweep_record(workdir, points, precisions, step=426):
  os.makedirs(os.path.join(workdir, 'eval'))
  record = {'step': step, 'status': 'scored', 'tta': 'none', 'count': 5000,
            'precision': float(np.mean(precisions)), 'sweep_points': points,
            **{f'precision/replica_{r}': p for r, p in enumerate(precisions)}}
  with open(os.path.join(workdir, 'eval', 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps(record) + '\n')


def test_compare_on_a_sweep_is_a_table_by_point_with_the_best_against_the_runner_up(tmp_path):
  points = [{'learning_rate': 0.05, 'weight_decay': 0.0}, {'learning_rate': 0.1,
                                                           'weight_decay': 0.0},
            {'learning_rate': 0.2, 'weight_decay': 0.0}]
  precisions = [0.900, 0.902, 0.931, 0.933, 0.924, 0.926]
  workdir = str(tmp_path / 'sweep')
  _write_sweep_record(workdir, points, precisions)
  comparison = compare.compare([workdir])
  assert comparison.best == 1 and compare.runner_up(comparison) == 2
  by_hand = run_statistics.welch([0.931, 0.933], [0.924, 0.926])
  rows = comparison.rows()
  assert rows[1]['best'] and not rows[2]['best']
  assert rows[2]['p_value'] == pytest.approx(by_hand.p_value)
  assert rows[2]['difference'] == pytest.approx(-0.007)
  assert rows[0]['learning_rate'] == 0.05 and rows[0]['n'] == 2
  table = compare.format_table(comparison)
  assert '| 1* | 0.1 | 0 | 2 | 0.9320 ± ' in table
  assert (f'The best point (learning_rate=0.1, weight_decay=0) is significantly better than '
          f'the runner-up (learning_rate=0.2, weight_decay=0): +0.0070, Welch p = '
          f'{by_hand.p_value:.3g}.') in table
  assert 0.025 < by_hand.p_value < 0.05  # so Bonferroni over 2 comparisons calls it weak
  assert 'the evidence is weak (Bonferroni asks p < 0.025)' in table
  frame = experiment.compare(workdir)
  assert list(frame.index) == [g.name for g in comparison.groups]
  assert frame.loc['learning_rate=0.1, weight_decay=0', 'best']
  figure = experiment.plot_sweep(workdir)
  assert figure.axes[0].get_xlabel() == 'learning_rate'
  with pytest.raises(UserError, match=r'is a sweep of 3 points; compare its points on their '):
    compare.compare([workdir, workdir])


def _train(config, workdir, steps, evaluate=False):
  return experiment.train(config, workdir, num_steps=steps, evaluate_in_process=evaluate)


@pytest.mark.slow
def test_a_sweep_trains_scores_resumes_bit_identically_and_loads_by_point(tmp_path, capsys):
  config = _sweep(tiny_config(num_replicas=2, checkpoint_every_steps=2, eval_every_steps=0),
                  'cross', learning_rate=(0.05, 0.2))
  straight = _train(config, str(tmp_path / 'straight'), 4, evaluate=True)
  out = capsys.readouterr().out
  assert 'step 4, precision @ 1 of 2 sweep points (EMA parameters):' in out
  assert '(learning_rate=0.2): ' in out and '(n=2, 95% CI)' in out
  comparison = compare.compare([str(tmp_path / 'straight')])
  assert [g.point for g in comparison.groups] == sweeps.points(config)
  assert all(g.summary.n == 2 for g in comparison.groups)
  _train(config, str(tmp_path / 'resumed'), 2)
  resumed = _train(config, str(tmp_path / 'resumed'), 4)
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  checkpoint = experiment.load_checkpoint(str(tmp_path / 'resumed'), point=1, replica=0)
  assert (checkpoint.config.learning_rate, checkpoint.config.seed) == (0.2, 0)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.state,
               train_state.replica(resumed, 2))
  assert experiment.predict(checkpoint, np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 10)
  assert experiment.load_checkpoint(str(tmp_path / 'resumed'), point=0).num_replicas == 2
  with pytest.raises(UserError, match=r'holds a sweep of 2 points x 2 seeds; choose the point'):
    experiment.load_checkpoint(str(tmp_path / 'resumed'), replica=1)
  other = _sweep(tiny_config(num_replicas=2, checkpoint_every_steps=2), 'cross',
                 learning_rate=(0.05, 0.1))
  with pytest.raises(UserError, match=r'holds the runs of learning_rate=0.05; learning_rate=0.2, '
                                      r'but this config asks for learning_rate=0.05; '
                                      r'learning_rate=0.1; resuming would continue'):
    _train(other, str(tmp_path / 'resumed'), 6)
