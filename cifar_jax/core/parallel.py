"""Data parallelism over the local devices: the one place that calls `jax.pmap`.

The tutorial's `cifar10_multi_gpu_train.py` keeps one replica of the model per
GPU and averages the gradients synchronously. Here every per-device function
is mapped with `pmap` over the axis `AXIS_NAME`, and the step functions
average with `jax.lax.pmean(..., AXIS_NAME)`. Replicated values carry a
leading device axis of length `len(devices)`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import os
from typing import Any

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from cifar_jax.core import fields as spec
from cifar_jax.core import layout
from cifar_jax.core.errors import UserError

AXIS_NAME = 'batch'


def _cluster_detected() -> bool:
  """True inside a multi-task job that jax.distributed can configure itself (e.g. SLURM)."""
  return int(os.environ.get('SLURM_NTASKS', '1')) > 1 or int(
      os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           timeout_secs: int = 300,
                           collective_timeout_secs: float = 0.0) -> None:
  """Joins a multi-process job through `jax.distributed`; a no-op for one process.

  Explicit arguments win; without them, JAX's cluster detection (SLURM, Open
  MPI, ...) is used when such a job is detected. On CPUs the collectives go
  through gloo. Must run before anything touches a JAX device.

  JAX aborts every process some time after a peer stops sending heartbeats
  (a fatal log, no checkpoint named). That time is set past
  `collective_timeout_secs` so that the trainer's watchdog (`lifecycle`) ends
  a process first, with one line that says what is intact and what to do.
  """
  explicit = bool(coordinator_address) or (num_processes or 1) > 1
  if not explicit and not _cluster_detected():
    return
  if explicit and not (coordinator_address and num_processes and process_id is not None):
    raise UserError('A multi-process run needs --coordinator_address=HOST:PORT, '
                    '--num_processes=N and --process_id=I (0 on the coordinator) on every process.')
  # Harmless on GPUs; on CPUs, cross-process collectives need it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address or None,
                             num_processes=num_processes if explicit else None,
                             process_id=process_id if explicit else None,
                             initialization_timeout=timeout_secs,
                             heartbeat_timeout_seconds=int(max(100, collective_timeout_secs + 60)))
  logging.info('Process %d of %d; %d local and %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


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
  if num_devices > len(available):
    logging.warning(
        'config.num_devices=%d but only %d %s device(s) exist; using %d.',
        num_devices, len(available), available[0].platform, len(available))
    return available
  return available[:num_devices]


# XLA options for computations compiled for CPUs. With YNNPACK enabled for
# dots (off by default in jaxlib 0.10; newer XLA turns it on), convolutions go
# through it too instead of single-threaded Eigen, and use every core
# (docs/performance.md). float32 throughout; only summation order changes. A
# user's own setting of the same option in XLA_FLAGS wins.
CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def use_compilation_cache(cache_dir: str, workdir: str) -> str | None:
  """Keeps compiled XLA programs in `cache_dir` (relative: under `workdir`) across runs.

  JAX's persistent compilation cache: a restarted trainer or evaluator loads
  its step functions instead of compiling them again. A cache directory the
  user already gave JAX (JAX_COMPILATION_CACHE_DIR, or an earlier call in this
  process) is kept. '' leaves the cache off. Returns the directory in use.
  """
  current = jax.config.jax_compilation_cache_dir
  if current or not cache_dir:
    return current or None
  path = os.path.join(workdir, os.path.expanduser(cache_dir))
  jax.config.update('jax_compilation_cache_dir', path)
  # Programs that compile in under a second are cached too: together they
  # are a large part of a restart on a CPU (the evaluation step, the init).
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
  # JAX decides once per process whether the cache is used; a notebook or
  # test may have compiled before, so let it decide again.
  compilation_cache.reset_cache()
  return path


def compiler_options(platform: str) -> dict[str, str]:
  """The XLA options `pmap` compiles with on `platform` (see CPU_COMPILER_OPTIONS)."""
  if platform != 'cpu':
    return {}
  user_flags = os.environ.get('XLA_FLAGS', '')
  return {k: v for k, v in CPU_COMPILER_OPTIONS.items() if k not in user_flags}


# How many calls of one mapped function may be dispatched and not yet finished.
# JAX dispatches asynchronously, so a loop that never reads a result can queue
# any number of steps. XLA's CPU runtime admits 32 computations per device
# (`max_inflight_computations`) and blocks the launch of the 33rd on one of the
# threads that also start the queued computations; in a multi-process run
# (gloo collectives) that deadlocks as soon as a process gets ~35 steps ahead:
# both processes sit idle in the step call forever (benchmarks/
# multiprocess_stress.py; docs/multi_host.md). Eight queued steps keep any
# device busy; more only postpone the host's next look.
MAX_CALLS_IN_FLIGHT = 8


class _Mapped:
  """A pmapped function that compiles with XLA options and bounds how far the host runs ahead.

  `jax.pmap` takes no compiler options, but its ahead-of-time path does
  (`.lower(...).compile(compiler_options=...)`); with `options`, one
  executable is kept per tree structure, shapes and dtypes of the arguments,
  like pmap's own cache. Call t waits for call t - MAX_CALLS_IN_FLIGHT to
  finish before returning (on the oldest call's outputs that were not donated
  to a later call: a donated output is consumed by a call that finishes after
  it). Results are those of the plain pmapped function.
  """

  def __init__(self, mapped: Callable[..., Any], options: dict[str, str],
               out_of_memory: str | None = None, max_in_flight: int = MAX_CALLS_IN_FLIGHT):
    self._mapped = mapped
    self._options = options
    self._out_of_memory = out_of_memory
    self._executables: dict[Any, Any] = {}
    self._max_in_flight = max_in_flight
    self._in_flight: collections.deque[list[jax.Array]] = collections.deque()

  def _executable(self, args: tuple) -> Callable[..., Any]:
    if not self._options:
      return self._mapped
    leaves, treedef = jax.tree.flatten(args)
    signature = (treedef, tuple((np.shape(x), np.asarray(x).dtype if np.isscalar(x) else x.dtype)
                                for x in leaves))
    executable = self._executables.get(signature)
    if executable is None:
      executable = self._mapped.lower(*args).compile(compiler_options=self._options)
      self._executables[signature] = executable
    return executable

  def __call__(self, *args):
    try:
      outputs = self._executable(args)(*args)
    except jax.errors.JaxRuntimeError as e:
      if self._out_of_memory is None or 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      raise UserError(f'{self._out_of_memory} ({str(e).splitlines()[0][:200]}).') from e
    self._in_flight.append([x for x in jax.tree.leaves(outputs) if isinstance(x, jax.Array)])
    while len(self._in_flight) > self._max_in_flight:
      jax.block_until_ready([x for x in self._in_flight.popleft() if not x.is_deleted()])
    return outputs


def pmap(fn: Callable[..., Any], devices: Sequence[jax.Device],
         donate_argnums: tuple[int, ...] = (), out_of_memory: str | None = None
         ) -> Callable[..., Any]:
  """`fn` mapped over `devices` with the collective axis `AXIS_NAME`.

  In a multi-process run the collectives must span every device of every
  process, which pmap does only when given no `devices`; each process must then
  use all its local devices. On CPUs it compiles with `CPU_COMPILER_OPTIONS`
  (in one process; pmap's ahead-of-time path wants global arrays across
  processes, so a multi-process CPU run compiles with XLA's defaults). At most
  `MAX_CALLS_IN_FLIGHT` calls are queued on the devices at any time. A call
  that runs out of device memory ends in `UserError(out_of_memory)`, where
  given: one sentence saying what to lower, not an allocator's trace.
  """
  if jax.process_count() > 1:
    if len(devices) != jax.local_device_count():
      raise UserError(
          f'A multi-process run uses every local device ({jax.local_device_count()}), not '
          f'{len(devices)}; set config.num_devices=-1.')
    return _Mapped(jax.pmap(fn, axis_name=AXIS_NAME, devices=None,
                            donate_argnums=donate_argnums), {}, out_of_memory)
  mapped = jax.pmap(fn, axis_name=AXIS_NAME, devices=devices, donate_argnums=donate_argnums)
  return _Mapped(mapped, compiler_options(devices[0].platform), out_of_memory)


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
  """Leaves [len(devices), ...] split over `devices`: row d on device d."""
  sharding = _device_axis_sharding(devices)
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


def unreplicate(tree: Any) -> Any:
  """The first replica of every leaf, as host numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data[0])
                      if isinstance(x, jax.Array) else np.asarray(x)[0], tree)


# ----------------------------------------------------------------------------
# The config fields of the devices.


def _check_num_devices(c: spec.Checker, path: str) -> None:
  num_devices = c.integer(path)
  if num_devices != -1 and num_devices < 1:
    raise UserError(f'config.num_devices is {num_devices}; use -1 (all local devices) or N >= 1.')


FIELDS = {
    'num_devices': spec.Field(-1, _check_num_devices, '-1: every local device'),
    'collective_timeout_secs': spec.Field(300.0, spec.number(0.0, hint=(
        'config.collective_timeout_secs is {value}; use 0 (never) or a positive number of '
        'seconds.')), 'a stuck collective ends the run after this long'),
    'compilation_cache_dir': spec.Field(layout.COMPILATION_CACHE, spec.text(),
                                     "JAX's persistent cache, under WORKDIR if relative"),
}


spec.declare(__name__, FIELDS)
