r"""The ResNet families in PyTorch beside cifar_jax: a faithfulness check and a speed reference.

  # faithfulness: cifar_jax's side with this project's Python, PyTorch's in its own
  python benchmarks/resnet_reference.py --torch_python=/path/to/venv-with-torch/bin/python
  # speed of the PyTorch network's training step (run by `cifar_jax.benchmark --pytorch`)
  python benchmarks/resnet_reference.py --speed --network=resnet18 --batch=128

torch is never a dependency of cifar_jax. The PyTorch networks here are
written from the originals' definitions, in PyTorch's NCHW convention:
kuangliu/pytorch-cifar's `ResNet` (BasicBlock, Bottleneck) and `PreActResNet`
(PreActBlock, PreActBottleneck), and xternalz/WideResNet-pytorch's
`WideResNet`; their modules carry cifar_jax's parameter names so that one
set of weights loads into both.

Faithfulness, for ResNet-18, PreAct-ResNet-18 and WRN-16-4 (and, with
--network=torchvision_resnet18, torchvision's ResNet-18 with its ImageNet stem;
full widths, the recipes' optimizer: Nesterov SGD 0.9, lr 0.1, weight decay 5e-4
in PyTorch's form, one device):

1. The parameter count of each side (and, for these three, the originals'
   published figures: 11,173,962, 11,171,146, 2,748,890 and, with a head of 10,
   11,181,642).
2. cifar_jax builds its state from the recipe, takes an augmented training
   batch from its pipeline, records the logits, the loss and every gradient
   (train mode: batch statistics), then one optimizer step
   (`train_step.train_step`) and the parameters and BatchNorm statistics
   after it; PyTorch loads cifar_jax's initial weights and repeats the
   forward, backward and one `torch.optim.SGD` step.
3. The same forward, backward and optimizer step in float64 on both sides
   (cifar_jax under jax_enable_x64, the model at dtype float64): they must
   agree to 1e-10 relative on every tensor (they do to ~1e-13) -- the same
   function, the same gradients, the same SGD step.
4. float32 on both sides against PyTorch float64, compiled as the trainer
   compiles it, with airbench_reference's noise rule (`report`, which prints
   it: a tensor passes when cifar_jax's error is at most max(1e-5, 3x
   PyTorch float32's on it, PyTorch float32's worst in its stage)). Measured
   on float64's ReLU branches (relu_branches.py): an activation within
   float32's rounding of zero may land on the other side of the ReLU's kink,
   and its gradient is then the exact gradient of the other branch -- one
   flip moves a kernel's gradient by ~1e-2 on either side (PyTorch's too),
   which says nothing about the passes' precision. The flips and the worst
   gradient as computed are printed beside it (docs/performance.md,
   "Accuracy of the float32 step").

Errors are max |x - reference| / max |reference| per tensor. The last line is
machine-readable; `agree` is the parameter counts and the float64 check (the
float32 rule is `float32_within_noise_rule`, asserted by the slow tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from airbench_reference import KINDS, pipeline_and_step, report  # one rule, one set-up
import numpy as np
from relu_branches import ReluBranches, flips, signs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# network -> (recipe, overrides, the original's published parameter count for 10 classes).
NETWORKS = {
    'resnet18': ('experiments/resnet18.py', {}, 11_173_962),
    'preact_resnet18': ('experiments/preact_resnet18.py', {}, 11_171_146),
    'wrn16_4': ('experiments/wrn28_10.py', {'model.depth': 16, 'model.width_factor': 4},
                2_748_890),
    'wrn16_8': ('experiments/wrn28_10.py', {'model.depth': 16, 'model.width_factor': 8},
                10_961_370),
    # torchvision's resnet18 (11,689,512 at 1,000 classes) with a head of 10.
    'torchvision_resnet18': ('experiments/resnet18.py', {'model.name': 'torchvision_resnet18'},
                             11_181_642),
}
CHECKED = ('resnet18', 'preact_resnet18', 'wrn16_4')  # and torchvision_resnet18 by name
# float64 on both sides: the same function to summation-order rounding (~1e-14).
FLOAT64_TOLERANCE = 1e-10
# The networks' config.model for --speed without cifar_jax (the torch venv has none of it).
_BATCH_NORM = {'batch_norm_momentum': 0.9, 'batch_norm_epsilon': 1e-5}
SPEED_MODELS = {
    'resnet18': {'name': 'resnet', 'depth': 18, 'width': 64, 'stem': 'cifar', **_BATCH_NORM},
    'preact_resnet18': {'name': 'preact_resnet', 'depth': 18, 'width': 64, 'stem': 'cifar',
                        'final_activation': False, **_BATCH_NORM},
    'wrn16_4': {'name': 'wide_resnet', 'depth': 16, 'width_factor': 4, 'stem_width': 16,
                **_BATCH_NORM},
    'wrn16_8': {'name': 'wide_resnet', 'depth': 16, 'width_factor': 8, 'stem_width': 16,
                **_BATCH_NORM},
}


# ----------------------------------------------------------------------------
# cifar_jax's side (this project's Python).


def load_recipe(network: str, batch: int, overrides: dict | None = None):
  """The network's recipe on synthetic data, one device, `batch` per step."""
  sys.path.insert(0, REPO_ROOT)
  from cifar_jax import experiment  # pylint: disable=import-outside-toplevel

  recipe, network_overrides, _ = NETWORKS[network]
  return experiment.load_config(os.path.join(REPO_ROOT, recipe), {
      'dataset.source': 'synthetic', 'dataset.synthetic_train_size': 4 * batch,
      'dataset.synthetic_test_size': 10, 'dataset.cache_dir': '', 'num_devices': 1,
      'batch_size': batch, 'num_train_epochs': 0.0, 'num_train_steps': 100,
      **network_overrides, **(overrides or {})})


def _jax_branches():
  """ReluBranches on flax.linen.relu, the ReLU every cifar_jax family calls."""
  import flax.linen  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  return ReluBranches(flax.linen, 'relu',
                      lambda mask, x: jnp.where(mask, x, jnp.zeros((), x.dtype)))


def export_jax(network: str, path: str, batch: int, overrides: dict | None = None) -> None:
  """cifar_jax's forward, backward and one step of `network`, saved to `path` for PyTorch.

  float64 first (its ReLU branches recorded), then float32 compiled as the
  trainer compiles it: the gradients as computed (their flips counted) and on
  float64's branches, and the trainer's step on float64's branches.
  """
  import jax  # pylint: disable=import-outside-toplevel

  config = load_recipe(network, batch, overrides)
  from cifar_jax import models
  from cifar_jax.core import parallel
  from cifar_jax.training import train_step

  setup, _, data, make_batch, step = pipeline_and_step(config)
  devices = setup.devices
  state = setup.state
  p_state = parallel.replicate(state, devices)
  batch0 = make_batch(data, setup.batches.indices(0)[:, 0], p_state.rng, p_state.step)
  images, labels = np.asarray(batch0['image'][0]), np.asarray(batch0['label'][0])
  flat = lambda prefix, tree: {  # noqa: E731
      f'{prefix}/{name}': np.asarray(leaf) for name, leaf in zip(
          models.parameter_paths(tree), jax.tree.leaves(tree), strict=True)}
  branches = _jax_branches()
  exact, truth = _float64_pass(setup, state, images, labels, config, flat, branches)
  model = setup.model.clone(axis_name=None)  # outside pmap: no cross-device statistics

  def gradients(params, masks=None):
    def loss_fn(params):
      inputs = []
      with branches.record(inputs) if masks is None else branches.impose(masks):
        logits, _ = model.apply(state.variables(params), images, train=True,
                                mutable=['batch_stats'])
      return train_step.cross_entropy_loss(logits, labels, config.label_smoothing,
                                           config.loss_reduction), (logits, inputs)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  options = parallel.compiler_options(devices[0].platform)  # as the trainer compiles
  compiled = lambda fn: jax.jit(fn).lower(state.params).compile(options)  # noqa: E731
  (_, (_, inputs)), as_computed = compiled(gradients)(state.params)
  (loss, (logits, _)), grads = compiled(lambda p: gradients(p, truth))(state.params)
  with branches.impose(truth):  # the step's trace takes float64's branches
    p_state, _ = step(p_state, batch0)
  after = parallel.unreplicate(p_state)
  out = {'images': images, 'labels': labels, 'loss': np.asarray(loss),
         'logits': np.asarray(logits), **flat('params0', state.params),
         **flat('batch_stats0', state.batch_stats), **flat('grads', grads),
         **flat('grads_as_computed', as_computed),
         **flat('params1', after.params), **flat('batch_stats1', after.batch_stats),
         'relu_flips': np.asarray(flips(signs(inputs, np.asarray), truth)), **exact}
  meta = {'network': network, 'model': dict(config.model),
          'parameters': models.count_parameters(state.params),
          'relu_inputs': int(sum(mask.size for mask in truth)),
          # The schedule's step-0 value in float64 (0.1, not float32's 0.1000000015).
          'learning_rate': float(out['f64/learning_rate']), 'momentum': config.momentum,
          'nesterov': config.nesterov, 'weight_decay': config.weight_decay,
          'label_smoothing': config.label_smoothing}
  np.savez(path, meta=json.dumps(meta), **out)


def _float64_pass(setup, state, images, labels, config, flat, branches
                  ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
  """The same forward, backward and optimizer step in float64 (jax_enable_x64), for the
  exact comparison: the model with dtype float64, float64 copies of the initial state.
  Also returns float64's ReLU branches (each ReLU input > 0)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from cifar_jax.training import train_step  # pylint: disable=import-outside-toplevel

  jax.config.update('jax_enable_x64', True)
  try:
    to64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)  # noqa: E731
    model = setup.model.clone(axis_name=None, dtype=jnp.float64)
    params, stats = to64(state.params), to64(state.batch_stats)

    def loss_fn(params):
      inputs = []
      with branches.record(inputs):
        logits, new = model.apply({'params': params, 'batch_stats': stats},
                                  jnp.asarray(images, jnp.float64), train=True,
                                  mutable=['batch_stats'])
      loss = train_step.cross_entropy_loss(logits, labels, config.label_smoothing,
                                           config.loss_reduction)
      return loss, (logits, new['batch_stats'], inputs)

    (loss, (logits, new_stats, inputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, _ = setup.pieces.tx.update(grads, setup.pieces.tx.init(params), params)
    after = optax.apply_updates(params, updates)
    return {'f64/learning_rate': np.asarray(setup.pieces.learning_rate_fn(0), np.float64),
            'f64/loss': np.asarray(loss), 'f64/logits': np.asarray(logits),
            **flat('f64grads', grads), **flat('f64params1', after),
            **flat('f64batch_stats1', new_stats)}, signs(inputs, np.asarray)
  finally:
    jax.config.update('jax_enable_x64', False)


# ----------------------------------------------------------------------------
# PyTorch's side.

RESNET_DEPTHS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
                 50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3)),
                 152: ('bottleneck', (3, 8, 36, 3))}


def torch_network(model: dict):
  """The PyTorch network `model` (a cifar_jax config.model) describes, NCHW, cifar_jax's names."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  momentum = 1 - model['batch_norm_momentum']  # PyTorch's convention: the new value's weight
  eps = model['batch_norm_epsilon']

  def conv(c_in, c_out, k, stride=1):
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)

  def norm(c):
    return nn.BatchNorm2d(c, eps=eps, momentum=momentum)

  class Net(nn.Module):
    """Modules registered flat under cifar_jax's names; `forward` wires them as the original."""

    def add(self, name, module):
      setattr(self, name, module)
      return name

    def m(self, name):
      return getattr(self, name)

  if model['name'] in ('resnet', 'preact_resnet', 'torchvision_resnet18', 'torchvision_resnet50'):
    preact = model['name'] == 'preact_resnet'
    kind, counts = RESNET_DEPTHS[model['depth']]
    expansion = 4 if kind == 'bottleneck' else 1
    width, stem = model['width'], model['stem']

    class ResNet(Net):

      def __init__(self):
        super().__init__()
        self.add('conv1', conv(3, width, 3 if stem == 'cifar' else 7, 1 if stem == 'cifar' else 2))
        if not preact:
          self.add('bn1', norm(width))
        self.blocks = []
        c_in = width
        for stage, count in enumerate(counts):
          planes = width * 2**stage
          for index in range(count):
            name, stride = f'layer{stage + 1}_{index}', 2 if stage and not index else 1
            c_out = planes * expansion
            block = {'stride': stride, 'name': name, 'shortcut': stride != 1 or c_in != c_out}
            if block['shortcut']:
              self.add(f'{name}_shortcut_conv', conv(c_in, c_out, 1, stride))
              if not preact:
                self.add(f'{name}_shortcut_bn', norm(c_out))
            if kind == 'basic':
              self.add(f'{name}_conv1', conv(c_in, planes, 3, stride))
              self.add(f'{name}_conv2', conv(planes, planes, 3))
              norms = (c_in, planes) if preact else (planes, planes)
            else:
              self.add(f'{name}_conv1', conv(c_in, planes, 1))
              self.add(f'{name}_conv2', conv(planes, planes, 3, stride))
              self.add(f'{name}_conv3', conv(planes, c_out, 1))
              norms = (c_in, planes, planes) if preact else (planes, planes, c_out)
            for i, c in enumerate(norms):
              self.add(f'{name}_bn{i + 1}', norm(c))
            self.blocks.append(block)
            c_in = c_out
        if preact and model.get('final_activation'):
          self.add('bn', norm(c_in))
        self.linear = nn.Linear(c_in, 10)

      def forward(self, x):
        x = self.conv1(x)
        if not preact:
          x = F.relu(self.bn1(x))
        if stem != 'cifar':
          x = F.max_pool2d(x, 3, 2, padding=1)
        for block in self.blocks:
          x = (self._preact if preact else self._post)(block, x)
        if preact and model.get('final_activation'):
          x = F.relu(self.bn(x))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

      def _post(self, block, x):
        name, m = block['name'], self.m
        shortcut = (m(f'{name}_shortcut_bn')(m(f'{name}_shortcut_conv')(x))
                    if block['shortcut'] else x)
        y = F.relu(m(f'{name}_bn1')(m(f'{name}_conv1')(x)))
        if kind == 'basic':
          y = m(f'{name}_bn2')(m(f'{name}_conv2')(y))
        else:
          y = F.relu(m(f'{name}_bn2')(m(f'{name}_conv2')(y)))
          y = m(f'{name}_bn3')(m(f'{name}_conv3')(y))
        return F.relu(y + shortcut)

      def _preact(self, block, x):
        name, m = block['name'], self.m
        out = F.relu(m(f'{name}_bn1')(x))
        shortcut = m(f'{name}_shortcut_conv')(out) if block['shortcut'] else x
        y = m(f'{name}_conv1')(out)
        y = m(f'{name}_conv2')(F.relu(m(f'{name}_bn2')(y)))
        if kind == 'bottleneck':
          y = m(f'{name}_conv3')(F.relu(m(f'{name}_bn3')(y)))
        return y + shortcut

    return ResNet()

  stem_width, k, n = model['stem_width'], model['width_factor'], (model['depth'] - 4) // 6

  class WideResNet(Net):

    def __init__(self):
      super().__init__()
      self.add('conv1', conv(3, stem_width, 3))
      self.blocks = []
      c_in = stem_width
      for group in range(3):
        c_out = stem_width * 2**group * k
        for index in range(n):
          name, stride = f'block{group + 1}_{index}', 2 if group and not index else 1
          self.add(f'{name}_bn1', norm(c_in))
          self.add(f'{name}_conv1', conv(c_in, c_out, 3, stride))
          self.add(f'{name}_bn2', norm(c_out))
          self.add(f'{name}_conv2', conv(c_out, c_out, 3))
          if c_in != c_out:
            self.add(f'{name}_shortcut_conv', conv(c_in, c_out, 1, stride))
          self.blocks.append((name, c_in != c_out))
          c_in = c_out
      self.bn = norm(c_in)
      self.fc = nn.Linear(c_in, 10)

    def forward(self, x):
      x, m = self.conv1(x), self.m
      for name, widens in self.blocks:
        out = F.relu(m(f'{name}_bn1')(x))
        shortcut = m(f'{name}_shortcut_conv')(out) if widens else x
        y = m(f'{name}_conv2')(F.relu(m(f'{name}_bn2')(m(f'{name}_conv1')(out))))
        x = y + shortcut
      x = F.relu(self.bn(x))
      return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

  return WideResNet()


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
  """cifar_jax (HWIO kernels, [in, out] dense) -> PyTorch (OIHW, [out, in])."""
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  return array.T if array.ndim == 2 else array


def _torch_name(name: str) -> str:
  """'layer1_0_bn1/scale' -> 'layer1_0_bn1.weight'; batch_stats mean/var -> running_*."""
  module, leaf = name.rsplit('/', 1)
  leaf = {'kernel': 'weight', 'scale': 'weight', 'mean': 'running_mean',
          'var': 'running_var'}.get(leaf, leaf)
  return f'{module}.{leaf}'


def run_torch(saved, dtype, masks: list[np.ndarray] | None = None
              ) -> tuple[dict[str, tuple[str, np.ndarray]], int, list[np.ndarray]]:
  """The PyTorch network on the export, in `dtype`: ({name: (kind, jax layout)}, parameters,
  its ReLU branches); with `masks`, on those branches (relu_branches)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  branches = ReluBranches(F, 'relu', lambda mask, x: torch.where(
      torch.from_numpy(mask), x, torch.zeros((), dtype=x.dtype)))
  inputs = []
  with branches.record(inputs) if masks is None else branches.impose(masks):
    out, count = _torch_step(saved, dtype)
  if masks is None:
    masks = signs(inputs, lambda x: x.detach().double().numpy())
  return out, count, masks


def _torch_step(saved, dtype) -> tuple[dict[str, tuple[str, np.ndarray]], int]:
  """`run_torch`'s forward, backward and SGD step."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  meta = json.loads(str(saved['meta']))
  net = torch_network(meta['model']).to(dtype)
  count = sum(p.numel() for p in net.parameters())
  state = net.state_dict()
  with torch.no_grad():
    for key in saved.files:
      prefix, _, name = key.partition('/')
      if prefix in ('params0', 'batch_stats0'):
        state[_torch_name(name)].copy_(torch.from_numpy(_to_torch_layout(saved[key])))
  net.train()
  images = torch.from_numpy(saved['images']).permute(0, 3, 1, 2).contiguous().to(dtype)
  labels = torch.from_numpy(saved['labels']).long()
  optimizer = torch.optim.SGD(net.parameters(), lr=meta['learning_rate'],
                              momentum=meta['momentum'], nesterov=meta['nesterov'],
                              weight_decay=meta['weight_decay'])
  logits = net(images)
  loss = F.cross_entropy(logits, labels, label_smoothing=meta['label_smoothing'])
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  to_numpy = lambda t: t.detach().double().numpy().copy()  # noqa: E731
  out = {'logits': ('logits', to_numpy(logits)), 'loss': ('loss', to_numpy(loss))}
  named = dict(net.named_parameters())
  for key in saved.files:
    if key.startswith('grads/'):
      name = key.split('/', 1)[1]
      out[f'gradient {name}'] = ('gradient', to_numpy(named[_torch_name(name)].grad))
  optimizer.step()
  state = net.state_dict()
  for key in saved.files:
    prefix, _, name = key.partition('/')
    if prefix in ('params1', 'batch_stats1'):
      kind = 'parameters' if prefix == 'params1' else 'batch_stats'
      out[f'step 1 {name}'] = (kind, to_numpy(state[_torch_name(name)]))
  return out, count


def _jax_value(saved, name: str, prefix: str = '') -> np.ndarray:
  """cifar_jax's value of a `run_torch` entry, in PyTorch's layout; prefix 'f64': float64's,
  'as_computed': the float32 gradients off float64's ReLU branches."""
  if name in ('logits', 'loss'):
    return saved[f'{prefix}/{name}' if prefix else name]
  if name.startswith('gradient '):
    key = name.split(' ', 1)[1]
    if prefix == 'as_computed':
      return _to_torch_layout(saved[f'grads_as_computed/{key}'])
    return _to_torch_layout(saved[f'{prefix}grads/{key}'])
  rest = name.split(' ', 2)[2]
  key = (f'{prefix}params1/{rest}' if f'params1/{rest}' in saved.files
         else f'{prefix}batch_stats1/{rest}')
  return _to_torch_layout(saved[key])


def compare_torch(path: str) -> dict:
  """{'rows': [(kind, name, cifar_jax's error, PyTorch float32's error)], 'parameters': n, ...}.

  float32 on float64's ReLU branches on both sides (the rows the rule judges);
  beside them each side's flips and worst gradient as computed.
  """
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  saved = np.load(path)
  exact, count, truth = run_torch(saved, torch.float64)
  single, _, _ = run_torch(saved, torch.float32, truth)
  as_computed, _, branches = run_torch(saved, torch.float32)
  rows = [(kind, name, _relative_error(_jax_value(saved, name), value),
           _relative_error(single[name][1], value)) for name, (kind, value) in exact.items()]
  exact_rows = [(kind, name, _relative_error(_jax_value(saved, name, 'f64'), value))
                for name, (kind, value) in exact.items()]
  gradients = [name for name, (kind, _) in exact.items() if kind == 'gradient']
  worst = lambda value: max(_relative_error(value(n), exact[n][1]) for n in gradients)  # noqa: E731
  return {'rows': rows, 'float64': exact_rows, 'parameters': count,
          'relu_flips': {'cifar_jax': int(saved['relu_flips']),
                         'pytorch_float32': flips(branches, truth)},
          'gradients_as_computed': {
              'cifar_jax': worst(lambda n: _jax_value(saved, n, 'as_computed')),
              'pytorch_float32': worst(lambda n: as_computed[n][1])}}


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| / max |b|."""
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ----------------------------------------------------------------------------
# Speed of the PyTorch network's training step.


def measure_speed(model: dict, batch: int, steps: int, repeats: int, image_size: int = 32
                  ) -> dict[str, float]:
  """images/s of the PyTorch training step (SGD as the recipes), both memory formats; printed."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  results = {}
  for channels_last in (False, True):
    torch.manual_seed(0)
    net = torch_network(model)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 10, (batch,))
    if channels_last:
      net = net.to(memory_format=torch.channels_last)
      images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)

    def step():
      loss = F.cross_entropy(net(images), labels)  # noqa: B023  (this format's network)
      optimizer.zero_grad(set_to_none=True)  # noqa: B023
      loss.backward()
      optimizer.step()  # noqa: B023
      return loss

    for _ in range(2):
      step()
    rates = []
    for _ in range(repeats):
      started = time.perf_counter()
      for _ in range(steps):
        loss = step()
      loss.item()
      rates.append(batch * steps / (time.perf_counter() - started))
    rates.sort()
    name = 'channels_last' if channels_last else 'NCHW'
    results[name] = statistics.median(rates)
    print(f'pytorch {torch.__version__} {model["name"]} {name:<13} train step '
          f'{results[name]:9.1f} images/s (min {rates[0]:.1f}, max {rates[-1]:.1f}), '
          f'{torch.get_num_threads()} threads')
  best = max(results, key=results.get)
  print(f'train_step_img_per_s={results[best]:.1f} memory_format={best}')
  return results


# ----------------------------------------------------------------------------


def report_float64(network: str, rows) -> tuple[bool, dict[str, float]]:
  """Prints the worst float64 error of each kind; (all within FLOAT64_TOLERANCE, worst by kind)."""
  worst = {}
  for kind, name, error in rows:
    if error >= worst.get(kind, (-1.0, ''))[0]:
      worst[kind] = (error, name)
  print(f'{network}: float64, max |cifar_jax - PyTorch| / max |PyTorch|, the same weights and '
        'batch')
  for kind in KINDS:
    if kind in worst:
      error, name = worst[kind]
      count = sum(r[0] == kind for r in rows)
      print(f'  {kind:<11} {count:3d} tensors  worst {error:.1e} ({name})  '
            f'{"ok" if error <= FLOAT64_TOLERANCE else "FAILED"}')
  return (all(e <= FLOAT64_TOLERANCE for e, _ in worst.values()),
          {kind: e for kind, (e, _) in worst.items()})


def check(networks, torch_python: str, batch: int) -> int:
  """The faithfulness check of `networks`; prints each report and the summary line."""
  ok, summary = True, {}
  with tempfile.TemporaryDirectory() as tmp:
    for network in networks:
      path = os.path.join(tmp, f'{network}.npz')
      export_jax(network, path, batch)
      result = subprocess.run([torch_python, os.path.abspath(__file__), '--compare', path],
                              capture_output=True, text=True, check=False)
      if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr)
        print(f'error: the PyTorch half failed with {torch_python}; pass '
              '--torch_python=a Python with torch installed.', file=sys.stderr)
        return 1
      answer = json.loads(result.stdout.strip().splitlines()[-1])
      rows = [tuple(r) for r in answer['rows']]
      meta = json.loads(str(np.load(path)['meta']))
      jax_count = meta['parameters']
      published = NETWORKS[network][2]
      counts_agree = jax_count == answer['parameters'] == published
      print(f'{network}: parameters cifar_jax {jax_count:,}, PyTorch {answer["parameters"]:,}, '
            f'published {published:,}  {"ok" if counts_agree else "FAILED"}')
      exact_ok, exact = report_float64(network, answer['float64'])
      print('  float32 on float64\'s ReLU branches (relu_branches.py), against PyTorch\'s:')
      within_noise = report(network, rows)
      flipped, as_computed = answer['relu_flips'], answer['gradients_as_computed']
      print(f'  as computed, for information: ReLU inputs on the other side of zero than '
            f'float64\'s: cifar_jax {flipped["cifar_jax"]}, PyTorch {flipped["pytorch_float32"]} '
            f'of {meta["relu_inputs"]:,}; worst gradient then cifar_jax '
            f'{as_computed["cifar_jax"]:.1e}, PyTorch {as_computed["pytorch_float32"]:.1e}')
      ok &= counts_agree and exact_ok
      summary[network] = {'parameter_count': jax_count, 'float64': exact,
                          'float32_within_noise_rule': within_noise, 'relu_flips': flipped,
                          'gradients_as_computed': as_computed, **{
          kind: {'cifar_jax': max(r[2] for r in rows if r[0] == kind),
                 'pytorch_float32': max(r[3] for r in rows if r[0] == kind)}
          for kind in KINDS if any(r[0] == kind for r in rows)}}
  print(json.dumps({'agree': ok, **summary}))
  return 0 if ok else 1


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--network', choices=sorted(NETWORKS), action='append',
                      help=f'default: {", ".join(CHECKED)} (faithfulness), resnet18 (speed)')
  parser.add_argument('--torch_python', default=sys.executable,
                      help='a Python with torch installed, for the PyTorch half')
  parser.add_argument('--batch', type=int, default=None,
                      help='faithfulness: 16; speed: 128')
  parser.add_argument('--compare', help='(internal) PyTorch half on an export')
  parser.add_argument('--speed', action='store_true')
  parser.add_argument('--model', default='',
                      help='--speed: a cifar_jax config.model as JSON instead of --network\'s')
  parser.add_argument('--image_size', type=int, default=32, help='--speed: image side')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  if args.compare:
    print(json.dumps(compare_torch(args.compare)))
    return 0
  if args.speed:
    models = ([json.loads(args.model)] if args.model else
              [SPEED_MODELS[network] for network in args.network or ['resnet18']])
    for model in models:
      measure_speed(model, args.batch or 128, args.steps, args.repeats, args.image_size)
    return 0
  return check(args.network or CHECKED, args.torch_python, args.batch or 16)


if __name__ == '__main__':
  sys.exit(main())
