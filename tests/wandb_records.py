"""Reads W&B's offline runs back (their .wandb files), for the tests of the W&B writer.

A .wandb file is W&B's record log: a 7-byte header (':W&B', a magic number, a version), then
its `Record` protos in LevelDB's log framing (32 KiB blocks; each chunk a 7-byte header of
CRC32, length and type: full, first, middle or last). wandb no longer ships a Python reader.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: str):
  """The `wandb_internal_pb2.Record`s of one .wandb file, in order."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:4] == b':W&B', f'{path} is no W&B run file'
  position, pending = _HEADER, b''
  while position + _HEADER <= len(data):
    left_in_block = _BLOCK - position % _BLOCK
    if left_in_block < _HEADER:  # the block's tail is padding
      position += left_in_block
      continue
    _, length, kind = struct.unpack('<IHB', data[position:position + _HEADER])
    position += _HEADER
    chunk = data[position:position + length]
    position += length
    if kind == 0:
      continue
    pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
    if kind in (_FULL, _LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record
      pending = b''


@dataclasses.dataclass
class OfflineRun:
  """One offline W&B run file: its identity, config and history rows."""

  path: str
  run_id: str = ''
  group: str = ''
  job_type: str = ''
  name: str = ''
  config: dict[str, Any] = dataclasses.field(default_factory=dict)
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def rows_at(self, step: int) -> list[dict[str, Any]]:
    return [row for row in self.history if row.get('step') == step]


def read_run(path: str) -> OfflineRun:
  run = OfflineRun(path)
  for record in records(path):
    kind = record.WhichOneof('record_type')
    if kind == 'run':
      run.run_id, run.group = record.run.run_id, record.run.run_group
      run.job_type, run.name = record.run.job_type, record.run.display_name
      run.config.update({item.key: json.loads(item.value_json)
                         for item in record.run.config.update})
    elif kind == 'config':
      run.config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    elif kind == 'history':
      run.history.append({item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                          for item in record.history.item})
  return run


def offline_runs(logdir: str) -> list[OfflineRun]:
  """Every offline run W&B wrote under LOGDIR/wandb, oldest first."""
  paths = sorted(glob.glob(os.path.join(logdir, 'wandb', 'offline-run-*', 'run-*.wandb')))
  return [read_run(path) for path in paths]
