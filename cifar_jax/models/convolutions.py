"""PyTorch's `Conv2d` (no bias, padding kernel_size // 2) with each pass in its faster formulation.

The `fast` formulation's convolution (`layers.pytorch_conv`). It computes the
function of `nn.Conv` with PyTorch's padding, has the same parameter (`kernel`,
HWIO) and the same gradients to float32 rounding; where XLA's CPU backend
runs a pass of a strided convolution more slowly than another way of writing
it, that other way is taken, shape by shape, from a table of measurements
(`MEASURED`): never by guess, since every formulation loses somewhere.

  `xla`        XLA's convolution and its own gradients (every shape not in the table).
  `subsample`  a 1x1 stride-s convolution as the every-s-th-pixel input times the
               kernel, one matmul; JAX's gradients of that are one matmul for the
               kernel (the subsampled input's transpose times dy) and one for the
               input (dy times the kernel's transpose, in every s-th pixel), where
               XLA's are a strided convolution each.
  `phases`     a 3x3 stride-2 convolution (padding 1) with XLA's forward and weight
               gradient, and its input gradient by output phase: per axis, dx[2m] =
               dy[m] w[1] and dx[2m+1] = dy[m] w[2] + dy[m+1] w[0], so 9 matmuls of
               dy with a kernel tap and no zeros multiplied (XLA's runs a convolution
               over dy dilated with zeros), interleaved.

`MEASURED` is decided in two steps, by `benchmarks/conv_passes.py` on a 2-core
AVX-512 CPU at the recipes' batch of 128 (docs/performance.md has the sittings):
each candidate's passes alone against XLA's (`--strided_only
--variants=xla,phases,subsample`), then the network's whole loss gradient with
the candidates on and off, interleaved (`--whole_gradient`), because a pass that
is faster alone need not make the network faster: XLA fuses across passes. Both
candidates won alone; in the networks only `phases` did (ResNet-18 and WRN-16-8
3% faster), and `subsample` made either network slower, alone or beside
`phases`. It stays a candidate for other shapes and machines.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax.linen import dtypes
import jax
import jax.numpy as jnp

FORMULATIONS = ('xla', 'subsample', 'phases')

# (kernel size, stride, input side, C_in, C_out) -> formulation; the rest: 'xla'. The input
# gradient alone, ms at batch 128 (the only pass 'phases' changes), XLA's -> phases'
# (`conv_passes.py --strided_only --variants=xla,phases,subsample`, 2026-12-07).
MEASURED: dict[tuple[int, int, int, int, int], str] = {
    # ResNet-18 and -34 (32x32 images, width 64; the pre-activation networks too)
    (3, 2, 32, 64, 128): 'phases',   # 99.6 -> 72.1
    (3, 2, 16, 128, 256): 'phases',  # 51.6 -> 42.6
    (3, 2, 8, 256, 512): 'phases',   # 27.9 -> 27.4 (28.1 -> 26.5 in an earlier sitting)
    # WRN-16-8 (32x32 images; the strided convolutions of every WRN-d-8)
    (3, 2, 32, 128, 256): 'phases',  # 227.1 -> 181.1
    (3, 2, 16, 256, 512): 'phases',  # 166.4 -> 143.6
}


def _check(kernel_size: int, stride: int, formulation: str) -> None:
  """Raises ValueError where `formulation` does not compute this convolution."""
  if formulation not in FORMULATIONS:
    raise ValueError(f'unknown convolution formulation {formulation!r}; one of {FORMULATIONS}')
  if formulation == 'subsample' and kernel_size != 1:
    raise ValueError('the subsample formulation is for 1x1 convolutions')
  if formulation == 'phases' and (kernel_size, stride) != (3, 2):
    raise ValueError('the phases formulation is for 3x3 stride-2 convolutions')


def formulation_for(kernel_size: int, stride: int, side: int, in_features: int,
                    out_features: int) -> str:
  """The formulation `MEASURED` gives this convolution on square inputs of `side`, else 'xla'."""
  return MEASURED.get((kernel_size, stride, side, in_features, out_features), 'xla')


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _phase_input_gradient(dy: jax.Array, kernel: jax.Array, height: int,
                          width: int) -> jax.Array:
  """d(x) of a 3x3 stride-2 convolution padded 1 on [N, height, width, C_in] inputs, from dy.

  Output row y[m] = x[2m - 1] w[0] + x[2m] w[1] + x[2m + 1] w[2]: so input row
  2m receives dy[m] w[1], and row 2m + 1 receives dy[m] w[2] + dy[m + 1] w[0]
  (dy past its end is zero), per axis. The four phases are interleaved to
  [2 * out, 2 * out] and cut to the input's size (an odd side has one row fewer).
  """
  n, out_h, out_w, _ = dy.shape
  taps = jnp.swapaxes(kernel, 2, 3)  # [3, 3, C_out, C_in]
  shifted = jnp.pad(dy, ((0, 0), (0, 1), (0, 1), (0, 0)))
  # (kernel tap, shift of dy) summed into each phase, per axis.
  terms = {0: ((1, 0),), 1: ((2, 0), (0, 1))}
  rows = []
  for a in (0, 1):
    row = []
    for b in (0, 1):
      phase = None
      for tap_a, shift_a in terms[a]:
        for tap_b, shift_b in terms[b]:
          term = shifted[:, shift_a:shift_a + out_h, shift_b:shift_b + out_w, :] @ taps[tap_a,
                                                                                         tap_b]
          phase = term if phase is None else phase + term
      row.append(phase)
    rows.append(jnp.stack(row, axis=3))  # [N, out_h, out_w, 2 (column phase), C_in]
  interleaved = jnp.stack(rows, axis=2).reshape(n, 2 * out_h, 2 * out_w, -1)
  return interleaved[:, :height, :width, :]


@jax.custom_vjp
def _phases_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _xla_conv(x, kernel, 2)


def _phases_forward(x, kernel):
  return _xla_conv(x, kernel, 2), (x, kernel)


def _phases_backward(residuals, dy):
  x, kernel = residuals
  _, kernel_pullback = jax.vjp(lambda k: _xla_conv(x, k, 2), kernel)
  dx = _phase_input_gradient(dy, kernel, x.shape[1], x.shape[2])
  return dx.astype(x.dtype), kernel_pullback(dy)[0]


_phases_conv.defvjp(_phases_forward, _phases_backward)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, formulation: str) -> jax.Array:
  """PyTorch's convolution (padding kernel_size // 2 each side) of NHWC `x` with HWIO `kernel`."""
  _check(kernel.shape[0], stride, formulation)
  if formulation == 'subsample':
    # As one 2-D matmul: its gradients are then 2-D matmuls too, where a batched [N, H, W]
    # product's kernel gradient runs as XLA's slower batched contraction.
    subsampled = x[:, ::stride, ::stride, :]
    return (subsampled.reshape(-1, x.shape[-1]) @ kernel[0, 0]).reshape(
        *subsampled.shape[:-1], kernel.shape[-1])
  if formulation == 'phases':
    return _phases_conv(x, kernel)
  return _xla_conv(x, kernel, stride)


class Conv(nn.Module):
  """`nn.Conv(features, (k, k), (s, s), padding=k // 2, use_bias=False)`, passes by `MEASURED`.

  The same parameter as that `nn.Conv` (`kernel`, [k, k, C_in, features]), so
  checkpoints and PyTorch weights load into either; `formulation` overrides
  the table (tests use it to reach every formulation at tiny sizes).
  """

  features: int
  kernel_size: int
  stride: int = 1
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = None
  formulation: str | None = None  # None: formulation_for(..) of the input's shape

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    formulation = self.formulation
    if formulation is None:
      formulation = (formulation_for(self.kernel_size, self.stride, x.shape[1], x.shape[-1],
                                     self.features) if x.shape[1] == x.shape[2] else 'xla')
    return conv2d(x, kernel, self.stride, formulation)
