"""The tutorial network: shapes, parameter count, initialisers, LRN against TF."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cifar_jax import models
from cifar_jax.errors import UserError


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


def test_registry_builds_by_name_and_rejects_unknown_names():
  model = models.create_model(ml_collections.ConfigDict({'name': 'tutorial_cnn'}), 10)
  assert isinstance(model, models.TutorialCNN)
  with pytest.raises(UserError, match='Unknown model'):
    models.create_model(ml_collections.ConfigDict({'name': 'resnet9000'}), 10)
  with pytest.raises(UserError, match='does not fit'):
    models.create_model(ml_collections.ConfigDict({'name': 'tutorial_cnn', 'depth': 3}), 10)
