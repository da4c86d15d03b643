"""Starting from trained weights (config.init_from): another run's, PyTorch's; frozen layers."""

import collections
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import zipfile

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from cifar_jax import experiment
from cifar_jax.config import overrides as overrides_lib
from cifar_jax.config import validation
from cifar_jax.core.errors import UserError
from cifar_jax.models import layers, torch_weights
from cifar_jax.training import freezing
from tests.conftest import REPO_ROOT, run_steps, tiny_config, tiny_family_config

TORCH_DATA = os.path.join(REPO_ROOT, 'tests', 'data', 'torch')
TORCH_PYTHON = os.environ.get('CIFAR_JAX_TORCH_PYTHON', '')
needs_torch = pytest.mark.skipif(
    not TORCH_PYTHON, reason='CIFAR_JAX_TORCH_PYTHON (a Python with torch) is not set')
HEAD = ('params/logits/bias', 'params/logits/kernel')


def _flat(tree):
  return {freezing.path_name(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope='module')
def source_run(tmp_path_factory):
  """A tiny tutorial network trained 20 steps on 10 synthetic classes."""
  workdir = str(tmp_path_factory.mktemp('source_run'))
  experiment.train(tiny_config(), workdir, evaluate_in_process=False)
  return workdir


def _finetune_config(source, **overrides):
  return tiny_config(**{'init_from': source, 'dataset.synthetic_num_classes': 4, 'seed': 3,
                        **overrides})


def test_a_run_starts_from_another_runs_weights_with_a_fresh_head(source_run, capsys):
  """Every tensor but the head (10 classes there, 4 here) is the source's EMA value, bit for
  bit; the head is the fresh one the run would have had; one line says so."""
  config = _finetune_config(source_run)
  validation.validate(config)
  start = experiment.load_pretrained(config)
  source = experiment.load_checkpoint(source_run)
  _, fresh = experiment.create_train_state(config, experiment.load_data(config))
  loaded = _flat({'params': start.state.params, 'batch_stats': start.state.batch_stats})
  expected = _flat({'params': source.state.ema_params, 'batch_stats': source.state.batch_stats})
  for name, value in loaded.items():
    if name in HEAD:
      np.testing.assert_array_equal(value, _flat({'params': fresh.params})[name])
    else:
      np.testing.assert_array_equal(value, expected[name])
  assert _flat(start.state.ema_params) == {} or all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start.state.ema_params),
                                           jax.tree.leaves(start.state.params), strict=True))
  out = capsys.readouterr().out
  assert (f'Loaded 8 of 10 tensors from run {source_run} at step 20 (EMA parameters); kept '
          'fresh: params/logits/bias, params/logits/kernel.') in out
  raw = experiment.load_pretrained(_finetune_config(f'{source_run}@10', init_parameters='raw'))
  at_10 = experiment.load_checkpoint(source_run, step=10)
  np.testing.assert_array_equal(raw.state.params['conv1']['kernel'],
                                at_10.state.params['conv1']['kernel'])
  probabilities = experiment.predict(start, experiment.load_data(config, 'eval').images[:5])
  assert probabilities.shape == (5, 4)


def test_a_head_over_as_many_other_classes_is_left_out_by_name(source_run, capsys):
  """Same number of classes: the head loads by shape, unless config.init_exclude names it."""
  same = tiny_config(init_from=source_run)
  source = experiment.load_checkpoint(source_run).state.ema_params
  np.testing.assert_array_equal(experiment.load_pretrained(same).state.params['logits']['kernel'],
                                source['logits']['kernel'])
  assert 'Loaded 10 of 10 tensors' in capsys.readouterr().out
  new_head = tiny_config(init_from=source_run, init_exclude=('logits',))
  _, fresh = experiment.create_train_state(new_head, experiment.load_data(new_head))
  start = experiment.load_pretrained(new_head)
  np.testing.assert_array_equal(start.state.params['logits']['kernel'],
                                fresh.params['logits']['kernel'])
  np.testing.assert_array_equal(start.state.params['local4']['kernel'],
                                source['local4']['kernel'])
  assert 'Loaded 8 of 10 tensors' in capsys.readouterr().out
  with pytest.raises(UserError, match=r"config.init_exclude has 'head', which matches no "
                                      r"parameter of config.model; its modules are \['conv1'"):
    validation.validate(tiny_config(init_from=source_run, init_exclude=('head',)))


@pytest.mark.parametrize('init_from, words', [
    ('{missing}', r'holds no checkpoints \(nor is it a \.pt / \.pth file\)'),
    ('{source}@7', r'names step 7 of .*, which has the checkpoints \[10, 20\]'),
    ('{missing}.pth', r"which does not exist; name a PyTorch state dict"),
    ('{source}@last', r"name a run as WORKDIR or WORKDIR@STEP \(a step number\)"),
])
def test_a_source_that_is_not_there_is_one_sentence(source_run, tmp_path, init_from, words):
  config = _finetune_config(init_from.format(source=source_run, missing=tmp_path / 'none'))
  with pytest.raises(UserError, match=words):
    validation.validate(config)
    experiment.load_pretrained(config)


def test_weights_of_another_network_are_one_sentence(source_run):
  wider = _finetune_config(source_run, **{'model.local3_features': 32})
  with pytest.raises(UserError, match=r'params/local3/bias has shape \(16,\) in run .* but '
                                      r'\(32,\) in config.model; start from a source of the '
                                      r'same network \(only the head may differ'):
    experiment.load_pretrained(wider)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_weights_that_match_nothing_are_one_sentence():
  airbench = tiny_config(__import__('experiments.airbench94_smoke').airbench94_smoke.get_config(),
                         init_from=os.path.join(TORCH_DATA, 'state_dict.pt'))
  with pytest.raises(UserError, match=r'No tensor of PyTorch file .*state_dict.pt matches '
                                      r'config.model by name and shape'):
    experiment.load_pretrained(airbench)


# ----------------------------------------------------------------------------
# PyTorch's files.


def _written_by_torch():
  """{name: what make_state_dicts.py gave torch.save} (values exact in every dtype)."""
  spec = importlib.util.spec_from_file_location(
      'make_state_dicts', os.path.join(TORCH_DATA, 'make_state_dicts.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return {name: module.tensor_values(name, shape).astype(
              np.float32 if dtype == 'bfloat16' else dtype)
          for name, (shape, dtype) in module.SHAPES.items()}


def test_a_pytorch_state_dict_is_read_as_torch_wrote_it_without_torch():
  """torch.save's zip of a training script's dict: the state dict inside it, 'module.' taken
  off, strided views, float16, bfloat16 and int64 as torch holds them (written by
  make_state_dicts.py with torch 2.13)."""
  state = torch_weights.read_state_dict(os.path.join(TORCH_DATA, 'state_dict.pt'))
  expected = _written_by_torch()
  assert sorted(state) == sorted(name.removeprefix('module.') for name in expected)
  for name, value in state.items():
    np.testing.assert_array_equal(value.astype(np.float64),
                                  expected[f'module.{name}'].astype(np.float64))
  assert state['half'].dtype == np.float16 and str(state['brain'].dtype) == 'bfloat16'
  assert state['bn1.num_batches_tracked'].dtype == np.int64
  variables, skipped = torch_weights.to_variables(state)
  np.testing.assert_array_equal(variables['params/conv1/kernel'],
                                expected['module.conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['params/linear/kernel'],
                                expected['module.linear.weight'].T)
  np.testing.assert_array_equal(variables['params/bn1/scale'], expected['module.bn1.weight'])
  np.testing.assert_array_equal(variables['batch_stats/bn1/var'],
                                expected['module.bn1.running_var'])
  assert skipped == ['bn1.num_batches_tracked', 'half', 'brain']


@needs_torch
def test_the_committed_pytorch_files_are_what_torch_writes_today(tmp_path):
  subprocess.run([TORCH_PYTHON, os.path.join(TORCH_DATA, 'make_state_dicts.py'), str(tmp_path)],
                 check=True, timeout=300)
  ours = torch_weights.read_state_dict(str(tmp_path / 'state_dict.pt'))
  committed = torch_weights.read_state_dict(os.path.join(TORCH_DATA, 'state_dict.pt'))
  assert ours.keys() == committed.keys()
  for name in ours:
    np.testing.assert_array_equal(ours[name], committed[name])


def _zip_with_pickle(path, obj):
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', pickle.dumps(obj, protocol=2))


def test_a_file_that_is_not_only_tensors_is_refused_not_run(tmp_path):
  """Unpickling runs no code it was not told of: another class is one sentence."""
  _zip_with_pickle(tmp_path / 'model.pt', collections.Counter(a=1))
  with pytest.raises(UserError, match=r'holds a Python object of class collections.Counter, not '
                                      r'only tensors; save the network\'s weights alone'):
    torch_weights.read_state_dict(str(tmp_path / 'model.pt'))
  _zip_with_pickle(tmp_path / 'numbers.pt', {'epoch': 3, 'acc': 0.5})
  with pytest.raises(UserError, match=r"holds a dict of \['acc', 'epoch'\], in which no single "
                                      'state dict of tensors was found'):
    torch_weights.read_state_dict(str(tmp_path / 'numbers.pt'))
  (tmp_path / 'legacy.pth').write_bytes(pickle.dumps({'a': 1}))
  with pytest.raises(UserError, match='not a PyTorch file of the format torch.save has written '
                                      'since PyTorch 1.6'):
    torch_weights.read_state_dict(str(tmp_path / 'legacy.pth'))


# A PyTorch reference network (benchmarks/resnet_reference.py, cifar_jax's module names) with
# random weights and statistics, saved under another layout's names, with its logits on random
# images in float32 and float64: `python -c WRITE_NETWORK OUT MODEL_JSON SIDE LAYOUT`.
WRITE_NETWORK = '''
import json, re, sys
sys.path.insert(0, 'benchmarks')
import numpy as np, torch
from resnet_reference import torch_network

LAYOUTS = {  # cifar_jax's module name (its block's 'layer2_0_' made 'layer2.0.') -> the original's
    'kuangliu': (('shortcut_conv$', 'shortcut.0'), ('shortcut_bn$', 'shortcut.1')),
    'torchvision': (('shortcut_conv$', 'downsample.0'), ('shortcut_bn$', 'downsample.1'),
                    ('^linear$', 'fc')),
}

def renamed(name, layout):
  module, leaf = name.rsplit('.', 1)
  module = re.sub(r'^(layer\\d)_(\\d+)_', r'\\1.\\2.', module)
  for pattern, replacement in LAYOUTS[layout]:
    module = re.sub(pattern, replacement, module)
  return module + '.' + leaf

out, model, side, layout = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
net = torch_network(model)
with torch.no_grad():
  for name, tensor in net.state_dict().items():
    if name.endswith('running_mean') or name.endswith('bias'):
      tensor.copy_(torch.randn_like(tensor) * 0.1)
    elif name.endswith('running_var'):
      tensor.copy_(torch.rand_like(tensor) + 0.5)
net.eval()
images = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1)) * 4 - 2
with torch.no_grad():
  logits32 = net(images).numpy()
  logits64 = net.double()(images.double()).numpy()
state = {renamed(name, layout): tensor.float() for name, tensor in net.state_dict().items()}
torch.save({'net': {'module.' + k: v for k, v in state.items()}, 'acc': 90.0}, f'{out}/net.pth')
np.savez(f'{out}/net.npz', images=images.numpy(), logits32=logits32, logits64=logits64)
'''
_BATCH_NORM = {'batch_norm_momentum': 0.9, 'batch_norm_epsilon': 1e-5}


def _loaded_from_pytorch(tmp_path, config, model, side, layout):
  """(what config.init_from loads, PyTorch's images NHWC, float32 and float64 logits) of the
  reference network `model` written by PyTorch in `layout`'s names."""
  subprocess.run([TORCH_PYTHON, '-c', WRITE_NETWORK, str(tmp_path),
                  json.dumps({**model, **_BATCH_NORM}), str(side), layout],
                 check=True, cwd=REPO_ROOT, timeout=600)
  saved = np.load(tmp_path / 'net.npz')
  config.init_from = str(tmp_path / 'net.pth')
  validation.validate(config)
  return (experiment.load_pretrained(config), saved['images'].transpose(0, 2, 3, 1),
          saved['logits32'], saved['logits64'])


def _within_float32_noise(logits, logits32, logits64):
  """airbench_reference's rule: our float32 error at most max(1e-5, 3x PyTorch float32's)."""
  scale = np.abs(logits64).max()
  torch_error = np.abs(logits32 - logits64).max() / scale
  return np.abs(np.asarray(logits) - logits64).max() / scale <= max(1e-5, 3 * torch_error)


@needs_torch
@pytest.mark.slow  # (tier: docs/development.md#tests)
@pytest.mark.parametrize('recipe', ['resnet18', 'preact_resnet18'])
def test_kuangliu_state_dicts_load_into_the_families_and_give_pytorchs_logits(tmp_path, recipe):
  """A kuangliu-layout ResNet / PreAct-ResNet written by PyTorch (random weights and
  statistics, a training script's {'net': ...} with DataParallel's prefix) gives PyTorch's
  logits in float32, within PyTorch float32's own noise."""
  config = tiny_family_config(recipe)
  model = {**dict(config.model), 'final_activation': False}
  start, images, logits32, logits64 = _loaded_from_pytorch(tmp_path, config, model, 16,
                                                           'kuangliu')
  names = torch_weights.read_state_dict(str(tmp_path / 'net.pth'))
  assert {'layer1.0.conv1.weight', 'layer2.0.shortcut.0.weight', 'linear.bias'} <= set(names)
  logits = start.model.apply(start.state.variables(), images, train=False)
  assert _within_float32_noise(logits, logits32, logits64)


@needs_torch
@pytest.mark.slow  # (tier: docs/development.md#tests)
@pytest.mark.parametrize('depth', [18, 50])
def test_torchvision_state_dicts_give_pytorchs_logits_in_float64_and_float32(tmp_path, depth):
  """A torchvision-layout ResNet-18 / -50 (its names: downsample, fc) written by PyTorch with
  random weights and statistics: the same logits to 1e-10 in float64, within PyTorch float32's
  noise in float32."""
  config = tiny_family_config('resnet18', crop_size=0, **{'dataset.synthetic_image_size': 64})
  config.model = ml_collections.ConfigDict({'name': f'torchvision_resnet{depth}', 'width': 16})
  model = {'name': 'resnet', 'depth': depth, 'width': 16, 'stem': 'imagenet'}
  start, images, logits32, logits64 = _loaded_from_pytorch(tmp_path, config, model, 64,
                                                           'torchvision')
  names = torch_weights.read_state_dict(str(tmp_path / 'net.pth'))
  assert {'layer2.0.downsample.0.weight', 'layer2.0.downsample.1.running_var', 'fc.weight',
          'bn1.num_batches_tracked'} <= set(names)
  logits = start.model.apply(start.state.variables(), images, train=False)
  assert _within_float32_noise(logits, logits32, logits64)
  jax.config.update('jax_enable_x64', True)
  try:
    model = start.model.clone(dtype=np.float64)
    variables = jax.tree.map(lambda x: np.asarray(x, np.float64), start.state.variables())
    exact = np.asarray(model.apply(variables, images.astype(np.float64), train=False))
  finally:
    jax.config.update('jax_enable_x64', False)
  assert np.abs(exact - logits64).max() / np.abs(logits64).max() <= 1e-10


# ----------------------------------------------------------------------------
# Frozen layers.


@pytest.mark.parametrize('patterns, name, frozen', [
    (('conv1',), 'conv1/kernel', True),
    (('conv1',), 'conv10/kernel', False),
    (('conv1',), 'layer1_0_conv1/kernel', False),
    (('layer1',), 'layer1/block0/conv/kernel', True),  # a module it is in
    (('layer[12]_.*',), 'layer2_1_bn2/scale', True),
    (('layer[12]_.*',), 'layer3_0_conv1/kernel', False),
    (('.*/bias',), 'local3/bias', True),
    ((), 'conv1/kernel', False),
])
def test_a_freeze_pattern_names_modules_or_whole_paths(patterns, name, frozen):
  assert freezing.matches(name, patterns) == frozen


@pytest.mark.parametrize('freeze, words', [
    (('conv3',), r"config.freeze has 'conv3', which matches no parameter of config.model; its "
                 r"modules are \['conv1', 'conv2', 'local3', 'local4', 'logits'\]"),
    (('conv[1',), r"config.freeze has 'conv\[1', which is no regular expression"),
])
def test_a_freeze_that_freezes_nothing_is_one_sentence(freeze, words):
  with pytest.raises(UserError, match=words):
    validation.validate(tiny_config(freeze=freeze))


@pytest.mark.slow  # (tier: docs/development.md#tests)
@pytest.mark.parametrize('overrides, runs', [({}, 1), ({'num_replicas': 2}, 2),
                                             ({'sweep.learning_rate': (0.05, 0.1)}, 2)])
def test_frozen_layers_stay_the_sources_bit_for_bit_and_a_resume_needs_no_source(
    source_run, tmp_path, overrides, runs):
  """Fine-tuning with the convolutions frozen: they (raw, EMA, statistics) end as the source's
  bit for bit while the rest trains; every replica and sweep point starts from the source with
  its own head; a restart continues from the run's checkpoints, with the source gone."""
  copy = str(tmp_path / 'source')
  shutil.copytree(source_run, copy)
  config = _finetune_config(copy, freeze=('conv.*',), num_train_steps=10,
                            checkpoint_every_steps=5)
  overrides_lib.apply(config, overrides)
  state = experiment.train(config, str(tmp_path / 'finetune'), evaluate_in_process=False)
  source = experiment.load_checkpoint(copy).state
  for which in ('params', 'ema_params'):
    trained = getattr(state, which)
    for module in ('conv1', 'conv2'):
      for leaf, value in trained[module].items():
        expected = np.asarray(source.ema_params[module][leaf])
        stacked = np.asarray(value) if runs > 1 else np.asarray(value)[None]
        for run in stacked:
          np.testing.assert_array_equal(run, expected)
  local3 = np.asarray(state.params['local3']['kernel'])
  if runs > 1:
    assert not np.array_equal(local3[0], local3[1])  # each its own seed or learning rate
    local3 = local3[0]
  assert not np.array_equal(local3, np.asarray(source.ema_params['local3']['kernel']))
  shutil.rmtree(copy)
  config.num_train_steps = 14
  resumed = experiment.train(config, str(tmp_path / 'finetune'), evaluate_in_process=False)
  assert int(np.asarray(resumed.step).max()) == 14


class _FlaxNorms(nn.Module):
  """flax's BatchNorm in both idioms: set in the constructor, and given in the call."""

  @nn.compact
  def __call__(self, images, train=False):
    x = nn.BatchNorm(use_running_average=not train)(images)
    return nn.BatchNorm()(x, use_running_average=not train)


class _FamilyNorm(nn.Module):
  """The BatchNorm every family here uses, both formulations."""

  @nn.compact
  def __call__(self, images, train=False):
    x = layers.BatchNorm(0.9, 1e-5, use_scale=True)(images, train)
    return layers.BatchNorm(0.9, 1e-5, formulation='reference')(x, train)


def test_frozen_batch_norm_trains_on_the_running_statistics_and_keeps_them():
  """config.freeze_batch_norm: the training forward pass normalises with the running
  statistics (the inference pass's logits) and leaves them unchanged, in the families'
  BatchNorm and flax's (both idioms)."""
  images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
  for module in (_FamilyNorm(), _FlaxNorms()):
    variables = module.init(jax.random.key(0), images)
    variables = jax.tree.map(lambda x: x + 0.5, variables)  # statistics away from (0, 1)
    inference = module.apply(variables, images, train=False)
    with freezing.running_statistics(True):
      logits, updated = module.apply(variables, images, train=True, mutable=['batch_stats'])
    np.testing.assert_allclose(logits, inference, rtol=1e-6, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, updated['batch_stats'],
                 variables['batch_stats'])
    batch_logits, _ = module.apply(variables, images, train=True, mutable=['batch_stats'])
    assert not np.allclose(batch_logits, inference, atol=1e-3)


@pytest.mark.slow  # (tier: docs/development.md#tests)
def test_frozen_batch_norm_statistics_are_the_initial_ones_after_training():
  """Through the train step of a ResNet: the statistics after training are the initial ones."""
  config = tiny_family_config('resnet18', freeze_batch_norm=True, num_train_steps=3)
  _, fresh = experiment.create_train_state(config, experiment.load_data(config))
  state, _ = run_steps(config, 3)
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats, fresh.batch_stats)

