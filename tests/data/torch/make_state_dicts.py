"""Writes the PyTorch files tests/test_pretrained.py reads, with torch (a side venv).

  CIFAR_JAX_TORCH_PYTHON=/venv-with-torch/bin/python; $CIFAR_JAX_TORCH_PYTHON \
      tests/data/torch/make_state_dicts.py OUT_DIR

OUT_DIR/state_dict.pt: a training script's save -- {'epoch', 'net': a DataParallel state dict
('module.' prefixes) of float32 (one a transposed view), float16, bfloat16 and int64 tensors};
OUT_DIR/expected.npz: the same tensors as numpy arrays (bfloat16 as float32), to compare with.
"""

import collections
import os
import sys

import numpy as np
import torch


def main(out: str) -> None:
  torch.manual_seed(0)
  linear = torch.randn(4, 2)
  state = collections.OrderedDict([
      ('module.conv1.weight', torch.randn(4, 3, 3, 3)),
      ('module.bn1.weight', torch.rand(4) + 0.5),
      ('module.bn1.bias', torch.randn(4)),
      ('module.bn1.running_mean', torch.randn(4)),
      ('module.bn1.running_var', torch.rand(4) + 0.5),
      ('module.bn1.num_batches_tracked', torch.tensor(7)),
      ('module.linear.weight', linear.t()),  # a view with strides (1, 2): saved as strided
      ('module.linear.bias', torch.randn(2)),
      ('module.half', torch.randn(3).half()),
      ('module.brain', torch.randn(3).bfloat16()),
  ])
  torch.save({'epoch': 3, 'acc': 91.5, 'net': state}, os.path.join(out, 'state_dict.pt'))
  np.savez(os.path.join(out, 'expected.npz'),
           **{name: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
              for name, value in state.items()})


if __name__ == '__main__':
  main(sys.argv[1])
