"""EMA against hand computations and optax.ema; schedules and optimizers."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.data import datasets
from cifar_jax.training import builder, schedules, train_state
from tests.conftest import tiny_config

TF_EMA = train_state.EmaOptions('tensorflow', 0.9999)


def _params_sequence(n):
  rng = np.random.default_rng(0)
  return [{'w': rng.normal(size=(3,)).astype(np.float32)} for _ in range(n)]


def test_tensorflow_ema_matches_hand_computation():
  # TF: ExponentialMovingAverage(0.9999, num_updates=global_step); shadow
  # starts at the initial value; after update t, decay = min(d, (1+t)/(10+t)).
  initial = {'w': np.array([1.0, -2.0, 0.5], np.float32)}
  ema = initial
  expected = initial['w'].astype(np.float64)
  for t, params in enumerate(_params_sequence(30), start=1):
    ema = train_state.update_ema(ema, params, jnp.asarray(t), TF_EMA)
    decay = min(0.9999, (1 + t) / (10 + t))
    expected = decay * expected + (1 - decay) * params['w']
    np.testing.assert_allclose(ema['w'], expected, rtol=1e-5, atol=1e-6)
  assert float(train_state.ema_decay(jnp.asarray(1), 'tensorflow', 0.9999)) == pytest.approx(
      2 / 11)
  assert float(train_state.ema_decay(jnp.asarray(10**6), 'tensorflow', 0.9999)) == (
      pytest.approx(0.9999))


@pytest.mark.parametrize('decay', [0.9, 0.999])
def test_debiased_ema_equals_optax_ema_with_debias(decay):
  sequence = _params_sequence(40)
  transform = optax.ema(decay, debias=True)
  optax_state = transform.init(sequence[0])
  ema = {'w': np.zeros(3, np.float32)}  # the starting value does not matter
  biased = np.zeros(3)
  for t, params in enumerate(sequence, start=1):
    expected, optax_state = transform.update(params, optax_state)
    ema = train_state.update_ema(ema, params, jnp.asarray(t),
                                 train_state.EmaOptions('optax_debiased', decay))
    # optax evaluates 1 - decay**t in float32, hence the looser tolerance.
    np.testing.assert_allclose(ema['w'], expected['w'], rtol=1e-3, atol=1e-5)
    biased = decay * biased + (1 - decay) * params['w']
    np.testing.assert_allclose(ema['w'], biased / (1 - decay**t), rtol=1e-5, atol=1e-6)


def test_unknown_ema_kind_is_rejected():
  with pytest.raises(UserError, match='ema.kind'):
    validation.validate(tiny_config(**{'ema.kind': 'polyak'}))


def test_staircase_schedule_is_the_tutorials():
  config = tiny_config(learning_rate=0.1, schedule=ml_collections.ConfigDict(
      {'name': 'staircase_exponential', 'decay_factor': 0.1, 'epochs_per_decay': 350.0}))
  schedule = schedules.of_config(config, 50_000, 128)
  decay_steps = int(50_000 / 128 * 350)  # 136,718 as in cifar10.py
  assert float(schedule(0)) == pytest.approx(0.1)
  assert float(schedule(decay_steps - 1)) == pytest.approx(0.1)
  assert float(schedule(decay_steps)) == pytest.approx(0.01)
  assert float(schedule(2 * decay_steps)) == pytest.approx(0.001)


def test_warmup_cosine_schedule():
  config = tiny_config(learning_rate=0.4, num_train_steps=100, schedule=ml_collections.ConfigDict(
      {'name': 'warmup_cosine', 'warmup_epochs': 1.0}))
  schedule = schedules.of_config(config, 1000, 100)  # 10 steps per epoch
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-6)


def test_create_train_state_is_deterministic_and_ema_starts_at_params():
  config = tiny_config()
  split = datasets.load_split(config.dataset, 'train')
  a = builder.build(config, split).state
  b = builder.build(config, split).state
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.params, a.ema_params)
  assert int(a.step) == 0
  abstract = builder.build(config, num_classes=10).state
  assert jax.tree.map(lambda x: x.shape, abstract) == jax.tree.map(jnp.shape, a)


def test_unknown_optimizer_and_schedule():
  with pytest.raises(UserError, match='optimizer'):
    validation.validate(tiny_config(optimizer='adam'))
  with pytest.raises(UserError, match='schedule.name'):
    validation.validate(tiny_config(**{'schedule.name': 'step'}))


def test_lookahead_by_hand():
  """airbench94's LookaheadState: every k steps slow += (1 - d)(net - slow), net = slow."""
  options = train_state.LookaheadOptions(every_steps=2, decay_base=0.5, decay_power=1.0,
                                         num_train_steps=4)
  lookahead = {'params': {'w': jnp.asarray(1.0)}, 'batch_stats': {'m': jnp.asarray(2.0)}}
  state = train_state.TrainState(step=jnp.asarray(0), params={'w': jnp.asarray(1.0)},
                                 batch_stats={'m': jnp.asarray(2.0)}, opt_state=(),
                                 ema_params={}, lookahead=lookahead, rng=jnp.zeros(2))
  slow_w, slow_m = 1.0, 2.0
  for step, (w, m) in enumerate([(3.0, 4.0), (5.0, 6.0), (7.0, 8.0), (9.0, 10.0)], start=1):
    state = train_state.apply_lookahead(
        state.replace(step=jnp.asarray(step), params={'w': jnp.asarray(w)},
                      batch_stats={'m': jnp.asarray(m)}), options)
    if step % 2 == 0:
      decay = 0.5 * step / 4
      slow_w += (1 - decay) * (w - slow_w)
      slow_m += (1 - decay) * (m - slow_m)
      w, m = slow_w, slow_m
    assert float(state.params['w']) == pytest.approx(w)
    assert float(state.batch_stats['m']) == pytest.approx(m)
    assert float(state.lookahead['params']['w']) == pytest.approx(slow_w)


def test_lookahead_ends_on_the_slow_copy():
  options = train_state.LookaheadOptions(every_steps=5)
  state = train_state.TrainState(
      step=jnp.asarray(7), params={'w': jnp.asarray(3.0)}, batch_stats={}, opt_state=(),
      ema_params={}, lookahead={'params': {'w': jnp.asarray(1.0)}, 'batch_stats': {}},
      rng=jnp.zeros(2))
  final = train_state.apply_lookahead(state, dataclasses.replace(options, num_train_steps=7))
  assert float(final.params['w']) == 1.0  # the original's last update(decay=1.0)
  assert float(train_state.apply_lookahead(
      state, dataclasses.replace(options, num_train_steps=8)).params['w']) == 3.0
