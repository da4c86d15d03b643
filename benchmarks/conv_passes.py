r"""ResNet-18's step taken apart: each convolution's three passes and BatchNorm, JAX vs PyTorch.

  python benchmarks/conv_passes.py [--batch=128] [--torch_python=/path/to/venv/bin/python]
      [--network=resnet18|wrn16_8] [--strided_only] [--whole_gradient]

For every distinct convolution of ResNet-18 on 32x32 images (kuangliu's;
`cifar_jax.models.resnet`; or WRN-16-8's, `--network=wrn16_8`) and the number
of times it occurs, the time of its
forward pass, its input gradient and its weight gradient, and of BatchNorm's
forward and backward on its output, each compiled alone (float32, NHWC):

  xla          cifar_jax's XLA CPU options (`parallel.CPU_COMPILER_OPTIONS`: convolutions
               through YNNPACK) and the fast formulation's BatchNorm
               (`layers.batch_norm_train`, the analytic backward)
  xla_reference  the same options, BatchNorm of config.model.formulation='reference'
               (differentiated by JAX)
  xla_default  XLA's own CPU defaults (no option)
  fast         cifar_jax's fast formulation: each convolution as `models.convolutions`
               takes it (its table `MEASURED`, XLA's for every shape not in it)
  subsample, phases  each convolution in that formulation of `models.convolutions`
               where it applies (1x1; 3x3 stride 2), XLA's elsewhere: the columns that
               `MEASURED` is made from (a shape takes a formulation whose three passes
               sum to less than xla's)
  taps         the weight gradient as one matmul per kernel tap (dW[i, j] = the shifted
               input's [C_in, N*H*W] times the output gradient's [N*H*W, C_out]), with
               cifar_jax's options
  alternatives other formulations of the same passes, with cifar_jax's options (each
               checked against XLA's result to float32 rounding, the largest error
               printed): the forward as im2col (the 9 shifted, strided windows side by
               side) times the kernel, one matmul; a stride-2 3x3 input gradient as its
               four output phases (dx[2m] = dy[m] w[1], dx[2m+1] = dy[m] w[2] + dy[m+1]
               w[0] per axis: 1, 2, 2 and 4 matmuls, no zeros multiplied), interleaved;
               a 1x1 stride-2 convolution's input gradient as dy times the kernel's
               transpose in every other pixel, and its weight gradient as the subsampled
               input's transpose times dy (one matmul each); XLA's where none applies
  pytorch      torch.nn.functional.conv2d and torch.nn.grad.conv2d_input / conv2d_weight,
               channels_last, in its own process (--torch_python)

With --whole_gradient it times instead the network's whole loss gradient with
its strided convolutions in each variant (`xla`, `fast`, `phases`, `subsample`,
`phases+subsample`), the variants interleaved repeat by repeat: what
`models.convolutions.MEASURED` is decided by, since a pass faster alone need not
make the network faster.

The totals weight each row by its count: the convolutions' share of a training
step. The JAX columns are timed row by row, each variant in turn (PyTorch's after
them, in its process), so that the machine's drift over a sitting does not read as
a difference between them. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, input side, C_in, C_out, kernel, stride, occurrences) of ResNet-18 at width 64.
RESNET18 = (
    ('stem 3x3 3->64', 32, 3, 64, 3, 1, 1),
    ('layer1 3x3 64->64', 32, 64, 64, 3, 1, 4),
    ('layer2 3x3/2 64->128', 32, 64, 128, 3, 2, 1),
    ('layer2 3x3 128->128', 16, 128, 128, 3, 1, 3),
    ('layer2 shortcut 1x1/2', 32, 64, 128, 1, 2, 1),
    ('layer3 3x3/2 128->256', 16, 128, 256, 3, 2, 1),
    ('layer3 3x3 256->256', 8, 256, 256, 3, 1, 3),
    ('layer3 shortcut 1x1/2', 16, 128, 256, 1, 2, 1),
    ('layer4 3x3/2 256->512', 8, 256, 512, 3, 2, 1),
    ('layer4 3x3 512->512', 4, 512, 512, 3, 1, 3),
    ('layer4 shortcut 1x1/2', 8, 256, 512, 1, 2, 1),
)
# The same of WRN-16-8 (`cifar_jax.models.wide_resnet`, 32x32 images).
WRN16_8 = (
    ('stem 3x3 3->16', 32, 3, 16, 3, 1, 1),
    ('group1 3x3 16->128', 32, 16, 128, 3, 1, 1),
    ('group1 3x3 128->128', 32, 128, 128, 3, 1, 3),
    ('group1 shortcut 1x1 16->128', 32, 16, 128, 1, 1, 1),
    ('group2 3x3/2 128->256', 32, 128, 256, 3, 2, 1),
    ('group2 3x3 256->256', 16, 256, 256, 3, 1, 3),
    ('group2 shortcut 1x1/2', 32, 128, 256, 1, 2, 1),
    ('group3 3x3/2 256->512', 16, 256, 512, 3, 2, 1),
    ('group3 3x3 512->512', 8, 512, 512, 3, 1, 3),
    ('group3 shortcut 1x1/2', 16, 256, 512, 1, 2, 1),
)
NETWORKS = {'resnet18': RESNET18, 'wrn16_8': WRN16_8}
CONVS = RESNET18
PASSES = ('forward', 'input_grad', 'weight_grad', 'batch_norm')


def _median_ms(run, repeats: int) -> float:
  run()  # compiled and warm
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    run()
    times.append(time.perf_counter() - started)
  return 1e3 * statistics.median(times)


def jax_times(batch: int, repeats: int, variant: str,
              convs: tuple = ()) -> dict[str, dict[str, float]]:
  """{conv name: {pass: ms}} in JAX for `variant` (one of the docstring's JAX columns).

  `convs`: those rows of CONVS (default: all).
  """
  sys.path.insert(0, REPO_ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from cifar_jax.core import parallel  # pylint: disable=import-outside-toplevel
  from cifar_jax.models import convolutions, layers  # pylint: disable=import-outside-toplevel

  formulation_variants = _formulation_variants()
  formulation = 'reference' if variant == 'xla_reference' else 'fast'
  options = {} if variant == 'xla_default' else parallel.compiler_options('cpu')

  def compiled(fn, *args):
    executable = jax.jit(fn).lower(*args).compile(options)
    return lambda: jax.block_until_ready(executable(*args))

  out = {}
  key = jax.random.key(0)
  for name, side, c_in, c_out, k, stride, _ in convs or CONVS:
    x = jax.random.normal(key, (batch, side, side, c_in))
    w = jax.random.normal(key, (k, k, c_in, c_out)) * 0.05
    pad = ((k // 2, k // 2),) * 2

    if variant in formulation_variants:
      chosen = formulation_variants[variant](k, stride, side, c_in, c_out)
    else:
      chosen = 'xla'

    def conv(x, w, stride=stride, pad=pad, chosen=chosen):
      if chosen != 'xla':
        return convolutions.conv2d(x, w, stride, chosen)
      return jax.lax.conv_general_dilated(x, w, (stride, stride), pad,
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    y = conv(x, w)
    dy = jnp.ones_like(y)
    times = {'forward': _median_ms(compiled(conv, x, w), repeats),
             'input_grad': _median_ms(compiled(
                 lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0], x, w, dy),
                 repeats)}
    if variant == 'alternatives':
      times.update(_alternative_times(x, w, dy, k, stride, pad, conv, compiled, repeats, name))
    elif variant == 'taps':
      weight_grad = lambda x, dy, k=k, stride=stride, pad=pad: _taps_weight_grad(  # noqa: E731
          x, dy, k, stride, pad)
      times['weight_grad'] = _median_ms(compiled(weight_grad, x, dy), repeats)
    if variant != 'taps' and 'weight_grad' not in times:
      times['weight_grad'] = _median_ms(compiled(
          lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0], x, w, dy), repeats)
    norm = layers.BatchNorm(momentum=0.9, epsilon=1e-5, use_scale=True, formulation=formulation)
    variables = norm.init(key, y, True)

    def norm_step(variables, y, dy, norm=norm):
      def f(y, params):
        out, _ = norm.apply({**variables, 'params': params}, y, True, mutable=['batch_stats'])
        return out
      out, pullback = jax.vjp(f, y, variables['params'])
      return out, pullback(dy)

    times['batch_norm'] = _median_ms(compiled(norm_step, variables, y, dy), repeats)
    out[name] = times
  return out


def _formulation_variants():
  """variant -> (kernel, stride, side, C_in, C_out) -> the convolution formulation it times."""
  sys.path.insert(0, REPO_ROOT)
  from cifar_jax.models import convolutions  # pylint: disable=import-outside-toplevel

  def forced(formulation):
    def choose(k, stride, *_):
      try:
        convolutions._check(k, stride, formulation)  # pylint: disable=protected-access
      except ValueError:
        return 'xla'
      return formulation
    return choose
  return {'fast': convolutions.formulation_for, 'subsample': forced('subsample'),
          'phases': forced('phases')}


def _im2col_forward(x, w, k, stride, pad):
  """The convolution as one matmul: the k * k shifted, strided windows side by side."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  n, side, _, c_in = x.shape
  out = (side + 2 * pad[0][0] - k) // stride + 1
  padded = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  columns = jnp.concatenate([padded[:, i:i + stride * out:stride, j:j + stride * out:stride, :]
                             for i in range(k) for j in range(k)], axis=-1)
  return (columns.reshape(-1, k * k * c_in) @ w.reshape(k * k * c_in, -1)).reshape(
      n, out, out, -1)


def _phase_input_grad(dy, w, k):
  """The input gradient of a stride-2 convolution (3x3 padded 1, or 1x1) by output phase."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  n, half, _, _ = dy.shape
  kernel = jnp.swapaxes(w, 2, 3)  # [k, k, C_out, C_in]
  if k == 1:
    terms = {0: [(0, 0)], 1: []}  # (tap, shift of dy) of each parity, per axis
  else:
    terms = {0: [(1, 0)], 1: [(2, 0), (0, 1)]}
  shifted = jnp.pad(dy, ((0, 0), (0, 1), (0, 1), (0, 0)))  # dy[m + 1] past the end is 0
  zero = jnp.zeros((n, half, half, kernel.shape[-1]), dy.dtype)
  phases = {}
  for a in (0, 1):
    for b in (0, 1):
      total = zero
      for tap_a, shift_a in terms[a]:
        for tap_b, shift_b in terms[b]:
          total = total + (shifted[:, shift_a:shift_a + half, shift_b:shift_b + half, :]
                           @ kernel[tap_a, tap_b])
      phases[a, b] = total
  rows = [jnp.stack([phases[a, 0], phases[a, 1]], axis=3) for a in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * half, 2 * half, -1)


def _alternative_times(x, w, dy, k, stride, pad, conv, compiled, repeats, name):
  """{pass: ms} of the alternative formulations of one convolution (see `alternatives`)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def checked(alternative, xla, *args):
    got, want = alternative(*args), xla(*args)
    error = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    print(f'  {name}: {alternative.__name__} within {error:.1e} of XLA', file=sys.stderr)
    if error > 1e-5:
      raise AssertionError(f'{name}: {alternative.__name__} is not the same function')
    return _median_ms(compiled(alternative, *args), repeats)

  # A gradient of random values: ones (the timing's) would hide a wrong shift.
  dy = jax.random.normal(jax.random.key(1), dy.shape)
  times = {}

  def forward(x, w):
    return _im2col_forward(x, w, k, stride, pad)
  times['forward'] = checked(forward, lambda x, w: conv(x, w), x, w)
  if stride == 2:
    def input_grad(w, dy):
      return _phase_input_grad(dy, w, k)
    times['input_grad'] = checked(
        input_grad, lambda w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0], w, dy)
  if k == 1:
    def weight_grad(x, dy):
      sub = x[:, ::stride, ::stride, :]
      return (sub.reshape(-1, sub.shape[-1]).T @ dy.reshape(-1, dy.shape[-1]))[None, None]
    times['weight_grad'] = checked(
        weight_grad, lambda x, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0], x, dy)
  return times


def _taps_weight_grad(x, dy, k, stride, pad):
  """dW [k, k, C_in, C_out] as k * k matmuls of the shifted, strided input and dy."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  n, out_h, out_w, c_out = dy.shape
  padded = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  flat_dy = dy.reshape(-1, c_out)
  rows = []
  for i in range(k):
    row = []
    for j in range(k):
      window = padded[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride, :]
      row.append(window.reshape(-1, x.shape[-1]).T @ flat_dy)
    rows.append(jnp.stack(row))
  return jnp.stack(rows)


def whole_gradient_times(network: str, batch: int, repeats: int,
                         variants: list[str]) -> dict[str, list[float]]:
  """{variant: ms of each repeat} of the network's whole loss gradient, the variants interleaved.

  The network's own module in training mode at batch `batch` on 32x32 images,
  its strided convolutions in each variant's formulation (`xla`: none of
  `MEASURED`; `fast`: `MEASURED`; `phases`, `subsample`, `phases+subsample`:
  that formulation on every strided convolution it applies to), compiled with
  the trainer's options and timed in turn, repeat by repeat: a pass that is
  faster alone need not make the network faster (XLA fuses across passes).
  """
  sys.path.insert(0, REPO_ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from cifar_jax.core import parallel  # pylint: disable=import-outside-toplevel
  from cifar_jax.models import (  # pylint: disable=import-outside-toplevel
    convolutions,
    resnet,
    wide_resnet,
  )

  model = (resnet.ResNet(axis_name=None) if network == 'resnet18'
           else wide_resnet.WideResNet(depth=16, width_factor=8, axis_name=None))
  images = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
  labels = jnp.arange(batch) % 10
  variables = model.init(jax.random.key(1), images[:2], train=False)

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, images, train=True,
                            mutable=['batch_stats'])
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(batch), labels])

  measured = dict(convolutions.MEASURED)
  chooser = {**_formulation_variants(), 'xla': lambda *_: 'xla',
             'fast': lambda *shape: measured.get(shape, 'xla')}
  executables = {}
  try:
    for variant in variants:
      table = {}
      for _, side, c_in, c_out, k, stride, _ in NETWORKS[network]:
        for formulation in variant.split('+'):
          chosen = chooser[formulation](k, stride, side, c_in, c_out)
          if chosen != 'xla':
            table[k, stride, side, c_in, c_out] = chosen
      convolutions.MEASURED.clear()
      convolutions.MEASURED.update(table)  # read when the gradient is traced, below
      executables[variant] = jax.jit(jax.grad(loss)).lower(variables['params']).compile(
          parallel.compiler_options('cpu'))
  finally:
    convolutions.MEASURED.clear()
    convolutions.MEASURED.update(measured)
  times = {variant: [] for variant in variants}
  for executable in executables.values():
    jax.block_until_ready(executable(variables['params']))  # warm
  for _ in range(repeats):
    for variant, executable in executables.items():
      started = time.perf_counter()
      jax.block_until_ready(executable(variables['params']))
      times[variant].append(1e3 * (time.perf_counter() - started))
  return times


def torch_times(batch: int, repeats: int) -> dict[str, dict[str, float]]:
  """The same in PyTorch (channels_last, every core)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # noqa: N812  pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  out = {}
  cl = torch.channels_last
  for name, side, c_in, c_out, k, stride, _ in CONVS:
    x = torch.randn(batch, c_in, side, side).contiguous(memory_format=cl)
    w = (torch.randn(c_out, c_in, k, k) * 0.05).contiguous(memory_format=cl)
    with torch.no_grad():
      y = F.conv2d(x, w, stride=stride, padding=k // 2)
    dy = torch.ones_like(y)
    norm = torch.nn.BatchNorm2d(c_out).to(memory_format=cl)

    def norm_step(y=y, dy=dy, norm=norm):
      y = y.detach().requires_grad_()
      norm(y).backward(dy)

    with torch.no_grad():
      out[name] = {
          'forward': _median_ms(lambda x=x, w=w, s=stride, p=k // 2: F.conv2d(
              x, w, stride=s, padding=p), repeats),
          'input_grad': _median_ms(lambda x=x, w=w, dy=dy, s=stride, p=k // 2:
                                   torch.nn.grad.conv2d_input(x.shape, w, dy, stride=s,
                                                              padding=p), repeats),
          'weight_grad': _median_ms(lambda x=x, w=w, dy=dy, s=stride, p=k // 2:
                                    torch.nn.grad.conv2d_weight(x, w.shape, dy, stride=s,
                                                                padding=p), repeats)}
    out[name]['batch_norm'] = _median_ms(norm_step, repeats)
  return out


def table(results: dict[str, dict], batch: int, title: str) -> str:
  columns = list(results)
  lines = [f'{title} convolutions at batch {batch}, 32x32 images, float32: ms per pass (median)',
           '',
           '| convolution | count | pass | ' + ' | '.join(columns) + ' |',
           '|---|---|---|' + '---|' * len(columns)]
  totals = {c: {p: 0.0 for p in PASSES} for c in columns}
  for name, *_, count in CONVS:
    for p in PASSES:
      values = [results[c][name][p] for c in columns]
      for c, v in zip(columns, values, strict=True):
        totals[c][p] += count * v
      lines.append(f'| {name} | {count} | {p} | ' + ' | '.join(f'{v:.1f}' for v in values)
                   + ' |')
  for p in PASSES:
    lines.append(f'| **all, x count** | | {p} | ' + ' | '.join(
        f'**{totals[c][p]:.0f}**' for c in columns) + ' |')
  lines.append('| **all, x count** | | sum | ' + ' | '.join(
      f'**{sum(totals[c].values()):.0f}**' for c in columns) + ' |')
  return '\n'.join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--variants', default='xla,xla_reference,xla_default,taps')
  parser.add_argument('--limit', type=int, default=0,
                      help='only the first N convolutions (a quick check of the script)')
  parser.add_argument('--network', default='resnet18', choices=sorted(NETWORKS),
                      help='whose convolutions')
  parser.add_argument('--strided_only', action='store_true',
                      help='only the strided convolutions (those with a formulation to choose)')
  parser.add_argument('--torch_python', default='',
                      help='a Python with torch for the PyTorch column (none: no column)')
  parser.add_argument('--whole_gradient', action='store_true',
                      help="time the network's whole loss gradient in each variant instead "
                           '(xla, fast, phases, subsample, phases+subsample)')
  parser.add_argument('--torch_part', action='store_true', help='(internal) the PyTorch half')
  args = parser.parse_args()
  global CONVS  # noqa: PLW0603  (--network, --strided_only and --limit choose the rows)
  CONVS = tuple(conv for conv in NETWORKS[args.network]
                if conv[5] > 1 or not args.strided_only)
  CONVS = CONVS[:args.limit] if args.limit else CONVS
  if args.whole_gradient:
    times = whole_gradient_times(args.network, args.batch, args.repeats,
                                 [v for v in args.variants.split(',') if v])
    print(f'{args.network} loss gradient at batch {args.batch}, 32x32, float32: ms (median, '
          'min; the variants interleaved)')
    for variant, values in times.items():
      print(f'  {variant:<18} {statistics.median(values):8.1f} {min(values):8.1f}')
    print(json.dumps({v: statistics.median(values) for v, values in times.items()}))
    return 0
  if args.torch_part:
    print(json.dumps(torch_times(args.batch, args.repeats)))
    return 0
  # Row by row, every variant in turn: a drift of the machine's speed over the minutes a
  # column takes would otherwise read as a difference between the columns.
  results = {variant: {} for variant in args.variants.split(',') if variant}
  for conv in CONVS:
    for variant, rows in results.items():
      rows.update(jax_times(args.batch, args.repeats, variant, (conv,)))
  if args.torch_python:
    done = subprocess.run([args.torch_python, os.path.abspath(__file__), '--torch_part',
                           f'--batch={args.batch}', f'--repeats={args.repeats}',
                           f'--limit={args.limit}', f'--network={args.network}']
                          + ['--strided_only'] * args.strided_only,
                          capture_output=True, text=True, check=False)
    if done.returncode:
      print(done.stderr[-3000:], file=sys.stderr)
      print(f'error: the PyTorch half failed with {args.torch_python}.', file=sys.stderr)
      return 1
    results['pytorch'] = json.loads(done.stdout.strip().splitlines()[-1])
  print(table(results, args.batch, {'resnet18': 'ResNet-18', 'wrn16_8': 'WRN-16-8'}[args.network]))
  print(json.dumps({column: {p: sum(count * results[column][name][p]
                                    for name, *_, count in CONVS) for p in PASSES}
                    for column in results}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
