"""Where the training split lives, and how each device call's examples reach the devices.

`config.dataset.placement`:

* ``device``: a copy of the whole uint8 split on every device (`DeviceFeed`);
  a call gets the indices [devices, n, B] and each device gathers its rows
  itself. Nothing crosses from the host per step but the indices: the fastest
  where the split fits.
* ``host``: the split stays in host memory -- or on disk, in the decoded
  cache (`datasets`: opened memory-mapped, so nothing is read until used;
  each batch's rows read from the file) -- and a thread gathers each call's
  rows on the host and copies them to the devices while the previous calls
  run (`HostFeed`, `PREFETCH_CALLS` ahead). Device memory then holds a few
  calls' batches, not the split, and host memory not the split either.
* ``auto``: ``device`` where the split takes at most `DEVICE_MEMORY_SHARE` of
  a device's memory (on CPUs: of the host's), else ``host``; one log line says
  which and why.

The two give the same parameters bit for bit: the rows are the same uint8
values, and the augmentation is keyed by the example's index, not by where it
was gathered. Grain's loaders were weighed for ``host``: they bring
checkpointable iteration and worker processes for decoding per step, but
here every example is decoded once into the cache and the order is already a
pure function of (seed, step) (`input_pipeline.BatchSchedule`), so resume
needs no iterator state; what is left per call is one gather and one copy,
which a thread overlaps with the step without a second process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import concurrent.futures
import os

from absl import logging
import jax
import numpy as np

from cifar_jax.core import parallel
from cifar_jax.data import datasets, input_pipeline
from cifar_jax.training.loop import Call

# `auto` keeps the split on the devices while one copy takes at most this share of a
# device's memory: the rest is for the activations, the state and XLA's buffers.
DEVICE_MEMORY_SHARE = 0.25
# Calls whose batches the host feed gathers and copies ahead of the one running.
PREFETCH_CALLS = 2


def device_memory_bytes(device: jax.Device) -> int:
  """A device's memory (its allocator's limit); for CPUs, the host's physical memory."""
  stats = None
  try:
    stats = device.memory_stats()
  except (AttributeError, NotImplementedError, RuntimeError, jax.errors.JaxRuntimeError):
    pass
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def split_bytes(split: datasets.Split) -> int:
  return int(split.images.nbytes + split.labels.nbytes)


def choose(placement: str, split: datasets.Split, devices: Sequence[jax.Device]) -> str:
  """`config.dataset.placement` for `split` on `devices`: device or host (see the module doc)."""
  if placement != 'auto':
    return placement
  need, memory = split_bytes(split), device_memory_bytes(devices[0])
  chosen = 'device' if need <= DEVICE_MEMORY_SHARE * memory else 'host'
  logging.info('config.dataset.placement=auto: the training split (%.1f MiB) takes %.1f%% of a '
               '%s device\'s memory (%.1f GiB); it lives on the %s.', need / 2**20,
               100 * need / memory, devices[0].platform, memory / 2**30, chosen)
  return chosen


class DeviceFeed:
  """The whole split on every device; a call gets its indices only."""

  gathered = False  # the step gathers the rows itself

  def __init__(self, split: datasets.Split, devices: Sequence[jax.Device],
               schedule: input_pipeline.BatchSchedule):
    self.data = input_pipeline.put_on_devices(split, devices)
    self._schedule = schedule

  def calls(self, calls: Iterator[Call]
            ) -> Iterator[tuple[Call, input_pipeline.DeviceData, np.ndarray]]:
    """(call, data, indices [devices, (R,) n, B]) for each of `calls`."""
    for call in calls:
      yield call, self.data, self._schedule.indices(call.start, call.num_steps)

  def close(self) -> None:
    pass


class HostFeed:
  """The split in host memory (or memory-mapped); each call's rows gathered and copied ahead."""

  gathered = True  # the step receives its rows: DeviceData [devices, (R,) n, B, ...]

  def __init__(self, split: datasets.Split, devices: Sequence[jax.Device],
               schedule: input_pipeline.BatchSchedule, prefetch: int = PREFETCH_CALLS):
    self._split = split
    self._devices = list(devices)
    self._schedule = schedule
    self._prefetch = prefetch
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='host_feed')
    images = split.images
    # A split memory-mapped from the cache is read with plain reads (`_read_rows`).
    self._file = (open(images.filename, 'rb', buffering=0)  # pylint: disable=consider-using-with
                  if isinstance(images, np.memmap) and images.filename else None)

  def _read_rows(self, rows: np.ndarray) -> np.ndarray:
    """Examples `rows` of the cached split, read from its file (not through the map).

    Through the map, each touched page stays mapped into this process (and the
    kernel maps whole large folios of the page cache around it): a few hundred
    steps of scattered examples would map most of a split of several GiB.
    Plain reads copy the rows out of the kernel's page cache, which it keeps or
    drops as memory allows, so the trainer holds only its batches.
    """
    images = self._split.images
    row_bytes = int(np.prod(images.shape[1:]))
    out = np.empty((len(rows), *images.shape[1:]), np.uint8)
    view = memoryview(out.reshape(-1))
    for k, row in enumerate(rows):
      os.preadv(self._file.fileno(), [view[k * row_bytes:(k + 1) * row_bytes]],
                images.offset + int(row) * row_bytes)
    return out

  def gather(self, indices: np.ndarray) -> input_pipeline.DeviceData:
    """The rows of `indices` [devices, ...], on the devices (host gather, then one copy)."""
    # Sorted reads are sequential on disk; the rows go back to the schedule's order.
    order = np.argsort(indices, axis=None, kind='stable')
    flat = np.empty((indices.size, *self._split.images.shape[1:]), np.uint8)
    rows = indices.reshape(-1)[order]
    flat[order] = self._read_rows(rows) if self._file else self._split.images[rows]
    images = flat.reshape(*indices.shape, *flat.shape[1:])
    labels = self._split.labels[indices]
    return parallel.shard(input_pipeline.DeviceData(images=images, labels=labels), self._devices)

  def _prepare(self, call: Call) -> tuple[Call, input_pipeline.DeviceData, np.ndarray]:
    indices = self._schedule.indices(call.start, call.num_steps)
    return call, self.gather(indices), indices

  def calls(self, calls: Iterator[Call]
            ) -> Iterator[tuple[Call, input_pipeline.DeviceData, np.ndarray]]:
    """(call, its rows on the devices, indices) for each of `calls`, `prefetch` prepared ahead."""
    pending: list[concurrent.futures.Future] = []
    calls = iter(calls)
    try:
      while True:
        while len(pending) < self._prefetch + 1:
          call = next(calls, None)
          if call is None:
            break
          pending.append(self._pool.submit(self._prepare, call))
        if not pending:
          return
        yield pending.pop(0).result()
    finally:
      for future in pending:
        future.cancel()

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
    if self._file is not None:
      self._file.close()


def create_feed(placement: str, split: datasets.Split, devices: Sequence[jax.Device],
                schedule: input_pipeline.BatchSchedule) -> DeviceFeed | HostFeed:
  """The feed of a chosen placement (`choose`): device or host."""
  feed = HostFeed if placement == 'host' else DeviceFeed
  return feed(split, devices, schedule)
