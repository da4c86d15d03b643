"""Writes the PyTorch file tests/test_pretrained.py reads, with torch (a side venv).

  $CIFAR_JAX_TORCH_PYTHON tests/data/torch/make_state_dicts.py OUT_DIR

OUT_DIR/state_dict.pt: a training script's save -- {'epoch', 'acc', 'net': a DataParallel state
dict ('module.' prefixes) of float32 (one a transposed view), float16, bfloat16 and int64
tensors}. Their values are `tensor_values(name, shape)`, exact in every dtype, so the test
computes what torch wrote without a second file.
"""

import collections
import os
import sys

import numpy as np

SHAPES = collections.OrderedDict([  # name -> shape, dtype (as written)
    ('module.conv1.weight', ((4, 3, 3, 3), 'float32')),
    ('module.bn1.weight', ((4,), 'float32')),
    ('module.bn1.bias', ((4,), 'float32')),
    ('module.bn1.running_mean', ((4,), 'float32')),
    ('module.bn1.running_var', ((4,), 'float32')),
    ('module.bn1.num_batches_tracked', ((), 'int64')),
    ('module.linear.weight', ((2, 4), 'float32')),  # saved as a transposed (strided) view
    ('module.linear.bias', ((2,), 'float32')),
    ('module.half', ((3,), 'float16')),
    ('module.brain', ((3,), 'bfloat16')),
])


def tensor_values(name: str, shape: tuple[int, ...]) -> np.ndarray:
  """Quarter steps from a per-name offset: exact in float16 and bfloat16 too."""
  offset = sum(map(ord, name)) % 7
  return ((np.arange(int(np.prod(shape))) + offset) % 17 * 0.25 - 2.0).reshape(shape)


def main(out: str) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  state = collections.OrderedDict()
  for name, (shape, dtype) in SHAPES.items():
    values = torch.tensor(tensor_values(name, shape))
    if name == 'module.linear.weight':
      values = torch.tensor(tensor_values(name, shape).T.copy()).t()  # strides (1, 2)
    state[name] = values.to(getattr(torch, dtype))
  assert not state['module.linear.weight'].is_contiguous()
  torch.save({'epoch': 3, 'acc': 91.5, 'net': state}, os.path.join(out, 'state_dict.pt'))


if __name__ == '__main__':
  main(sys.argv[1])
