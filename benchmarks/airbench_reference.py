r"""airbench94 in PyTorch beside cifar_jax: a faithfulness check and a speed reference.

  # faithfulness: cifar_jax's side with this project's Python, PyTorch's in its own
  python benchmarks/airbench_reference.py --torch_python=/path/to/venv-with-torch/bin/python
  # speed of the original network's training step (run by `cifar_jax.benchmark --pytorch`)
  python benchmarks/airbench_reference.py --speed --recipe=airbench94 --batch=1024
  # the original's whole training run, for seeds 0..5, as records cifar_jax.compare reads
  python benchmarks/airbench_reference.py --train --seeds=6 --train_epochs=3 --out=DIR \
      --dataset_path=PATH/cifar10-jpeg-train.tar.gz --torch_python=/path/to/venv/bin/python

torch is never a dependency of cifar_jax. The PyTorch half is written from the
originals' mathematics (Keller Jordan's `cifar10-airbench`: legacy/airbench94.py
and airbench94_muon.py): their network (whitening conv, conv groups, BatchNorm
with frozen scale, momentum 0.4 in PyTorch's convention and eps 1e-12, exact
GELU, the scaled head), their summed label-smoothed loss, their optimizers
(SGD parameter groups with the decoupled hyper-parameters and LambdaLR
schedule; Muon with 3 Newton-Schulz iterations and weight renormalisation)
and their whitening initialisation.

Faithfulness, for each recipe (`experiments/airbench94.py`,
`experiments/airbench94_muon.py`, full widths, one device):

1. cifar_jax builds its state from the config (whitening from
   `model_init_examples` preprocessed training images), takes two augmented
   training batches from its pipeline, and records the images, the logits,
   loss and every gradient of the first batch, and the parameters and
   BatchNorm statistics after each of two optimizer steps (`train.train_step`).
2. PyTorch computes the whitening filters from the same images with the
   original's algorithm (float32 `torch.linalg.eigh`) and compares them with
   cifar_jax's up to the sign of each eigenvector; then it loads cifar_jax's
   initial weights and repeats the forward, backward and two optimizer steps.

PyTorch runs it twice, in float64 (the reference) and float32. Every tensor
is compared as max |x - float64| / max |float64|, for cifar_jax and for
PyTorch's own float32 run, whose error is the rounding noise of the
computation (up to ~1e-3 for some conv gradients: a summed loss through
BatchNorm). cifar_jax agrees on a tensor when its error is at most 3x PyTorch
float32's on it, or 1e-5, or at most PyTorch float32's worst error on the
tensors of the same stage (kind and step): one float32 run's error on one
tensor is a single draw of the noise, and after a Muon step (Newton-Schulz
amplifies rounding) it can be far below the stage's. The last line is
machine-readable. The originals run Newton-Schulz
in bfloat16 on GPUs; both sides use float32 (and float64) here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {'airbench94': 'experiments/airbench94.py',
           'airbench94_muon': 'experiments/airbench94_muon.py'}
KINDS = ('whitening', 'logits', 'loss', 'gradient', 'parameters', 'batch_stats')
# A tensor agrees when its error is at most max(ABSOLUTE_TOLERANCE, NOISE_FACTOR x
# PyTorch float32's own error on it, PyTorch float32's worst error in the tensor's
# stage), errors relative to PyTorch in float64.
ABSOLUTE_TOLERANCE = 1e-5
NOISE_FACTOR = 3.0


# ----------------------------------------------------------------------------
# cifar_jax's side (this project's Python).


def pipeline_and_step(config):
  """(setup, split, its data on one device, the mapped batch maker, the mapped train_step)."""
  import functools  # pylint: disable=import-outside-toplevel

  from cifar_jax.core import parallel
  from cifar_jax.data import augmentations, datasets, input_pipeline
  from cifar_jax.training import builder, train_step

  devices = parallel.select_devices(1)
  split = datasets.load_split(config.dataset, config.dataset.train_split)
  setup = builder.build(config, split, devices)
  data = input_pipeline.put_on_devices(split, devices)
  make_batch = parallel.pmap(functools.partial(
      augmentations.train_batch, augmentation=setup.pieces.options.augmentation), devices)
  step = parallel.pmap(functools.partial(
      train_step.train_step, apply_fn=setup.model.apply, pieces=setup.pieces), devices)
  return setup, split, data, make_batch, step


def export_jax(recipe: str, path: str, batch: int, init_examples: int,
               widths: tuple[int, ...] | None = None) -> None:
  """Runs cifar_jax's recipe for two steps and saves what PyTorch compares to `path`.

  `widths` (default: the recipe's) narrows the conv groups for a quick check.
  """
  sys.path.insert(0, REPO_ROOT)

  import jax  # pylint: disable=import-outside-toplevel

  from cifar_jax import experiment, models
  from cifar_jax.core import parallel
  from cifar_jax.data import input_pipeline
  from cifar_jax.training import train_step

  config = experiment.load_config(os.path.join(REPO_ROOT, RECIPES[recipe]), {
      'dataset.source': 'synthetic', 'dataset.synthetic_train_size': 4 * batch,
      'dataset.synthetic_test_size': 10, 'dataset.cache_dir': '', 'num_devices': 1,
      'batch_size': batch, 'model_init_examples': init_examples,
      **({'model.widths': tuple(widths)} if widths else {})})
  setup, split, data, make_batch, step = pipeline_and_step(config)
  devices = setup.devices
  state = setup.state
  out = {'init_images': input_pipeline.init_images(split, config, config.seed)}
  flat = lambda prefix, tree: {  # noqa: E731
      f'{prefix}/{name}': np.asarray(leaf) for name, leaf in zip(
          models.parameter_paths(tree), jax.tree.leaves(tree), strict=True)}
  out.update(flat('params0', state.params))
  p_state = parallel.replicate(state, devices)
  model = setup.model.clone(axis_name=None)  # outside pmap: no cross-device statistics

  def loss_fn(params, images, labels):
    logits, _ = model.apply(state.variables(params), images, train=True,
                            mutable=['batch_stats'])
    return train_step.cross_entropy_loss(logits, labels, config.label_smoothing,
                                         config.loss_reduction), logits

  for k in range(2):
    indices = setup.batches.indices(k)[:, 0]
    batch_k = make_batch(data, indices, p_state.rng, p_state.step)
    out[f'images{k}'] = np.asarray(batch_k['image'][0])
    out[f'labels{k}'] = np.asarray(batch_k['label'][0])
    if k == 0:
      (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, out['images0'], out['labels0'])
      out['loss0'] = np.asarray(loss)
      out['logits0'] = np.asarray(logits)
      out.update(flat('grads0', grads))
    p_state, _ = step(p_state, batch_k)
    host = parallel.unreplicate(p_state)
    out.update(flat(f'params{k + 1}', host.params))
    out.update(flat(f'batch_stats{k + 1}', host.batch_stats))
  meta = {'recipe': recipe, 'num_train_steps': config.num_train_steps,
          'steps_per_epoch': setup.batches.steps_per_epoch, 'batch': batch,
          'config': json.loads(config.to_json_best_effort())}
  np.savez(path, meta=json.dumps(meta), **out)


# ----------------------------------------------------------------------------
# PyTorch's side.


def _torch_network(config: dict):
  """The original CifarNet for `config['model']` (NCHW), with cifar_jax's parameter names."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  model = config['model']

  class BatchNorm(nn.BatchNorm2d):
    """Scale frozen at 1; running stats with weight 0.6 on the old value (PyTorch momentum 0.4)."""

    def __init__(self, features):
      super().__init__(features, eps=model['batch_norm_epsilon'],
                       momentum=1 - model['batch_norm_momentum'])
      self.weight.requires_grad = False

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      size = model['whiten_patch_size']
      self.whiten = nn.Conv2d(3, 2 * 3 * size * size, size, padding=0, bias=True)
      self.whiten.weight.requires_grad = False
      width_in = 2 * 3 * size * size
      for i, width in enumerate(model['widths']):
        setattr(self, f'group{i + 1}_conv1', nn.Conv2d(width_in, width, 3, padding='same',
                                                       bias=False))
        setattr(self, f'group{i + 1}_norm1', BatchNorm(width))
        setattr(self, f'group{i + 1}_conv2', nn.Conv2d(width, width, 3, padding='same',
                                                       bias=False))
        setattr(self, f'group{i + 1}_norm2', BatchNorm(width))
        width_in = width
      self.head = nn.Linear(width_in, 10, bias=False)

    def forward(self, x, whiten_bias_grad=True):
      bias = self.whiten.bias if whiten_bias_grad else self.whiten.bias.detach()
      x = F.gelu(F.conv2d(x, self.whiten.weight, bias))
      for i in range(len(model['widths'])):
        x = getattr(self, f'group{i + 1}_conv1')(x)
        x = F.max_pool2d(x, 2)
        x = F.gelu(getattr(self, f'group{i + 1}_norm1')(x))
        x = getattr(self, f'group{i + 1}_conv2')(x)
        x = F.gelu(getattr(self, f'group{i + 1}_norm2')(x))
      x = F.max_pool2d(x, 3)
      x = x.reshape(len(x), -1)
      return self.head(x) * model['head_multiplier']

  del torch
  return Net()


def _to_torch_layout(name: str, array: np.ndarray) -> np.ndarray:
  """cifar_jax (HWIO kernels, [in, out] dense) -> PyTorch (OIHW, [out, in])."""
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if name.endswith('head/kernel'):
    return array.T
  return array


def _torch_name(name: str) -> str:
  module, leaf = name.rsplit('/', 1)
  return f'{module}.{"weight" if leaf == "kernel" else leaf}'


def _newton_schulz(g, steps=3, eps=1e-7):
  """The original's zeropower_via_newtonschulz5, in g's dtype (the original: bfloat16)."""
  a, b, c = (3.4445, -4.7750, 2.0315)
  x = g
  x = x / (x.norm() + eps)
  if g.size(0) > g.size(1):
    x = x.T
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  if g.size(0) > g.size(1):
    x = x.T
  return x


def _optimizers(net, recipe: str, meta: dict):
  """The original's optimizers and per-step learning-rate setter for `recipe`."""
  import torch  # pylint: disable=import-outside-toplevel

  batch, total = meta['batch'], meta['num_train_steps']
  steps_per_epoch = meta['steps_per_epoch']
  named = dict(net.named_parameters())
  if recipe == 'airbench94':
    momentum = 0.85
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = 11.5 / kilostep_scale
    wd = 0.0153 * batch / kilostep_scale
    lr_biases = lr * 64.0
    norm_biases = [p for k, p in named.items() if 'norm' in k and p.requires_grad]
    others = [p for k, p in named.items() if 'norm' not in k and p.requires_grad]
    sgd = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                           dict(params=others, lr=lr, weight_decay=wd / lr)],
                          momentum=momentum, nesterov=True)
    initial = [g['lr'] for g in sgd.param_groups]

    def set_lr(step):
      warmup = int(total * 0.23)
      if step < warmup:
        frac = step / warmup
        scale = 0.2 * (1 - frac) + 1.0 * frac
      else:
        frac = (step - warmup) / (total - warmup)
        scale = 1.0 * (1 - frac) + 0.07 * frac
      for group, lr0 in zip(sgd.param_groups, initial, strict=True):
        group['lr'] = lr0 * scale
      # whiten bias trained in epochs < 3 only
      net.whiten.bias.requires_grad = step // steps_per_epoch < 3

    return [sgd], set_lr, None

  # airbench94_muon
  wd = 2e-6 * batch
  bias_lr, head_lr = 0.053, 0.67
  filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad]
  norm_biases = [p for k, p in named.items() if 'norm' in k and p.requires_grad]
  sgd = torch.optim.SGD([dict(params=[net.whiten.bias], lr=bias_lr, weight_decay=wd / bias_lr),
                         dict(params=norm_biases, lr=bias_lr, weight_decay=wd / bias_lr),
                         dict(params=[net.head.weight], lr=head_lr, weight_decay=wd / head_lr)],
                        momentum=0.85, nesterov=True)
  muon_state = {'lr': 0.24, 'momentum': 0.6, 'buffers': {}}
  whiten_steps = math.ceil(3 * steps_per_epoch)
  initial = [g['lr'] for g in sgd.param_groups]

  def set_lr(step):
    sgd.param_groups[0]['lr'] = initial[0] * (1 - step / whiten_steps)
    for group, lr0 in zip(sgd.param_groups[1:], initial[1:], strict=True):
      group['lr'] = lr0 * (1 - step / total)
    muon_state['current_lr'] = 0.24 * (1 - step / total)

  @torch.no_grad()
  def muon_step():
    for p in filters:
      g = p.grad
      buf = muon_state['buffers'].setdefault(id(p), torch.zeros_like(g))
      buf.mul_(muon_state['momentum']).add_(g)
      g = g.add(buf, alpha=muon_state['momentum'])
      p.mul_(len(p) ** 0.5 / p.norm())
      update = _newton_schulz(g.reshape(len(g), -1)).view(g.shape)
      p.add_(update, alpha=-muon_state['current_lr'])

  return [sgd], set_lr, muon_step


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| / max |b|."""
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run_torch(saved, dtype) -> dict[str, tuple[str, np.ndarray]]:
  """The original's computation on the export, in `dtype`: {name: (kind, array in jax layout)}."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  meta = json.loads(str(saved['meta']))
  recipe, config = meta['recipe'], meta['config']
  out = {}
  net = _torch_network(config).to(dtype)

  # 1. Whitening filters from the same images, the original's algorithm.
  images = torch.from_numpy(saved['init_images']).permute(0, 3, 1, 2).to(dtype)
  c, (h, w) = images.shape[1], net.whiten.weight.shape[2:]
  patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
  flat = patches.reshape(len(patches), -1)
  covariance = (flat.T @ flat) / len(flat)
  eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO='U')
  eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
  eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
  scaled = eigenvectors / torch.sqrt(eigenvalues + config['model']['whiten_eps'])
  filters = torch.cat((scaled, -scaled)).double().numpy()
  # Eigenvector signs are arbitrary: align each with cifar_jax's.
  reference = _to_torch_layout('whiten/kernel', saved['params0/whiten/kernel'])
  half = len(filters) // 2
  signs = np.sign(np.sum(reference[:half] * filters[:half], axis=(1, 2, 3)))
  out['whiten/kernel'] = ('whitening', np.concatenate([signs, signs])[:, None, None, None]
                          * filters)

  # 2. cifar_jax's initial weights: forward, backward, two optimizer steps.
  names = [n.split('/', 1)[1] for n in saved.files if n.startswith('params0/')]
  with torch.no_grad():
    state = net.state_dict()
    for name in names:
      state[_torch_name(name)].copy_(torch.from_numpy(
          _to_torch_layout(name, saved[f'params0/{name}'])))
  net.train()
  optimizers, set_lr, muon_step = _optimizers(net, recipe, meta)
  whiten_steps = math.ceil(3 * meta['steps_per_epoch'])
  for k in range(2):
    inputs = torch.from_numpy(saved[f'images{k}']).permute(0, 3, 1, 2).contiguous().to(dtype)
    labels = torch.from_numpy(saved[f'labels{k}']).long()
    set_lr(k)
    outputs = net(inputs, whiten_bias_grad=k < whiten_steps)
    loss = F.cross_entropy(outputs, labels, label_smoothing=config['label_smoothing'],
                           reduction='sum')
    for p in net.parameters():
      p.grad = None
    loss.backward()
    if k == 0:
      out['logits'] = ('logits', outputs.detach().double().numpy().copy())
      out['loss'] = ('loss', loss.detach().double().numpy().copy())
      named = dict(net.named_parameters())
      for name in names:
        grad = named[_torch_name(name)].grad
        if grad is not None:  # None: frozen in the original (the whitening filters)
          out[f'gradient {name}'] = ('gradient', grad.double().numpy().copy())
    for opt in optimizers:
      opt.step()
    if muon_step is not None:
      muon_step()
    state = net.state_dict()
    for name in names:
      out[f'step {k + 1} {name}'] = ('parameters',
                                     state[_torch_name(name)].double().numpy().copy())
    for module, _ in net.named_modules():
      if f'{module}.running_mean' in state:
        for stat in ('mean', 'var'):
          out[f'step {k + 1} {module}/{stat}'] = (
              'batch_stats', state[f'{module}.running_{stat}'].double().numpy().copy())
  return out


def _jax_value(saved, name: str) -> np.ndarray:
  """cifar_jax's value of a `run_torch` entry, in PyTorch's layout."""
  if name == 'whiten/kernel':
    return _to_torch_layout(name, saved['params0/whiten/kernel'])
  if name in ('logits', 'loss'):
    return saved[f'{name}0']
  _, rest = name.split(' ', 1)
  if name.startswith('gradient '):
    return _to_torch_layout(rest, saved[f'grads0/{rest}'])
  step, rest = rest.split(' ', 1)
  key = f'params{step}/{rest}' if f'params{step}/{rest}' in saved.files else (
      f'batch_stats{step}/{rest}')
  return _to_torch_layout(rest, saved[key])


def compare_torch(path: str) -> list[tuple[str, str, float, float]]:
  """[(kind, name, cifar_jax's error, PyTorch float32's error)], both against PyTorch float64.

  PyTorch's own float32 error is the rounding noise of this computation: the
  yardstick for cifar_jax's (float32) error.
  """
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  saved = np.load(path)
  exact = run_torch(saved, torch.float64)
  single = run_torch(saved, torch.float32)
  return [(kind, name, _relative_error(_jax_value(saved, name), value),
           _relative_error(single[name][1], value))
          for name, (kind, value) in exact.items()]


def _stage(name: str) -> str:
  """'step 2 group3_norm2/mean' -> 'step 2'; tensors of the first pass -> ''."""
  parts = name.split(' ')
  return ' '.join(parts[:2]) if parts[0] == 'step' else ''


def report(recipe: str, rows: list[tuple[str, str, float, float]]) -> bool:
  """Prints the worst error of each kind; True if cifar_jax is within its tolerance.

  A tensor passes when cifar_jax's error (against PyTorch in float64) is at
  most max(ABSOLUTE_TOLERANCE, NOISE_FACTOR x PyTorch float32's own error on
  it, PyTorch float32's worst error on the tensors of its stage).
  """
  stage_noise: dict[tuple[str, str], float] = {}
  for kind, name, _, torch_error in rows:
    key = (kind, _stage(name))
    stage_noise[key] = max(stage_noise.get(key, 0.0), torch_error)
  ok = True
  print(f'{recipe}: max |x - torch float64| / max |torch float64|, x = cifar_jax (float32) and '
        'PyTorch float32')
  print(f'  rule: a tensor passes when cifar_jax\'s error is at most max({ABSOLUTE_TOLERANCE:g}, '
        f'{NOISE_FACTOR:g} x PyTorch float32\'s on it, PyTorch float32\'s worst in its stage)')
  for kind in KINDS:
    errors = [(jax_error, torch_error, name) for k, name, jax_error, torch_error in rows
              if k == kind]
    if not errors:
      continue
    failed = [f'{name} ({jax_error:.1e} vs {torch_error:.1e})'
              for jax_error, torch_error, name in errors
              if jax_error > max(ABSOLUTE_TOLERANCE, NOISE_FACTOR * torch_error,
                                 stage_noise[(kind, _stage(name))])]
    worst = max(errors)
    ok &= not failed
    print(f'  {kind:<11} {len(errors):3d} tensors  cifar_jax worst {worst[0]:.1e} '
          f'({worst[2]}; PyTorch float32 there {worst[1]:.1e}), PyTorch float32 worst '
          f'{max(e[1] for e in errors):.1e}  {"ok" if not failed else "FAILED: " + str(failed)}')
  return ok


# ----------------------------------------------------------------------------
# Speed of the original's training step.


def _time_training_step(recipe: str, batch: int, steps: int, repeats: int,
                        channels_last: bool) -> list[float]:
  """Seconds per training step of the original network (forward, backward, optimizers)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  config = {'model': {'whiten_patch_size': 2, 'widths': (64, 256, 256),
                      'batch_norm_epsilon': 1e-12, 'batch_norm_momentum': 0.6,
                      'head_multiplier': 1 / 9 if recipe == 'airbench94' else 1 / 256}}
  torch.manual_seed(0)
  net = _torch_network(config)
  images = torch.randn(batch, 3, 32, 32)
  labels = torch.randint(0, 10, (batch,))
  if channels_last:
    net = net.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  meta = {'batch': batch, 'num_train_steps': 1000, 'steps_per_epoch': 100}
  optimizers, set_lr, muon_step = _optimizers(net, recipe, meta)

  def step(k):
    set_lr(k % 1000)
    loss = F.cross_entropy(net(images), labels, label_smoothing=0.2, reduction='sum')
    for p in net.parameters():
      p.grad = None
    loss.backward()
    for opt in optimizers:
      opt.step()
    if muon_step is not None:
      muon_step()
    return loss

  for k in range(2):
    step(k)
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    for k in range(steps):
      loss = step(k)
    loss.item()
    seconds.append((time.perf_counter() - started) / steps)
  return seconds


def measure_speed(recipe: str, batch: int, steps: int, repeats: int) -> dict[str, float]:
  """images/s of the original's training step, both memory formats; prints them."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  results = {}
  for channels_last in (False, True):
    seconds = _time_training_step(recipe, batch, steps, repeats, channels_last)
    rates = sorted(batch / s for s in seconds)
    name = 'channels_last' if channels_last else 'NCHW'
    results[name] = statistics.median(rates)
    print(f'pytorch {torch.__version__} {recipe} {name:<13} train step {results[name]:9.1f} '
          f'images/s (min {rates[0]:.1f}, max {rates[-1]:.1f}), {torch.get_num_threads()} '
          'threads')
  best = max(results, key=results.get)
  print(f'train_step_img_per_s={results[best]:.1f} memory_format={best}')
  return results


# ----------------------------------------------------------------------------
# A whole training run of the original recipe in PyTorch, on cifar_jax's data.


def export_splits(config_path: str, overrides: dict, path: str, seed: int = 0) -> dict:
  """The config's train and eval splits (uint8) to `path`; training examples shuffled once.

  The original whitens from the first 5,000 training images of a shuffled
  CIFAR-10; image folders are ordered by class, hence the shuffle.
  """
  sys.path.insert(0, REPO_ROOT)
  from cifar_jax import experiment  # pylint: disable=import-outside-toplevel
  from cifar_jax.data import datasets  # pylint: disable=import-outside-toplevel

  config = experiment.load_config(os.path.join(REPO_ROOT, config_path), overrides)
  train_split = datasets.load_split(config.dataset, config.dataset.train_split)
  eval_split = datasets.load_eval_split(config.dataset)
  order = np.random.default_rng(seed).permutation(train_split.num_examples)
  np.savez(path, train_images=train_split.images[order], train_labels=train_split.labels[order],
           eval_images=eval_split.images, eval_labels=eval_split.labels)
  return {'train': train_split.num_examples, 'eval': eval_split.num_examples}


def train_torch(path: str, train_epochs: float, seed: int,
                widths: tuple[int, ...] = (64, 256, 256), batch: int = 1024) -> dict[str, float]:
  """legacy/airbench94.py's main() on the exported splits: TTA 0 and 2 precision, seconds.

  On a GPU it runs as the original does there: the network in half precision
  with float32 BatchNorm, images and activations channels_last; on a CPU in
  float32 (`half` in the result says which).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  half = device.type == 'cuda'
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(seed)
  data = np.load(path)
  mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
  std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
  to_input = lambda x: (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std  # noqa: E731
  train_images, train_labels = to_input(data['train_images']), torch.from_numpy(
      data['train_labels']).long().to(device)
  eval_images, eval_labels = to_input(data['eval_images']), torch.from_numpy(
      data['eval_labels']).long().to(device)
  config = {'model': {'whiten_patch_size': 2, 'widths': tuple(widths),
                      'batch_norm_epsilon': 1e-12, 'batch_norm_momentum': 0.6,
                      'head_multiplier': 1 / 9}}
  net = _torch_network(config)
  with torch.no_grad():
    for name, module in net.named_modules():
      if name.startswith('group') and 'conv' in name:
        torch.nn.init.dirac_(module.weight[:module.weight.size(1)])
    net.whiten.bias.zero_()
    # init_whitening_conv on the first 5,000 (shuffled) training images.
    images = train_images[:5000]
    c, (h, w) = 3, (2, 2)
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
    flat = patches.reshape(len(patches), -1)
    eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO='U')
    eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
    eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + 5e-4)
    net.whiten.weight.copy_(torch.cat((scaled, -scaled)))
  net = net.to(device)
  if half:  # make_net(): half precision, BatchNorm in float32, channels_last
    net = net.half().to(memory_format=torch.channels_last)
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.float()
  as_input = lambda x: (x.half().contiguous(memory_format=torch.channels_last) if half  # noqa: E731
                        else x).to(device)
  train_images, eval_images = as_input(train_images), as_input(eval_images)
  synchronize = torch.cuda.synchronize if half else (lambda: None)
  steps_per_epoch = len(train_images) // batch
  total = math.ceil(steps_per_epoch * train_epochs)
  optimizers, set_lr, _ = _optimizers(net, 'airbench94',
                                      {'batch': batch, 'num_train_steps': total,
                                       'steps_per_epoch': steps_per_epoch})
  alphas = 0.95**5 * (torch.arange(total + 1) / total) ** 3
  slow = {k: v.clone() for k, v in net.state_dict().items()}

  def lookahead(decay):
    with torch.no_grad():
      for (_, s), v in zip(slow.items(), net.state_dict().values(), strict=True):
        if v.dtype in (torch.float32, torch.float16):
          s.lerp_(v, 1 - decay)
          v.copy_(s)

  # CifarLoader: pre-flip once, pad 2 (reflect), a random translation per epoch,
  # every image flipped in odd epochs, a fresh permutation per epoch, drop last.
  flip = (torch.rand(len(train_images)) < 0.5).to(device)
  flipped = torch.where(flip.view(-1, 1, 1, 1), train_images.flip(-1), train_images)
  padded = F.pad(flipped, (2,) * 4, 'reflect')
  step = 0
  synchronize()
  started = time.time()
  for epoch in range(math.ceil(train_epochs)):
    shifts = torch.randint(0, 5, (len(padded), 2)).to(device)
    epoch_images = torch.empty_like(train_images)
    for sy in range(5):
      for sx in range(5):
        mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
        epoch_images[mask] = padded[mask, :, sy:sy + 32, sx:sx + 32]
    if epoch % 2 == 1:
      epoch_images = epoch_images.flip(-1)
    order = torch.randperm(len(epoch_images)).to(device)
    net.train()
    for i in range(steps_per_epoch):
      indices = order[i * batch:(i + 1) * batch]
      set_lr(step)
      loss = F.cross_entropy(net(epoch_images[indices]), train_labels[indices],
                             label_smoothing=0.2, reduction='sum')
      for p in net.parameters():
        p.grad = None
      loss.backward()
      for opt in optimizers:
        opt.step()
      step += 1
      if step % 5 == 0:
        lookahead(alphas[step].item())
      if step >= total:
        lookahead(1.0)
        break
    print(f'epoch {epoch}, step {step}, loss {loss.item() / batch:.3f}, '
          f'{time.time() - started:.0f} s', file=sys.stderr, flush=True)
  synchronize()
  train_seconds = time.time() - started
  net.eval()

  @torch.no_grad()
  def precision(tta):
    logits = []
    for x in eval_images.split(1000):
      mirror = lambda v: 0.5 * net(v) + 0.5 * net(v.flip(-1))  # noqa: E731
      if tta == 0:
        logits.append(net(x))
      else:
        p = F.pad(x, (1,) * 4, 'reflect')
        logits.append(0.5 * mirror(x) + 0.25 * (mirror(p[:, :, :32, :32])
                                               + mirror(p[:, :, 2:, 2:])))
    return (torch.cat(logits).argmax(1) == eval_labels).float().mean().item()

  scores = {'precision_tta0': precision(0), 'precision_tta2': precision(2)}
  synchronize()
  return {**scores, 'steps': total, 'train_seconds': train_seconds,
          'seconds_to_scores': time.time() - started, 'half': half, 'device': str(device)}


def train_seeds(args: argparse.Namespace) -> int:
  """--train: the original recipe for each seed; with --out, records `cifar_jax.compare` reads.

  Each seed is a PyTorch process of its own (its data order, flips, whitening
  images and initialisation drawn from the seed). Results accumulate in
  OUT/seeds.jsonl, so a rerun with more seeds adds to them; OUT/eval/
  metrics.jsonl then holds one record per test-time augmentation (none,
  mirror_translate) with every seed's precision@1 as a replica.
  """
  overrides = {f'dataset.{name}': value for name, value in (
      ('path', args.dataset_path), ('train_split', args.train_split),
      ('eval_split', args.eval_split), ('eval_path', args.eval_path)) if value}
  done = _seed_results(args.out)
  widths = args.widths or '64,256,256'
  for seed in range(args.seed, args.seed + args.seeds):
    if seed in done:
      continue
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'splits.npz')
      sizes = export_splits(args.config, overrides, path, seed)
      result = subprocess.run(
          [args.torch_python, os.path.abspath(__file__), '--train_export', path,
           f'--train_epochs={args.train_epochs}', f'--seed={seed}', f'--widths={widths}',
           *([f'--batch={args.batch}'] if args.batch else [])],
          stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode:
      print(f'error: the PyTorch run of seed {seed} failed with {args.torch_python}.',
            file=sys.stderr)
      return 1
    figures = {**json.loads(result.stdout.strip().splitlines()[-1]), **sizes, 'seed': seed,
               'train_epochs': args.train_epochs}
    print(json.dumps(figures), flush=True)
    done[seed] = figures
    if args.out:
      os.makedirs(args.out, exist_ok=True)
      with open(os.path.join(args.out, 'seeds.jsonl'), 'a') as f:
        f.write(json.dumps(figures) + '\n')
  if args.out:
    write_records(args.out, [done[s] for s in sorted(done)])
  return 0


def _seed_results(out: str) -> dict[int, dict]:
  path = os.path.join(out, 'seeds.jsonl') if out else ''
  if not path or not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r['seed']: r for r in map(json.loads, f)}


def write_records(out: str, results: list[dict]) -> None:
  """OUT/eval/metrics.jsonl as the evaluator writes it for a run of len(results) replicas."""
  os.makedirs(os.path.join(out, 'eval'), exist_ok=True)
  with open(os.path.join(out, 'eval', 'metrics.jsonl'), 'w') as f:
    for tta, key in (('none', 'precision_tta0'), ('mirror_translate', 'precision_tta2')):
      values = [r[key] for r in results]
      record = {'step': results[0]['steps'], 'status': 'scored', 'tta': tta,
                'count': results[0]['eval'], 'precision': float(np.mean(values)),
                'precision_raw': float(np.mean(values)), 'num_replicas': len(values),
                'seeds': [r['seed'] for r in results], 'wall_time': time.time()}
      if len(values) > 1:
        record.update({f'{name}/replica_{i}': v for i, v in enumerate(values)
                       for name in ('precision', 'precision_raw')})
      f.write(json.dumps(record) + '\n')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--recipe', choices=sorted(RECIPES), action='append',
                      help='default: both')
  parser.add_argument('--torch_python', default=sys.executable,
                      help='a Python with torch installed, for the PyTorch half')
  parser.add_argument('--batch', type=int, default=None,
                      help='faithfulness: 128; speed and --train: the recipe\'s batch')
  parser.add_argument('--init_examples', type=int, default=2000)
  parser.add_argument('--compare', help='(internal) PyTorch half on an export')
  parser.add_argument('--speed', action='store_true')
  parser.add_argument('--train', action='store_true',
                      help='a whole airbench94 run in PyTorch on the config\'s data')
  parser.add_argument('--config', default='experiments/airbench94_jpeg.py',
                      help='--train: the config whose splits it trains and scores on')
  parser.add_argument('--dataset_path', default=None, help='--train: config.dataset.path')
  parser.add_argument('--train_split', default=None, help='--train: config.dataset.train_split')
  parser.add_argument('--eval_split', default=None, help='--train: config.dataset.eval_split')
  parser.add_argument('--eval_path', default=None, help='--train: config.dataset.eval_path')
  parser.add_argument('--train_epochs', type=float, default=9.9)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--widths', default=None,
                      help='the conv groups\' widths, e.g. 8,16,16 (default: the recipe\'s, '
                           '64,256,256; smaller: a quick check)')
  parser.add_argument('--seeds', type=int, default=1,
                      help='--train: runs of seeds seed .. seed+N-1, one after the other')
  parser.add_argument('--out', default='',
                      help='--train: a folder for the runs\' evaluator records (what '
                           'python -m cifar_jax.compare reads); seeds already in it are kept')
  parser.add_argument('--train_export', help='(internal) --train\'s PyTorch half')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  recipes = args.recipe or sorted(RECIPES)
  if args.speed:
    for recipe in recipes:
      batch = args.batch or (1024 if recipe == 'airbench94' else 2000)
      measure_speed(recipe, batch, args.steps, args.repeats)
    return 0
  if args.train_export:
    print(json.dumps(train_torch(args.train_export, args.train_epochs, args.seed,
                                 tuple(int(w) for w in (args.widths or '64,256,256').split(',')),
                                 args.batch or 1024)))
    return 0
  if args.train:
    return train_seeds(args)
  if args.compare:
    rows = compare_torch(args.compare)
    print(json.dumps(rows))
    return 0
  ok = True
  summary = {}
  with tempfile.TemporaryDirectory() as tmp:
    for recipe in recipes:
      path = os.path.join(tmp, f'{recipe}.npz')
      export_jax(recipe, path, args.batch or 128, args.init_examples,
                 tuple(int(w) for w in args.widths.split(',')) if args.widths else None)
      result = subprocess.run([args.torch_python, os.path.abspath(__file__), '--compare', path],
                              capture_output=True, text=True, check=False)
      if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr)
        print(f'error: the PyTorch half failed with {args.torch_python}; pass '
              '--torch_python=a Python with torch installed.', file=sys.stderr)
        return 1
      rows = [tuple(r) for r in json.loads(result.stdout.strip().splitlines()[-1])]
      ok &= report(recipe, rows)
      summary[recipe] = {kind: {'cifar_jax': max(r[2] for r in rows if r[0] == kind),
                                'pytorch_float32': max(r[3] for r in rows if r[0] == kind)}
                         for kind in KINDS}
  print(json.dumps({'agree': ok, **summary}))
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
