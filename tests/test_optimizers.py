"""Optimizers: Muon against a hand computation, parameter groups, schedules, bad groups."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.training import builder, optimizers, schedules
from tests.conftest import tiny_airbench_config, tiny_family_config


def _numpy_newton_schulz(g, steps=3, eps=1e-7):
  a, b, c = 3.4445, -4.7750, 2.0315
  x = g / (np.linalg.norm(g) + eps)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if tall else x


def test_muon_update_is_a_hand_computation():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)  # HWIO, 6 outputs
  grads = [rng.normal(size=kernel.shape).astype(np.float32) for _ in range(2)]
  tx = optimizers.muon(lambda count: 0.24 * (1 - count / 10), momentum=0.6, nesterov=True)
  params = {'conv': jnp.asarray(kernel)}
  state = tx.init(params)
  expected, buffer = kernel.astype(np.float64), np.zeros(kernel.shape)
  for step, g in enumerate(grads):
    updates, state = tx.update({'conv': jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    # The original's Muon.step on PyTorch's [out, in, kh, kw] view of the kernel.
    buffer = 0.6 * buffer + g
    direction = g + 0.6 * buffer
    torch_view = lambda k: k.transpose(3, 2, 0, 1)  # noqa: E731
    expected_t = torch_view(expected) * (np.sqrt(6) / np.linalg.norm(expected))
    update = _numpy_newton_schulz(torch_view(direction).reshape(6, -1)).reshape(
        expected_t.shape)
    expected = (expected_t - 0.24 * (1 - step / 10) * update).transpose(2, 3, 1, 0)
    np.testing.assert_allclose(params['conv'], expected, rtol=2e-5, atol=2e-5)


def test_newton_schulz_of_a_tall_matrix_is_the_transpose_of_the_wide_one():
  g = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
  np.testing.assert_allclose(optimizers.newton_schulz(g, 3, (3.4445, -4.7750, 2.0315)),
                             optimizers.newton_schulz(g.T, 3, (3.4445, -4.7750, 2.0315)).T,
                             atol=1e-6)


def test_each_group_gets_its_learning_rate_and_weight_decay():
  """airbench94's first step, by the original's formulas (lr, wd per 1024 examples)."""
  config = tiny_airbench_config()
  batch, steps_per_epoch = 64, 8
  tx, default_lr = optimizers.create_optimizer(config, batch * steps_per_epoch, batch)
  params = {'whiten': {'kernel': jnp.full((2, 2, 3, 4), 0.5), 'bias': jnp.full((4,), 0.5)},
            'group1_conv1': {'kernel': jnp.full((3, 3, 4, 8), 0.5)},
            'group1_norm1': {'bias': jnp.full((8,), 0.5)}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  kilostep_scale = 1024 * (1 + 1 / (1 - 0.85))
  lr = 11.5 / kilostep_scale
  wd = 0.0153 * batch / kilostep_scale
  schedule0 = 0.2  # the warm-up starts at 0.2
  assert float(default_lr(0)) == pytest.approx(lr * schedule0)

  def first_nesterov_step(group_lr):  # momentum buffer = g: the step is (1 + m) g
    return -group_lr * schedule0 * (1 + 0.85) * (1.0 + wd / group_lr * 0.5)

  np.testing.assert_allclose(updates['whiten']['kernel'], 0.0)  # frozen
  np.testing.assert_allclose(updates['whiten']['bias'], first_nesterov_step(lr), rtol=1e-5)
  np.testing.assert_allclose(updates['group1_conv1']['kernel'], first_nesterov_step(lr),
                             rtol=1e-5)
  np.testing.assert_allclose(updates['group1_norm1']['bias'], first_nesterov_step(64 * lr),
                             rtol=1e-5)


def test_a_group_trained_for_some_epochs_stops_completely():
  config = tiny_airbench_config()
  tx, _ = optimizers.create_optimizer(config, 4 * 10, 10)  # 4 steps per epoch; 3 epochs
  params = {'whiten': {'kernel': jnp.zeros((2, 2, 3, 4)), 'bias': jnp.ones((4,))},
            'group1_norm1': {'bias': jnp.ones((8,))}}
  state = tx.init(params)
  biases, norm_biases = [], []
  for _ in range(14):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    biases.append(float(params['whiten']['bias'][0]))
    norm_biases.append(float(params['group1_norm1']['bias'][0]))
  assert biases[11] < biases[10]  # step 12 (the last of 3 epochs) still moves it
  assert biases[11] == biases[12] == biases[13]  # then no step, no decay, no momentum
  assert norm_biases[13] < norm_biases[12] < norm_biases[11]


def test_muon_recipe_puts_conv_filters_in_muon_and_the_rest_in_sgd():
  config = tiny_airbench_config(muon=True)
  state = builder.build(config, num_classes=10).state
  labels = optimizers.group_labels(config, state.params)
  assert labels['group2_conv2']['kernel'] == 'filters'
  assert labels['whiten'] == {'kernel': 'whiten_kernel', 'bias': 'whiten_bias'}
  assert labels['group3_norm1']['bias'] == 'norm_biases'
  assert labels['head']['kernel'] == 'default'


def test_linear_warmup_decay_is_airbenchs_schedule():
  schedule = schedules.linear_warmup_decay(2.0, 100, 0.23, 0.2, 0.07)
  for step in (0, 10, 22, 23, 50, 99, 100):
    if step < 23:
      frac = step / 23
      expected = 0.2 * (1 - frac) + 1.0 * frac
    else:
      frac = (step - 23) / 77
      expected = 1.0 * (1 - frac) + 0.07 * frac
    assert float(schedule(step)) == pytest.approx(2.0 * expected, rel=1e-6)


@pytest.mark.parametrize('groups, message', [
    ({'a': {'params': ('head/kernel',), 'optimizer': 'adam'}}, r"Unknown optimizer 'adam'"),
    ({'a': {'params': ('head/kernel',), 'learning_rat': 0.1}}, r'unknown fields'),
    ({'a': {'params': ('nothing/*',)}}, r'matches no parameter'),
    ({'a': {'params': ('head/*',)}, 'b': {'params': ('*/kernel',)}}, r'in optimizer groups'),
    ({'a': {'params': ()}}, r'params is empty'),
    ({'a': {'params': ('head/kernel',), 'optimizer': 'muon', 'weight_decay': 0.1}},
     r'no weight decay'),
    ({'a': {'params': ('head/kernel',), 'schedule_over': 'epochs'}}, r'schedule_over'),
])
def test_bad_groups_are_refused(groups, message):
  config = tiny_airbench_config()
  config.optimizer_groups = ml_collections.ConfigDict(groups)
  with pytest.raises(UserError, match=message):
    validation.validate(config)


def test_the_pytorch_form_is_torch_sgds_weight_decay_for_two_steps():
  """PyTorch's SGD(lr, momentum, nesterov, weight_decay) by its formulas, two steps by hand:
  g' = g + wd p;  buf = m buf + g';  p -= lr (g' + m buf)."""
  config = ml_collections.ConfigDict(tiny_family_config().to_dict())
  config.schedule = ml_collections.ConfigDict({'name': 'constant'})
  tx, _ = optimizers.create_optimizer(config, 1280, 128)
  lr, m, wd = 0.1, 0.9, 5e-4
  p = np.array([0.5, -2.0, 3.0], np.float64)
  g = [np.array([1.0, 0.25, -0.5]), np.array([-0.3, 0.1, 0.2])]
  params = {'w': jnp.asarray(p, jnp.float32)}
  state = tx.init(params)
  buf = np.zeros(3)
  for grad in g:
    updates, state = tx.update({'w': jnp.asarray(grad, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    decayed = grad + wd * p
    buf = m * buf + decayed
    p = p - lr * (decayed + m * buf)
    np.testing.assert_allclose(params['w'], p, rtol=1e-6)


def test_piecewise_constant_lowers_the_rate_on_the_first_step_of_each_boundary_epoch():
  """PyTorch's MultiStepLR(milestones=[2, 3], gamma=0.2), stepped per epoch, at 10 steps/epoch."""
  config = ml_collections.ConfigDict(tiny_family_config().to_dict())
  config.schedule = ml_collections.ConfigDict({
      'name': 'piecewise_constant', 'boundaries_epochs': (2.0, 3.0), 'decay_factor': 0.2})
  schedule = schedules.of_config(config, num_train_examples=1280,
                             global_batch_size=128)
  rates = [float(schedule(step)) for step in (0, 19, 20, 29, 30, 100)]
  np.testing.assert_allclose(rates, [0.1, 0.1, 0.02, 0.02, 0.004, 0.004], rtol=1e-6)
  for boundaries, words in [((3.0, 2.0), 'increasing'), ((-1.0,), 'not negative'),
                            ((), 'tuple of numbers')]:
    config.schedule.boundaries_epochs = boundaries
    with pytest.raises(UserError, match=words):
      validation.validate(config)


def test_the_schedules_a_sweep_can_scale_are_optaxs():
  """The staircase is optax's bit for bit; warmup_cosine (peak x shape) after its warm-up too."""
  counts = jnp.arange(0, 2_000, dtype=jnp.int32)
  staircase = schedules.staircase_exponential(0.1, 350, 0.1)
  reference = optax.exponential_decay(0.1, transition_steps=350, decay_rate=0.1, staircase=True)
  np.testing.assert_array_equal(jax.vmap(staircase)(counts), jax.vmap(reference)(counts))
  config = ml_collections.ConfigDict(tiny_family_config().to_dict())
  config.learning_rate, config.num_train_steps = 0.4, 1_000
  config.schedule = ml_collections.ConfigDict({'name': 'warmup_cosine', 'warmup_epochs': 3.0})
  ours = schedules.of_config(config, num_train_examples=12_800,
                         global_batch_size=128)  # 100 steps per epoch
  theirs = optax.warmup_cosine_decay_schedule(0.0, 0.4, warmup_steps=300, decay_steps=1_000)
  ours, theirs = np.asarray(jax.vmap(ours)(counts)), np.asarray(jax.vmap(theirs)(counts))
  np.testing.assert_array_equal(ours[300:], theirs[300:])
  # In the warm-up optax draws its line to the peak, this one to 1 and scales it: float32 rounding.
  np.testing.assert_allclose(ours[:300], theirs[:300], rtol=1e-5, atol=0)
  assert np.any(ours[:300] != theirs[:300])


def test_a_given_top_level_field_that_groups_keep_their_own_of_is_said(caplog):
  from cifar_jax.training import builder  # pylint: disable=g-import-not-at-top
  from experiments import airbench94_muon  # pylint: disable=g-import-not-at-top
  config = airbench94_muon.get_config()
  builder.respect_given_fields(config, {'learning_rate', 'optimizer_groups.filters.learning_rate',
                                        'momentum'})
  lines = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert lines == [
      f'config.learning_rate={config.learning_rate}, as given, applies outside the optimizer '
      'groups that set their own (norm_biases, whiten_bias); set '
      'config.optimizer_groups.NAME.learning_rate to change theirs.',
      f'config.momentum={config.momentum}, as given, applies outside the optimizer groups that '
      'set their own (filters); set config.optimizer_groups.NAME.momentum to change theirs.']
  caplog.clear()
  builder.respect_given_fields(config, {'label_smoothing', 'optimizer_groups.filters.momentum'})
  assert not caplog.records
