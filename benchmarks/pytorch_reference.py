r"""The tutorial network's training step in PyTorch, for a side-by-side speed check.

  pip install torch==2.13.0   # not a dependency of cifar_jax
  python benchmarks/pytorch_reference.py [--batch=128] [--steps=30] [--repeats=5]

The same computation as `cifar_jax.run.train.train_step` with the tutorial config:
conv 5x5x64 + ReLU, max-pool 3x3/2 with TF's 'SAME' padding (0 before, 1
after), LRN (radius 4, bias 1, alpha 0.001/9 in TF's convention, beta 0.75),
conv, ReLU, LRN, pool, dense 384 and 192 with ReLU, logits; softmax
cross-entropy plus 0.004 * l2_loss of the dense kernels; plain SGD and an EMA
of every parameter (decay 0.9999) after each step. Random data already in
memory; both memory formats are timed and the faster is reported. The last
line is machine-readable.
"""

import argparse
import os
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F  # noqa: N812  (PyTorch convention)


class TutorialCNN(nn.Module):
  """cifar10.py's inference(), in PyTorch's NCHW convention."""

  def __init__(self, crop: int = 24, num_classes: int = 10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
    self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
    pooled = crop
    for _ in range(2):  # two 'SAME' 3x3/2 pools: ceil(size / 2) each
      pooled = -(-pooled // 2)
    self.local3 = nn.Linear(64 * pooled * pooled, 384)
    self.local4 = nn.Linear(384, 192)
    self.logits = nn.Linear(192, num_classes)
    # torch's LRN divides alpha by the window size; TF's does not.
    self.norm = nn.LocalResponseNorm(size=9, alpha=0.001 / 9.0 * 9, beta=0.75, k=1.0)

  @staticmethod
  def pool(x):
    # TF 'SAME' for a 3x3/2 window on an even size pads one row/column after.
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float('-inf')), 3, 2)

  def forward(self, x):
    x = self.norm(self.pool(F.relu(self.conv1(x))))
    x = self.pool(self.norm(F.relu(self.conv2(x))))
    x = torch.flatten(x, 1)
    x = F.relu(self.local3(x))
    x = F.relu(self.local4(x))
    return self.logits(x)


def measure(batch: int, crop: int, steps: int, repeats: int, channels_last: bool) -> list[float]:
  torch.manual_seed(0)
  model = TutorialCNN(crop)
  images = torch.randn(batch, 3, crop, crop)
  labels = torch.randint(0, 10, (batch,))
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params]
  optimizer = torch.optim.SGD(params, lr=0.1)

  def step():
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    decay = 0.004 * 0.5 * (model.local3.weight.square().sum() + model.local4.weight.square().sum())
    loss = F.cross_entropy(logits, labels) + decay
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - 0.9999)
    return loss

  for _ in range(3):
    step()
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    for _ in range(steps):
      loss = step()
    loss.item()
    seconds.append((time.perf_counter() - started) / steps)
  return seconds


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--crop', type=int, default=24)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  results = {}
  for channels_last in (False, True):
    seconds = measure(args.batch, args.crop, args.steps, args.repeats, channels_last)
    rates = sorted(args.batch / s for s in seconds)
    name = 'channels_last' if channels_last else 'NCHW'
    results[name] = statistics.median(rates)
    print(f'pytorch {torch.__version__} {name:<13} train step {results[name]:9.1f} images/s '
          f'(min {rates[0]:.1f}, max {rates[-1]:.1f}), {torch.get_num_threads()} threads')
  best = max(results, key=results.get)
  print(f'train_step_img_per_s={results[best]:.1f} memory_format={best}')


if __name__ == '__main__':
  main()
