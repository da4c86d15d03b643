"""PyTorch weights without PyTorch: a `.pt` or `.pth` state dict read into numpy, renamed.

`read_state_dict(path)` reads what `torch.save` writes (its zip format, PyTorch 1.6 and later):
a state dict ({name: tensor}), or a dict holding one (`{'state_dict': ...}`, `{'net': ...}`,
as training scripts save them). It unpickles with a closed list of what a state dict is made
of -- tensors, their storages, ordered dicts, numbers and strings -- so a file that holds any
other Python object is refused instead of run (what `torch.load(weights_only=True)` does).

`to_variables(state_dict)` renames PyTorch's parameters to cifar_jax's: the families that
mirror PyTorch networks name each module as PyTorch does with '.' replaced by '_'
('layer1.0.conv1.weight' is `params` 'layer1_0_conv1/kernel'), kernels transposed to Flax's
layout (OIHW -> HWIO, [out, in] -> [in, out]), a 1-D `weight` being a norm's `scale`, and
BatchNorm's `running_mean` / `running_var` its `batch_stats` `mean` / `var` (PyTorch's
unbiased variance, which those families keep as PyTorch does).
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile

import jax.numpy as jnp
import numpy as np

from cifar_jax.core.errors import UserError

# torch's storage classes -> numpy dtypes (what `torch.save` pickles for each tensor).
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': jnp.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
# Where training scripts keep the state dict inside what they save, in order of preference.
_HOLDERS = ('state_dict', 'model_state_dict', 'model', 'net', 'module', 'ema', 'model_ema')


class _StorageType:
  """Stands for a torch storage class while unpickling: its element type."""

  def __init__(self, dtype: np.dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied."""
  del unused  # requires_grad, backward hooks, metadata
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  del unused  # requires_grad, backward hooks
  return data


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles only what a state dict is made of (see the module's documentation)."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
    super().__init__(file)
    self._archive, self._prefix, self._path = archive, prefix, path
    self._byteorder = '<' if byteorder == 'little' else '>'
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor
    if (module, name) == ('torch._utils', '_rebuild_parameter'):
      return _rebuild_parameter
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise UserError(f'{self._path} holds a Python object of class {module}.{name}, not only '
                    'tensors; save the network\'s weights alone '
                    '(torch.save(model.state_dict(), path)) and name that file.')

  def persistent_load(self, pid):
    kind, storage_type, key, _, _ = pid
    if kind != 'storage' or not isinstance(storage_type, _StorageType):
      raise UserError(f'{self._path} holds a storage of an unknown kind ({pid[:2]}); save it '
                      'with torch.save(model.state_dict(), path).')
    if key not in self._storages:
      data = self._archive.read(f'{self._prefix}data/{key}')
      dtype = storage_type.dtype.newbyteorder(self._byteorder)
      self._storages[key] = np.frombuffer(data, dtype).astype(storage_type.dtype)
    return self._storages[key]


def _unpickle(path: str):
  if not zipfile.is_zipfile(path):
    raise UserError(f'{path} is not a PyTorch file of the format torch.save has written since '
                    'PyTorch 1.6; load and save it again with a recent PyTorch '
                    '(torch.save(torch.load(path), path)).')
  with zipfile.ZipFile(path) as archive:
    pickles = [name for name in archive.namelist() if name.endswith('data.pkl')]
    if len(pickles) != 1:
      raise UserError(f'{path} is a zip file but not one torch.save wrote (no data.pkl); name '
                      'a .pt / .pth file of PyTorch weights.')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = 'little'
    if f'{prefix}byteorder' in archive.namelist():
      byteorder = archive.read(f'{prefix}byteorder').decode().strip()
    with archive.open(pickles[0]) as file:
      return _StateDictUnpickler(file, archive, prefix, byteorder, path).load()


def _is_state_dict(value) -> bool:
  return (isinstance(value, dict) and bool(value)
          and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items()))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} of the PyTorch state dict in `path` (or of the one a dict there holds);
  DataParallel's 'module.' prefix is taken off."""
  loaded = _unpickle(path)
  if not _is_state_dict(loaded):
    held = ({key: value for key, value in loaded.items() if _is_state_dict(value)}
            if isinstance(loaded, dict) else {})
    preferred = [key for key in _HOLDERS if key in held]
    if preferred:
      loaded = held[preferred[0]]
    elif len(held) == 1:
      (loaded,) = held.values()
    else:
      what = (f'a dict of {sorted(map(str, loaded))}' if isinstance(loaded, dict)
              else type(loaded).__name__)
      raise UserError(f'{path} holds {what}, in which no single state dict of tensors was '
                      "found; save the network's weights alone "
                      '(torch.save(model.state_dict(), path)).')
  return {name.removeprefix('module.'): value for name, value in loaded.items()}


# PyTorch's leaf names -> (collection, cifar_jax's leaf name).
_LEAVES = {'bias': ('params', 'bias'), 'running_mean': ('batch_stats', 'mean'),
           'running_var': ('batch_stats', 'var')}


def to_variables(state_dict: dict[str, np.ndarray], renames: dict[str, str] | None = None
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
  """({'params/module/leaf' or 'batch_stats/module/leaf': array in Flax's layout}, the names
  of PyTorch's entries that are no variable of a network: BatchNorm's step counter).

  `renames` ({regex: replacement}) renames modules whose names differ beyond '.' -> '_' (a
  family's `TORCH_NAMES`).
  """
  variables, skipped = {}, []
  for name, value in state_dict.items():
    module, _, leaf = name.rpartition('.')
    module = module.replace('.', '_')
    for pattern, replacement in (renames or {}).items():
      module = re.sub(pattern, replacement, module)
    if leaf == 'weight':
      if value.ndim == 4:  # a convolution's [out, in, h, w] -> [h, w, in, out]
        variables[f'params/{module}/kernel'] = value.transpose(2, 3, 1, 0)
      elif value.ndim == 2:  # a linear layer's [out, in] -> [in, out]
        variables[f'params/{module}/kernel'] = value.T
      else:  # a norm's per-channel weight
        variables[f'params/{module}/scale'] = value
    elif leaf in _LEAVES:
      collection, flax_leaf = _LEAVES[leaf]
      variables[f'{collection}/{module}/{flax_leaf}'] = value
    else:
      skipped.append(name)
  return variables, skipped
