"""Models: the tutorial network (shapes, initialisers, LRN against TF) and airbench94."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cifar_jax import models
from cifar_jax.config import validation
from cifar_jax.core import parallel
from cifar_jax.core.errors import UserError
from cifar_jax.models import layers
from tests.conftest import tiny_airbench_config, tiny_config


def _init(model, size=24):
  return jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))['params']


def test_tutorial_cnn_has_the_tutorials_parameter_count():
  params = _init(models.TutorialCNN(num_classes=10))
  assert models.count_parameters(params) == 1_068_298
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert shapes['conv1']['kernel'] == (5, 5, 3, 64)
  assert shapes['conv2']['kernel'] == (5, 5, 64, 64)
  assert shapes['local3']['kernel'] == (6 * 6 * 64, 384)
  assert shapes['local4']['kernel'] == (384, 192)
  assert shapes['logits']['kernel'] == (192, 10)


def test_initialisers_match_the_tutorial():
  params = _init(models.TutorialCNN(num_classes=10))
  for name, bias in [('conv1', 0.0), ('conv2', 0.1), ('local3', 0.1), ('local4', 0.1),
                     ('logits', 0.0)]:
    np.testing.assert_array_equal(params[name]['bias'], np.float32(bias))
  for name, stddev in [('conv2', 5e-2), ('local3', 0.04), ('logits', 1 / 192)]:
    kernel = np.asarray(params[name]['kernel'])
    # Truncated at two standard deviations, without variance correction.
    assert np.abs(kernel).max() <= 2 * stddev
    assert kernel.std() == pytest.approx(0.88 * stddev, rel=0.05)


def test_logits_shape_and_purity():
  model = models.TutorialCNN(num_classes=7, conv_features=8, local3_features=16,
                             local4_features=8)
  params = _init(model)
  images = jax.random.normal(jax.random.PRNGKey(1), (5, 24, 24, 3))
  logits = model.apply({'params': params}, images)
  assert logits.shape == (5, 7)
  np.testing.assert_array_equal(logits, model.apply({'params': params}, images))


def test_lrn_matches_tensorflow():
  tf = pytest.importorskip('tensorflow')
  x = np.random.default_rng(0).normal(size=(2, 5, 5, 16)).astype(np.float32) * 3
  expected = tf.nn.lrn(x, depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75).numpy()
  np.testing.assert_allclose(models.local_response_normalization(x), expected, rtol=1e-5,
                             atol=1e-6)
  expected = tf.nn.lrn(x, depth_radius=2, bias=2.0, alpha=0.1, beta=0.5).numpy()
  np.testing.assert_allclose(
      models.local_response_normalization(x, 2, 2.0, 0.1, 0.5), expected, rtol=1e-5, atol=1e-6)


def _with_model(**model):
  config = tiny_config()
  config.model = ml_collections.ConfigDict(model)
  return config


def test_registry_builds_by_name_and_rejects_unknown_names():
  model = models.create_model(ml_collections.ConfigDict({'name': 'tutorial_cnn'}), 10)
  assert isinstance(model, models.TutorialCNN)
  validation.validate(_with_model(name='tutorial_cnn'))  # every model field has a default
  with pytest.raises(UserError, match='Unknown model'):
    validation.validate(_with_model(name='resnet9000'))
  with pytest.raises(UserError, match='does not fit'):
    validation.validate(_with_model(name='tutorial_cnn', depth=3))


def _reference_pool(x, window, stride):
  return nn.max_pool(x, (window, window), (stride, stride), 'SAME')


@pytest.mark.parametrize('shape,window,stride', [
    ((3, 24, 24, 4), 3, 2), ((2, 12, 12, 5), 3, 2), ((2, 7, 9, 3), 3, 2), ((2, 8, 8, 2), 2, 2),
    ((1, 10, 11, 2), 5, 3)])
def test_fast_max_pool_matches_reduce_window_values_and_gradients_with_ties(shape, window,
                                                                          stride):
  rng = np.random.default_rng(0)
  # Rounded and ReLU-ed, so that most windows hold ties (zeros and repeats):
  # the gradient must go to the first maximum in row-major order.
  x = jnp.asarray(np.maximum(np.round(rng.normal(size=shape) * 2) / 2, 0), jnp.float32)
  weights = jnp.asarray(rng.normal(size=_reference_pool(x, window, stride).shape), jnp.float32)
  fast = models.max_pool(x, window, stride)
  np.testing.assert_array_equal(fast, _reference_pool(x, window, stride))
  grad = lambda pool: jax.grad(lambda v: jnp.vdot(pool(v, window, stride), weights))(x)  # noqa: E731
  # An input that is the maximum of several windows sums their gradients,
  # possibly in another order: equal up to float rounding, while a gradient
  # sent to the wrong element would be off by a whole weight.
  np.testing.assert_allclose(grad(models.max_pool), grad(_reference_pool), rtol=1e-6, atol=1e-6)


def test_fast_lrn_equals_the_power_formulation():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 64)) * 3
  fast = models.local_response_normalization(x)
  plain = models.local_response_normalization(x, rsqrt_for_three_quarters=False)
  np.testing.assert_allclose(fast, plain, rtol=2e-6, atol=1e-7)
  grads = [jax.grad(lambda v, f=f: jnp.sum(jnp.sin(
      models.local_response_normalization(v, rsqrt_for_three_quarters=f))))(x) for f in (1, 0)]
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_fast_formulation_gives_the_reference_logits_and_gradients():
  """The whole network, fast vs plain (reduce-window pooling, pow LRN), same parameters."""
  fast = models.TutorialCNN(num_classes=10)
  reference = models.TutorialCNN(num_classes=10, formulation='reference')
  params = _init(fast)
  images = jax.random.normal(jax.random.PRNGKey(2), (8, 24, 24, 3))
  labels = jnp.arange(8) % 10

  def loss(model, p):
    logits = model.apply({'params': p}, images)
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  np.testing.assert_allclose(fast.apply({'params': params}, images),
                             reference.apply({'params': params}, images), rtol=1e-5, atol=1e-6)
  fast_grads = jax.jit(jax.grad(functools.partial(loss, fast)))(params)
  reference_grads = jax.jit(jax.grad(functools.partial(loss, reference)))(params)
  for path, g in jax.tree_util.tree_flatten_with_path(fast_grads)[0]:
    expected = functools.reduce(lambda t, k: t[k.key], path, reference_grads)
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(
        expected))), err_msg=jax.tree_util.keystr(path))


def test_unknown_formulation_is_a_user_error():
  with pytest.raises(UserError, match='formulation'):
    validation.validate(_with_model(name='tutorial_cnn', formulation='turbo'))


# ----------------------------------------------------------------------------
# airbench94.


def _correlated_images(count=64, seed=0):
  """NHWC float images whose neighbouring pixels and channels are correlated."""
  rng = np.random.default_rng(seed)
  noise = rng.normal(size=(count, 33, 33, 3))
  images = noise[:, :32, :32] + 0.8 * noise[:, 1:, :32] + 0.5 * noise[:, :32, 1:]
  return (images @ np.array([[1.0, 0.6, 0.3], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])).astype(
      np.float32)


def test_whitened_patches_have_identity_covariance():
  images = _correlated_images()
  eps = 5e-4
  kernel = models.whitening_kernel(images, size=2, eps=eps)
  assert kernel.shape == (2, 2, 3, 24)
  np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
  whitened = jax.lax.conv_general_dilated(
      jnp.asarray(images), jnp.asarray(kernel[..., :12]), (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision='highest')
  flat = np.asarray(whitened, np.float64).reshape(-1, 12)
  covariance = flat.T @ flat / len(flat)
  patches = models.image_patches(images.astype(np.float64), 2)
  eigenvalues = np.linalg.eigvalsh(patches.T @ patches / len(patches))[::-1]
  # Exactly diag(lambda / (lambda + eps)) up to float32 rounding; ~identity.
  np.testing.assert_allclose(covariance, np.diag(eigenvalues / (eigenvalues + eps)), atol=2e-4)
  np.testing.assert_allclose(covariance, np.eye(12), atol=2e-3)


def test_dirac_init_makes_the_first_outputs_the_identity():
  kernel = models.dirac_init(models.pytorch_default_uniform())(jax.random.PRNGKey(0),
                                                                 (3, 3, 4, 6))
  for i in range(4):
    expected = np.zeros((3, 3, 4))
    expected[1, 1, i] = 1.0
    np.testing.assert_array_equal(kernel[..., i], expected)
  assert np.all(np.abs(kernel[..., 4:]) <= 1 / np.sqrt(36)) and np.any(kernel[..., 4:] != 0)


def test_batch_norm_by_hand_in_training_and_inference():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 2)) * 3.0 + 1.0
  norm = models.BatchNorm(momentum=0.6, epsilon=1e-12, axis_name=None)
  variables = norm.init(jax.random.PRNGKey(1), x, train=False)
  variables = {'params': {'bias': jnp.array([0.5, -0.5])},
               'batch_stats': variables['batch_stats']}
  y, updated = norm.apply(variables, x, train=True, mutable=['batch_stats'])
  flat = np.asarray(x, np.float64).reshape(-1, 2)
  mean, var = flat.mean(0), flat.var(0)
  np.testing.assert_allclose(y, (np.asarray(x) - mean) / np.sqrt(var) + [0.5, -0.5],
                             rtol=1e-5, atol=1e-5)
  stats = updated['batch_stats']
  np.testing.assert_allclose(stats['mean'], 0.4 * mean, rtol=1e-5)
  np.testing.assert_allclose(stats['var'], 0.6 + 0.4 * var * 36 / 35, rtol=1e-5)  # unbiased
  inference = norm.apply({'params': variables['params'], 'batch_stats': stats}, x, train=False)
  np.testing.assert_allclose(
      inference, (np.asarray(x) - 0.4 * mean) / np.sqrt(stats['var']) + [0.5, -0.5], rtol=1e-4,
      atol=1e-5)


@pytest.mark.parametrize('use_scale', [True, False])
def test_fast_batch_norm_gives_the_reference_outputs_statistics_and_gradients(use_scale):
  """The analytic backward (`layers.batch_norm_train`) against JAX's derivative of the plain one."""
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 5, 3, 6)) * 2.0 + 0.7
  fast, reference = (models.BatchNorm(momentum=0.9, epsilon=1e-5, use_scale=use_scale,
                                      axis_name=None, formulation=f)
                     for f in ('fast', 'reference'))
  variables = fast.init(jax.random.PRNGKey(1), x, train=True)
  params = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.PRNGKey(2), p.shape),
                        variables['params'])
  weights = jax.random.normal(jax.random.PRNGKey(3), x.shape)

  def loss(model, x, params):
    y, updated = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y) * weights), updated['batch_stats']

  (fast_loss, fast_stats), fast_grads = jax.value_and_grad(
      functools.partial(loss, fast), (0, 1), has_aux=True)(x, params)
  (ref_loss, ref_stats), ref_grads = jax.value_and_grad(
      functools.partial(loss, reference), (0, 1), has_aux=True)(x, params)
  # The fast statistics sum in another order (`layers._channel_sum`): rounding apart.
  np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), fast_stats, ref_stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               fast_grads, ref_grads)
  assert set(fast_grads[1]) == ({'bias', 'scale'} if use_scale else {'bias'})


def test_fast_batch_norm_differentiates_its_statistics_too():
  """A caller differentiating the batch mean and variance gets their exact gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 3)) * 1.5 + 0.3
  scale, bias = jnp.array([1.0, 2.0, 0.5]), jnp.array([0.1, 0.0, -0.2])

  def plain(x):
    mean = jnp.mean(x, (0, 1))
    var = jnp.mean(jnp.square(x - mean), (0, 1))
    y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias
    return y, mean, var

  def objective(norm):
    def f(x):
      y, mean, var = norm(x)
      return jnp.sum(y ** 3) + jnp.sum(mean * jnp.array([1.0, -2.0, 3.0])) + jnp.sum(var ** 2)
    return f

  fast = lambda x: layers.batch_norm_train(x, scale, bias, 1e-5, None)  # noqa: E731
  np.testing.assert_allclose(jax.grad(objective(fast))(x), jax.grad(objective(plain))(x),
                             rtol=2e-5, atol=2e-5)


def test_fast_batch_norm_sums_accurately_as_the_trainer_compiles_it():
  """Batch statistics and the backward's sums at PyTorch's float32 accuracy under the CPU option.

  Summing a whole [N, H, W, C] batch per channel in one XLA reduction is an order
  of magnitude less accurate under the trainer's compiler option (1.1e-6 to 3.6e-6 of the
  largest channel's value here); width, height, then the batch: <= 2.8e-7.
  """
  shape = (16, 32, 32, 64)
  x = (jax.random.normal(jax.random.PRNGKey(0), shape)
       + 0.05 * jax.random.normal(jax.random.PRNGKey(1), shape[-1:]))
  dy = (jax.random.normal(jax.random.PRNGKey(2), shape)
        + 0.05 * jax.random.normal(jax.random.PRNGKey(3), shape[-1:]))
  ones, zeros = jnp.ones(shape[-1]), jnp.zeros(shape[-1])

  def statistics_and_sums(x, dy):
    (_, mean, var), pullback = jax.vjp(
        lambda x, s, b: layers.batch_norm_train(x, s, b, 1e-5, None), x, ones, zeros)
    _, dscale, dbias = pullback((dy, jnp.zeros_like(mean), jnp.zeros_like(var)))
    return mean, var, dscale, dbias

  compiled = jax.jit(statistics_and_sums).lower(x, dy).compile(
      parallel.compiler_options('cpu'))
  x64, dy64 = np.asarray(x, np.float64).reshape(-1, 64), np.asarray(dy, np.float64).reshape(-1, 64)
  mean = x64.mean(0)
  var = np.square(x64 - mean).mean(0)
  x_hat = (x64 - mean) / np.sqrt(var + 1e-5)
  for got, want in zip(compiled(x, dy), (mean, var, (dy64 * x_hat).sum(0), dy64.sum(0)),
                       strict=True):
    assert np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)) < 5e-7


def test_max_pool_2x2_is_floor_mode_max_pooling():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 3))
  np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_airbench94_shapes_and_parameter_count():
  model = models.Airbench94()
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  # The original's 1,971,640 trainable-or-frozen weights (BatchNorm scales are constants).
  assert models.count_parameters(variables['params']) == 1_971_640
  assert set(variables['batch_stats']) == {f'group{g}_norm{n}' for g in (1, 2, 3) for n in (1, 2)}
  params = model.data_init(variables['params'], _correlated_images(8))
  logits = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                       jnp.zeros((2, 32, 32, 3)))
  assert logits.shape == (2, 10)


def test_airbench94_muon_head_has_unit_standard_deviation():
  model = models.Airbench94(widths=(8, 16, 16), head_init='unit_std')
  params = _init(model, 32)
  assert float(jnp.std(params['head']['kernel'], ddof=1)) == pytest.approx(1.0, rel=1e-5)


def test_airbench94_rejects_unknown_initialisations():
  config = tiny_airbench_config(**{'model.whiten_bias_init': 'ones'})
  with pytest.raises(UserError, match='whiten_bias_init'):
    validation.validate(config)


# ----------------------------------------------------------------------------
# Reduced precision.


@pytest.mark.parametrize('name, fields, size', [
    ('tutorial_cnn', {'conv_features': 16, 'local3_features': 32, 'local4_features': 16}, 24),
    pytest.param('airbench94', {'widths': (16, 32, 32), 'axis_name': None}, 32,
                 marks=pytest.mark.slow),
])
def test_bfloat16_computes_in_bfloat16_with_float32_parameters_and_logits(name, fields, size):
  def build(dtype):
    return models.create_model(ml_collections.ConfigDict({'name': name, 'dtype': dtype,
                                                          **fields}), 10)

  images = jax.random.normal(jax.random.PRNGKey(1), (8, size, size, 3))
  variables = jax.jit(build('float32').init)(jax.random.PRNGKey(0), images[:1])
  bf16_variables = jax.jit(build('bfloat16').init)(jax.random.PRNGKey(0), images[:1])
  # The same float32 parameters (and statistics) whatever the compute dtype.
  jax.tree.map(np.testing.assert_array_equal, bf16_variables, variables)
  assert {x.dtype for x in jax.tree.leaves(bf16_variables)} == {jnp.dtype('float32')}
  # Jitted: one compilation each instead of one per op.
  logits32 = jax.jit(build('float32').apply)(variables, images)
  apply16 = functools.partial(build('bfloat16').apply, capture_intermediates=True)
  logits16, intermediates = jax.jit(apply16)(variables, images)
  assert logits16.dtype == jnp.float32
  # Every layer in between computed in bfloat16 ...
  activations = [x for x in jax.tree.leaves(intermediates['intermediates'])
                 if x.dtype != jnp.float32]
  assert activations and {x.dtype for x in activations} == {jnp.dtype('bfloat16')}
  # ... and lands within bfloat16's precision (8 bits of mantissa: ~0.4% per rounding).
  scale = float(jnp.max(jnp.abs(logits32)))
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.05 * scale
  assert float(jnp.max(jnp.abs(logits16 - logits32))) > 0  # it did round


def test_unknown_dtype_is_a_user_error():
  with pytest.raises(UserError, match=r"Unknown config.model.dtype 'float16'; use one of"):
    validation.validate(_with_model(name='tutorial_cnn', dtype='float16'))
