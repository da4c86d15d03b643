"""The ResNet families (cifar_jax/models/resnet.py, wide_resnet.py): structure, counts, training.

PyTorch's own models are the reference for the numbers (parameter counts,
logits, gradients: benchmarks/resnet_reference.py, run by
test_benchmark_scripts); here: the published counts, the shapes, the blocks
each depth builds, BatchNorm's statistics over the global batch on any
device layout and with replicas, bfloat16, and a resume through the trainer.
"""

import os
import re
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cifar_jax import experiment, models
from cifar_jax.models import layers
from cifar_jax.run import evaluate, train
from cifar_jax.training import builder, lifecycle
from tests.conftest import restore_latest, run_steps, tiny_family_config


def _count(name, image_size=32, **fields):
  model = models.model_class(name)(num_classes=10, **fields)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, image_size, image_size, 3))))
  return models.count_parameters(variables['params'])


@pytest.mark.parametrize('name, fields, count', [
    # kuangliu/pytorch-cifar's models (ResNet18 is the figure; the others PyTorch's
    # count of the same definitions, benchmarks/resnet_reference.torch_network).
    ('resnet', {}, 11_173_962),
    ('resnet', {'depth': 34}, 21_282_122),
    ('resnet', {'depth': 50}, 23_520_842),
    ('preact_resnet', {}, 11_171_146),
    ('preact_resnet', {'final_activation': True}, 11_171_146 + 2 * 512),
    # xternalz/WideResNet-pytorch: WRN-28-10 is the paper's 36.5M.
    ('wide_resnet', {'depth': 28, 'width_factor': 10}, 36_479_194),
    ('wide_resnet', {'depth': 16, 'width_factor': 4}, 2_748_890),
    ('wide_resnet', {'depth': 16, 'width_factor': 8}, 10_961_370),
])
def test_parameter_counts_are_the_pytorch_models(name, fields, count):
  assert _count(name, **fields) == count


def test_the_count_does_not_depend_on_the_image_size():
  """Global average pooling: any image size, the same weights."""
  assert _count('resnet', image_size=48, width=8) == _count('resnet', image_size=32, width=8)


@pytest.mark.parametrize('name, fields, blocks', [
    ('resnet', {'depth': 18}, {'layer1_1_conv2', 'layer4_1_conv2'}),
    ('resnet', {'depth': 50}, {'layer3_5_conv3', 'layer4_2_conv3'}),
    ('wide_resnet', {'depth': 16, 'width_factor': 2}, {'block3_1_conv2'}),
])
def test_depth_builds_the_blocks_and_shortcuts_of_the_original(name, fields, blocks):
  model = models.model_class(name)(num_classes=10, **fields)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  modules = set(params['params'])
  assert blocks <= modules
  shortcuts = sorted(m for m in modules if 'shortcut_conv' in m)
  if name == 'resnet' and fields['depth'] == 18:
    # The stride-2 first block of stages 2-4 (stage 1 keeps shape 64 -> 64).
    assert shortcuts == ['layer2_0_shortcut_conv', 'layer3_0_shortcut_conv',
                         'layer4_0_shortcut_conv']
  elif name == 'resnet':  # bottlenecks widen 64 -> 256 in stage 1 as well
    assert shortcuts[0] == 'layer1_0_shortcut_conv' and len(shortcuts) == 4
  else:
    assert shortcuts == ['block1_0_shortcut_conv', 'block2_0_shortcut_conv',
                         'block3_0_shortcut_conv']


def _tiny_model(recipe, **fields):
  """The model of tiny_family_config(recipe) (its init compiles once for the whole session)."""
  model_config = ml_collections.ConfigDict(dict(tiny_family_config(recipe).model))
  model_config.update(fields)
  return models.create_model(model_config, 10).clone(axis_name=None)


@pytest.mark.parametrize('recipe, fields, shape', [
    pytest.param('resnet18', {}, (3, 16, 16, 3), marks=pytest.mark.slow),
    pytest.param('preact_resnet18', {}, (3, 16, 16, 3), marks=pytest.mark.slow),
    pytest.param('wrn28_10', {}, (3, 16, 16, 3), marks=pytest.mark.slow),
    pytest.param('resnet18', {'stem': 'imagenet'}, (2, 48, 40, 1), marks=pytest.mark.slow),
])
def test_logits_are_float32_per_class_for_any_image_shape(recipe, fields, shape):
  model = _tiny_model(recipe, **fields)
  images = jax.random.normal(jax.random.key(1), shape)
  init_key, _ = jax.random.split(jax.random.PRNGKey(0))  # as create_train_state: a cache hit
  variables = jax.jit(model.init)(init_key, jnp.zeros((1, *shape[1:])))
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  logits, updated = apply(variables, images, train=True, mutable=('batch_stats',))
  assert logits.shape == (shape[0], 10) and logits.dtype == jnp.float32
  # Training moves the running statistics; evaluation reads them, each image on its own.
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(updated['batch_stats']),
                                            jax.tree.leaves(variables['batch_stats']),
                                            strict=True))
  evaluated = apply(variables, images, train=False)
  np.testing.assert_allclose(evaluated, apply(variables, images[::-1], train=False)[::-1],
                             rtol=1e-5, atol=1e-6)
  if recipe == 'wrn28_10':
    _assert_wide_resnet_initialisers(variables['params'])


def _assert_wide_resnet_initialisers(params):
  """xternalz's: conv N(0, 2 / fan_out) untruncated, linear U(+-1/sqrt(fan_in)) with bias 0,
  BatchNorm 1 and 0."""
  kernel = np.asarray(params['block3_0_conv2']['kernel'])  # 3x3x16x16
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 16)), rtol=0.06)
  assert np.abs(kernel).max() > 3 * kernel.std()  # untruncated, as torch's normal_
  fc = np.asarray(params['fc']['kernel'])  # 16 x 10
  bound = 1 / np.sqrt(16)
  assert np.abs(fc).max() <= bound and np.abs(fc).max() > 0.9 * bound
  assert np.all(np.asarray(params['fc']['bias']) == 0)
  assert np.all(np.asarray(params['bn']['scale']) == 1)
  assert np.all(np.asarray(params['bn']['bias']) == 0)


def test_the_resnet_initialisers_are_pytorchs_defaults():
  """kuangliu keeps PyTorch's defaults: conv and linear U(+-1/sqrt(fan_in)), linear bias too."""
  model = _tiny_model('resnet18')
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  assert shapes['linear']['bias'].shape == (10,) and 'bias' not in shapes['conv1']
  conv = layers.pytorch_conv(128, 3, dtype=jnp.float32, name='c')
  kernel = np.asarray(conv.kernel_init(jax.random.key(0), (3, 3, 128, 128)))
  bound = 1 / np.sqrt(3 * 3 * 128)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)
  assert conv.padding == ((1, 1), (1, 1))  # PyTorch's, not 'SAME' (see pytorch_conv)


@pytest.mark.parametrize('recipe, formulation', [
    pytest.param('resnet18', 'fast', marks=pytest.mark.slow),
    pytest.param('preact_resnet18', 'fast', marks=pytest.mark.slow),
    pytest.param('wrn28_10', 'fast', marks=pytest.mark.slow),
    pytest.param('wrn28_10', 'reference', marks=pytest.mark.slow)])
def test_batch_norm_uses_the_global_batch_on_four_devices(recipe, formulation):
  """The same losses, parameters and statistics on 1 and 4 devices (statistics over all 16)."""
  one, one_losses = run_steps(tiny_family_config(
      recipe, per_device_batch_size=16, **{'model.formulation': formulation}), 2)
  four, four_losses = run_steps(tiny_family_config(
      recipe, num_devices=4, per_device_batch_size=4, **{'model.formulation': formulation}), 2)
  np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((four.params, four.batch_stats)),
                  jax.tree.leaves((one.params, one.batch_stats)), strict=True):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  assert np.any(np.asarray(jax.tree.leaves(one.batch_stats)[0]) != 0)


@pytest.mark.slow
def test_replica_one_is_the_run_of_seed_one():
  """Each replica has its own BatchNorm statistics: replica 1 equals the single run of seed 1."""
  seed1, _ = run_steps(tiny_family_config('wrn28_10', seed=1), 2)
  both, _ = run_steps(tiny_family_config('wrn28_10', num_replicas=2), 2)
  jax.tree.map(lambda r, s: np.testing.assert_allclose(r[1], s, atol=1e-6, rtol=1e-5),
               (both.params, both.batch_stats), (seed1.params, seed1.batch_stats))


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_bfloat16_keeps_float32_parameters_statistics_and_loss():
  state, losses = run_steps(tiny_family_config('wrn28_10', **{'model.dtype': 'bfloat16'}), 2)
  assert {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))} == {
      jnp.dtype('float32')}
  assert all(np.isfinite(losses))


@pytest.mark.slow
def test_a_preact_resnet_trains_resumes_bit_identically_and_is_scored(tmp_path):
  straight_dir, interrupted_dir = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  config = tiny_family_config('preact_resnet18', num_train_steps=6, checkpoint_every_steps=3,
                              log_every_steps=2)
  straight = train.train_and_evaluate(config, straight_dir, evaluate_in_process=False)

  def on_log(done, _):
    if done == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(lifecycle.Preempted):
    train.train_and_evaluate(config, interrupted_dir, evaluate_in_process=False,
                             on_log=on_log)
  assert int(restore_latest(interrupted_dir, config).step) == 3  # the step after the signal
  resumed = train.train_and_evaluate(config, interrupted_dir, evaluate_in_process=False)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  # The evaluator and the notebook API build the same network from the saved config.
  scored = evaluate.evaluate(tiny_family_config('preact_resnet18', num_train_steps=6,
                                                **{'eval.run_once': True}),
                             straight_dir)
  assert 0 <= scored[6].precision_raw <= 1
  loaded = experiment.load_checkpoint(straight_dir)
  jax.tree.map(np.testing.assert_array_equal, loaded.state.params, straight.params)


def test_invalid_depths_and_stems_are_one_sentence():
  from cifar_jax.config import validation  # pylint: disable=g-import-not-at-top
  from cifar_jax.core.errors import UserError  # pylint: disable=g-import-not-at-top
  for recipe, field, value, words in [
      ('resnet18', 'depth', 20, 'use one of [18, 34, 50, 101, 152]'),
      ('resnet18', 'stem', 'big', "use one of ['cifar', 'imagenet']"),
      ('wrn28_10', 'depth', 20, 'depth 6n + 4'),
      ('wrn28_10', 'width_factor', 0, 'at least 1')]:
    config = tiny_family_config(recipe)
    config.model[field] = value
    with pytest.raises(UserError, match=re.escape(words)):
      validation.validate(config)


def test_the_recipes_resolve_their_epochs_and_pytorch_weight_decay():
  config = experiment.load_config('experiments/resnet18_jpeg.py', {})
  assert config.hyperparameter_form == 'pytorch' and config.weight_decay == 5e-4
  assert config.dataset.train_split == 'train[:4500]'
  resolved = builder.steps_from_epochs(config, 45_000 // 128)
  assert resolved.num_train_steps == 70_200  # 200 epochs of 351, as the docstring says
  wrn = experiment.load_config('experiments/wrn28_10.py', {})
  assert list(wrn.schedule.boundaries_epochs) == [60.0, 120.0, 160.0]
  assert isinstance(models.create_model(ml_collections.ConfigDict(dict(wrn.model)), 100),
                    models.WideResNet)
