"""Data parallelism over the local devices: the one place that calls `jax.pmap`.

The tutorial's `cifar10_multi_gpu_train.py` keeps one replica of the model per
GPU and averages the gradients synchronously. Here every per-device function
is mapped with `pmap` over the axis `AXIS_NAME`, and the step functions
average with `jax.lax.pmean(..., AXIS_NAME)`. Replicated values carry a
leading device axis of length `len(devices)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from cifar_jax.errors import UserError

AXIS_NAME = 'batch'


def select_devices(num_devices: int, platform: str | None = None) -> list[jax.Device]:
  """The first `num_devices` local devices of `platform` (default backend); all for -1.

  Like the tutorial's `--num_gpus`, asking for more devices than exist uses
  the devices that exist, with a warning.
  """
  try:
    available = jax.local_devices(backend=platform)
  except RuntimeError as e:
    raise UserError(f'No {platform!r} devices here ({e}); check config.eval.platform.') from e
  if num_devices == -1:
    return available
  if num_devices < 1:
    raise UserError(f'config.num_devices is {num_devices}; use -1 (all local devices) or N >= 1.')
  if num_devices > len(available):
    logging.warning(
        'config.num_devices=%d but only %d %s device(s) exist; using %d.',
        num_devices, len(available), available[0].platform, len(available))
    return available
  return available[:num_devices]


def pmap(fn: Callable[..., Any], devices: Sequence[jax.Device],
         donate_argnums: tuple[int, ...] = ()) -> Callable[..., Any]:
  """`fn` mapped over `devices` with the collective axis `AXIS_NAME`."""
  return jax.pmap(fn, axis_name=AXIS_NAME, devices=devices, donate_argnums=donate_argnums)


def _device_axis_sharding(devices: Sequence[jax.Device]) -> NamedSharding:
  return NamedSharding(Mesh(np.asarray(devices), (AXIS_NAME,)), PartitionSpec(AXIS_NAME))


def replicate(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """One copy of every leaf on every device, stacked on a new leading axis."""
  sharding = _device_axis_sharding(devices)
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)),
                               sharding),
      tree)


def shard(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """Places leaves of shape [len(devices), ...] one slice per device."""
  return jax.device_put(tree, _device_axis_sharding(devices))


def unreplicate(tree: Any) -> Any:
  """The first replica of every leaf, as host numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data[0])
                      if isinstance(x, jax.Array) else np.asarray(x)[0], tree)
