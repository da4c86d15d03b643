"""Which side of the ReLU's kink a float32 run took: recorded in float64, imposed in float32.

A ReLU's derivative jumps at zero. An activation that float64 computes as
-1e-9 and float32 as +1e-9 (well within float32's rounding of a value of
order 1) gets gradient 0 on one side and 1 on the other: each is the exact
gradient of the branch its arithmetic took. One such flip in ResNet-18's
first stride-2 block moves that block's kernel gradient by ~1e-2 of its
largest entry, and how many flips a run has depends on how close its
activations land to zero, not on how precise its passes are. The float32
checks (`resnet_reference.py`) therefore measure precision on float64's
branches -- float32's arithmetic with each ReLU's 0/1 pattern imposed from
float64 -- and count the flips beside it (docs/performance.md, "Accuracy of
the float32 step").

Framework-free, so that both halves of a check use it: give it the module
whose attribute the network calls (`flax.linen`'s `relu`, `torch.nn.functional`'s)
and the framework's `where`. The networks look the ReLU up at call time,
so patching the attribute while a network runs (or is traced) reaches
every one of its ReLUs, in call order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
from typing import Any

import numpy as np


class ReluBranches:
  """Records the inputs of every ReLU a network calls, or imposes recorded 0/1 patterns."""

  def __init__(self, module: Any, attribute: str, where: Callable[[Any, Any], Any]):
    """`where(mask, x)`: x where mask, else 0, in the framework of x (mask: a numpy bool array)."""
    self._module, self._attribute, self._where = module, attribute, where

  @contextlib.contextmanager
  def _patched(self, relu: Callable[..., Any]) -> Iterator[None]:
    original = getattr(self._module, self._attribute)
    setattr(self._module, self._attribute, relu)
    try:
      yield
    finally:
      setattr(self._module, self._attribute, original)

  @contextlib.contextmanager
  def record(self, inputs: list) -> Iterator[None]:
    """Appends each ReLU's input to `inputs` (arrays, or tracers inside a trace) in call order."""
    original = getattr(self._module, self._attribute)

    def recording_relu(x, *args, **kwargs):
      inputs.append(x)
      return original(x, *args, **kwargs)

    with self._patched(recording_relu):
      yield

  @contextlib.contextmanager
  def impose(self, masks: list[np.ndarray]) -> Iterator[None]:
    """Each ReLU in call order passes x where its mask is True and 0 elsewhere (masks: x > 0).

    For one run (or one trace) of the network: each mask is used once.
    """
    remaining = list(masks)

    def imposed_relu(x, *args, **kwargs):
      del args, kwargs  # inplace= and the like: the imposed ReLU returns a new array
      if not remaining:
        raise RuntimeError('the network called more ReLUs than were recorded')
      mask = remaining.pop(0)
      if mask.shape != tuple(x.shape):
        raise RuntimeError(f'a recorded ReLU mask {mask.shape} does not fit {tuple(x.shape)}')
      return self._where(mask, x)

    with self._patched(imposed_relu):
      yield
    if remaining:
      raise RuntimeError(f'{len(remaining)} recorded ReLU masks were not used')


def signs(inputs: list, to_numpy: Callable[[Any], np.ndarray]) -> list[np.ndarray]:
  """The branch of each recorded input: True where the ReLU passes it (x > 0)."""
  return [to_numpy(x) > 0 for x in inputs]


def flips(masks: list[np.ndarray], truth: list[np.ndarray]) -> int:
  """How many activations are on the other side of zero than in `truth`."""
  if len(masks) != len(truth):
    raise ValueError(f'{len(masks)} ReLUs against {len(truth)} recorded')
  return int(sum(np.count_nonzero(m != t) for m, t in zip(masks, truth, strict=True)))
