r"""A generated image folder to try your-own-data recipes on: shapes on clutter, any size.

  python benchmarks/make_image_folder.py --out=/tmp/shapes --size=64 --per_class=600 \
      [--min_size=48 --max_size=80] [--grey]

Writes OUT/train/<class>/NNNN.png for five classes (circle, square,
triangle, cross, ring): one shape of random size, position, colour and
line width on a background of random colour blobs and noise, so that a
class is its outline, not its colour or place. `--min_size`/`--max_size`
draw each image's side from that range instead (a folder of mixed sizes, as
real photo folders are); `--grey` writes grey PNGs. Deterministic in
`--seed`.
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('circle', 'cross', 'ring', 'square', 'triangle')


def draw(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
  """One `size` x `size` RGB image of `shape` on clutter."""
  background = tuple(int(v) for v in rng.integers(0, 256, 3))
  image = Image.new('RGB', (size, size), background)
  canvas = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(2, 6))):  # clutter: soft blobs of other colours
    x, y = rng.uniform(0, size, 2)
    r = rng.uniform(size / 12, size / 5)
    canvas.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in
                                                            rng.integers(0, 256, 3)))
  colour = tuple(int(v) for v in rng.integers(0, 256, 3))
  radius = rng.uniform(size / 6, size / 3)
  cx, cy = rng.uniform(radius, size - radius, 2)
  width = max(1, int(rng.uniform(size / 32, size / 12)))
  box = (cx - radius, cy - radius, cx + radius, cy + radius)
  if shape == 'circle':
    canvas.ellipse(box, fill=colour)
  elif shape == 'ring':
    canvas.ellipse(box, outline=colour, width=width)
  elif shape == 'square':
    canvas.rectangle(box, fill=colour)
  elif shape == 'triangle':
    angle = rng.uniform(0, 2 * np.pi)
    points = [(cx + radius * np.cos(angle + k * 2 * np.pi / 3),
               cy + radius * np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)]
    canvas.polygon(points, fill=colour)
  else:  # cross
    canvas.line((box[0], cy, box[2], cy), fill=colour, width=width)
    canvas.line((cx, box[1], cx, box[3]), fill=colour, width=width)
  pixels = np.asarray(image, np.int16) + rng.integers(-20, 21, (size, size, 3))
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_folder(out: str, per_class: int, size: int, min_size: int = 0, max_size: int = 0,
                 grey: bool = False, seed: int = 0) -> int:
  """Writes the folder; returns the number of images."""
  rng = np.random.default_rng(seed)
  for shape in CLASSES:
    os.makedirs(os.path.join(out, 'train', shape), exist_ok=True)
    for i in range(per_class):
      side = int(rng.integers(min_size, max_size + 1)) if max_size else size
      image = draw(rng, shape, side)
      (image.convert('L') if grey else image).save(
          os.path.join(out, 'train', shape, f'{i:04d}.png'))
  return per_class * len(CLASSES)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--size', type=int, default=64)
  parser.add_argument('--per_class', type=int, default=600)
  parser.add_argument('--min_size', type=int, default=0)
  parser.add_argument('--max_size', type=int, default=0)
  parser.add_argument('--grey', action='store_true')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  count = write_folder(args.out, args.per_class, args.size, args.min_size, args.max_size,
                       args.grey, args.seed)
  print(f'wrote {count} images of {len(CLASSES)} classes to {args.out}/train')


if __name__ == '__main__':
  main()
