"""The fast formulation's convolution (`models.convolutions`): XLA's function and gradients.

Each formulation is held to `lax.conv_general_dilated` with PyTorch's padding
and JAX's own derivative of it: in float64 to 1e-12 (the same sums, another
order), in float32 to its rounding, over sizes the formulations were not
written around (odd, tiny, non-square, one channel).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.models import convolutions, layers, resnet, wide_resnet


def _xla(x, kernel, stride):
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _value_and_grads(conv, x, kernel, weights):
  """The output and d(sum(weights * sin(output)))/d(x, kernel): a cotangent with structure."""
  def loss(x, kernel):
    y = conv(x, kernel)
    return jnp.sum(weights * jnp.sin(y)), y
  (_, y), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, kernel)
  return (y, *grads)


def _relative_error(got, want):
  return float(np.max(np.abs(np.asarray(got) - np.asarray(want)))
               / max(float(np.max(np.abs(np.asarray(want)))), 1e-30))


_slow = functools.partial(pytest.param, marks=pytest.mark.slow)
# (formulation, kernel size, stride, batch, height, width, C_in, C_out); the fast tier takes
# one of each kind.
CASES = [
    _slow('phases', 3, 2, 2, 8, 8, 3, 5),
    pytest.param('phases', 3, 2, 1, 7, 7, 4, 2),  # odd side: the last phase row is cut
    pytest.param('phases', 3, 2, 3, 5, 8, 1, 3),  # non-square, one input channel
    _slow('phases', 3, 2, 2, 8, 5, 2, 1),         # the other orientation, one output channel
    pytest.param('phases', 3, 2, 1, 1, 1, 2, 2),  # one pixel
    _slow('phases', 3, 2, 2, 2, 3, 3, 4),
    _slow('phases', 3, 2, 2, 16, 16, 8, 16),
    _slow('subsample', 1, 2, 2, 8, 8, 3, 5),
    pytest.param('subsample', 1, 2, 1, 7, 5, 4, 2),
    _slow('subsample', 1, 2, 2, 1, 1, 2, 3),
    pytest.param('subsample', 1, 3, 2, 7, 8, 2, 3),  # any stride
    _slow('subsample', 1, 1, 2, 4, 3, 2, 3),
    _slow('xla', 3, 1, 2, 5, 6, 3, 4),
    _slow('xla', 3, 2, 2, 7, 6, 3, 4),
]


@pytest.mark.parametrize('formulation, k, stride, n, h, w, c_in, c_out', CASES)
def test_each_formulation_is_xlas_function_and_gradients_in_float64(
    formulation, k, stride, n, h, w, c_in, c_out):
  jax.config.update('jax_enable_x64', True)
  try:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (n, h, w, c_in), jnp.float64)
    kernel = jax.random.normal(keys[1], (k, k, c_in, c_out), jnp.float64)
    out = -(-h // stride), -(-w // stride)
    weights = jax.random.normal(keys[2], (n, *out, c_out), jnp.float64)
    got, want = (jax.jit(functools.partial(_value_and_grads, conv))(x, kernel, weights)
                 for conv in (functools.partial(convolutions.conv2d, stride=stride,
                                                formulation=formulation),
                              functools.partial(_xla, stride=stride)))
    for name, a, b in zip(('output', 'input gradient', 'kernel gradient'), got, want,
                          strict=True):
      assert a.shape == b.shape, name
      assert a.dtype == jnp.float64, name
      assert _relative_error(a, b) < 1e-12, name
  finally:
    jax.config.update('jax_enable_x64', False)


@pytest.mark.parametrize('formulation, k, stride, n, h, w, c_in, c_out',
                         [CASES[1].values, CASES[6].values, CASES[8].values])
def test_each_formulation_is_within_float32_rounding_of_xlas(
    formulation, k, stride, n, h, w, c_in, c_out):
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (n, h, w, c_in))
  kernel = jax.random.normal(keys[1], (k, k, c_in, c_out)) * 0.1
  weights = jax.random.normal(keys[2], (n, -(-h // stride), -(-w // stride), c_out))
  got = jax.jit(functools.partial(
      _value_and_grads, functools.partial(convolutions.conv2d, stride=stride,
                                          formulation=formulation)))(x, kernel, weights)
  want = jax.jit(functools.partial(
      _value_and_grads, functools.partial(_xla, stride=stride)))(x, kernel, weights)
  for a, b in zip(got, want, strict=True):
    assert _relative_error(a, b) < 1e-5


def test_a_formulation_that_does_not_apply_is_refused():
  x, kernel = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(ValueError, match='1x1'):
    convolutions.conv2d(x, kernel, 2, 'subsample')
  with pytest.raises(ValueError, match='3x3 stride-2'):
    convolutions.conv2d(x, kernel, 1, 'phases')
  with pytest.raises(ValueError, match='unknown'):
    convolutions.conv2d(x, kernel, 1, 'winograd')


def test_the_measured_table_names_formulations_that_apply_to_its_shapes():
  for (k, stride, side, c_in, c_out), formulation in convolutions.MEASURED.items():
    assert formulation in convolutions.FORMULATIONS[1:]
    convolutions._check(k, stride, formulation)  # raises where it would not apply
    assert convolutions.formulation_for(k, stride, side, c_in, c_out) == formulation
    assert min(side, c_in, c_out) >= 1
  assert convolutions.formulation_for(3, 2, 31, 64, 128) == 'xla'  # not measured: XLA's


@pytest.mark.parametrize('formulation', ['xla', 'subsample'])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_the_module_has_nn_conv_s_parameter_and_output(formulation, dtype):
  """Checkpoints and PyTorch weights load into either: the same parameter, initialised alike."""
  x = jax.random.normal(jax.random.key(2), (2, 6, 6, 3))
  ours = convolutions.Conv(4, 1, 2, kernel_init=layers.pytorch_default_uniform(), dtype=dtype,
                           formulation=formulation)
  flax_conv = nn.Conv(4, (1, 1), strides=(2, 2), padding=((0, 0), (0, 0)), use_bias=False,
                      kernel_init=layers.pytorch_default_uniform(), dtype=dtype)
  variables = ours.init(jax.random.key(3), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, flax_conv.init(jax.random.key(3), x))
  np.testing.assert_array_equal(variables['params']['kernel'],
                                flax_conv.init(jax.random.key(3), x)['params']['kernel'])
  got, want = ours.apply(variables, x), flax_conv.apply(variables, x)
  assert got.dtype == want.dtype == dtype
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6, atol=1e-6)


def test_the_module_takes_the_table_s_formulation_for_its_shape(monkeypatch):
  """A measured shape gets its formulation, any other XLA's; a non-square input XLA's."""
  chosen = []
  real = convolutions.conv2d
  monkeypatch.setattr(convolutions, 'conv2d',
                      lambda x, k, s, f: chosen.append(f) or real(x, k, s, f))
  monkeypatch.setitem(convolutions.MEASURED, (3, 2, 6, 3, 4), 'phases')
  conv = convolutions.Conv(4, 3, 2)
  for shape in [(1, 6, 6, 3), (1, 8, 8, 3), (1, 6, 8, 3)]:
    conv.init(jax.random.key(0), jnp.zeros(shape))
  assert chosen == ['phases', 'xla', 'xla']


def _tiny_measured_shapes(monkeypatch, convs):
  """Every strided convolution of a tiny network in the table, so that fast reaches them all."""
  for k, stride, side, c_in, c_out in convs:
    monkeypatch.setitem(convolutions.MEASURED, (k, stride, side, c_in, c_out),
                        'phases' if k == 3 else 'subsample')


@pytest.mark.slow  # (13 s each: the fast tier holds the formulations and the table's dispatch)
@pytest.mark.parametrize('family', ['resnet', 'preact', 'wrn'])
def test_the_fast_networks_convolutions_give_the_reference_logits_and_gradients(
    family, monkeypatch):
  """The networks' fast formulation through the measured passes against flax's nn.Conv."""
  if family == 'wrn':
    make = functools.partial(wide_resnet.WideResNet, depth=10, width_factor=1, stem_width=4,
                             axis_name=None)
    strided = [(3, 2, 12, 4, 8), (1, 2, 12, 4, 8), (3, 2, 6, 8, 16), (1, 2, 6, 8, 16)]
  else:
    cls = resnet.ResNet if family == 'resnet' else resnet.PreActResNet
    make = functools.partial(cls, depth=18, width=2, axis_name=None)
    strided = [(k, 2, side, c, 2 * c) for k in (1, 3)
               for side, c in ((12, 2), (6, 4), (3, 8))]
  _tiny_measured_shapes(monkeypatch, strided)
  images = jax.random.normal(jax.random.key(4), (3, 12, 12, 3))
  labels = jnp.array([0, 3, 7])
  fast, reference = make(formulation='fast'), make(formulation='reference')
  variables = reference.init(jax.random.key(5), images, train=False)

  def loss(model, params):
    logits, _ = model.apply({**variables, 'params': params}, images, train=True,
                            mutable=['batch_stats'])
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(3), labels])

  used = []
  real = convolutions.conv2d
  monkeypatch.setattr(convolutions, 'conv2d',
                      lambda x, k, s, f: used.append(f) or real(x, k, s, f))
  fast_loss, fast_grads = jax.jit(jax.value_and_grad(functools.partial(loss, fast)))(
      variables['params'])
  assert {'phases', 'subsample'} <= set(used)
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(functools.partial(loss, reference)))(
      variables['params'])
  np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-5)
  # The BatchNorms of fast sum in another order too: each gradient to float32 rounding of
  # the largest of its tensor.
  for path, g in jax.tree_util.tree_leaves_with_path(fast_grads):
    want = functools.reduce(lambda tree, key: tree[key.key], path, ref_grads)
    assert _relative_error(g, want) < 2e-4, jax.tree_util.keystr(path)


def test_phases_under_vmap_is_each_runs_own_convolution():
  """Replicas run vmapped over their own kernels (`replica_execution='vmap'`): each is XLA's."""
  keys = jax.random.split(jax.random.key(6), 3)
  x = jax.random.normal(keys[0], (2, 3, 6, 6, 2))  # [runs, N, H, W, C_in]
  kernels = jax.random.normal(keys[1], (2, 3, 3, 2, 4)) * 0.1
  weights = jax.random.normal(keys[2], (2, 3, 3, 3, 4))

  def each(conv):
    return jax.jit(jax.vmap(functools.partial(_value_and_grads, conv)))(x, kernels, weights)
  got = each(functools.partial(convolutions.conv2d, stride=2, formulation='phases'))
  want = each(functools.partial(_xla, stride=2))
  for a, b in zip(got, want, strict=True):
    assert _relative_error(a, b) < 1e-5
