"""One size and channel count for every image of a split, made once when the split is loaded.

`config.dataset.image_size` (0: keep; an int for square images; (height,
width)) resizes each image with an antialiased filter
(`config.dataset.resize_method`: Pillow's ``bilinear``, ``bicubic``,
``lanczos`` or ``box``, which downscale with a filter widened by the
downscaling factor, so that nothing aliases). An image of another aspect
ratio than the target is fitted by `config.dataset.resize_aspect`:

* ``crop``: scaled to cover the target, then its centre cut out (the default:
  nothing of the target is blank, an edge of the longer side is lost);
* ``pad``: scaled to fit inside the target, then centred on black (nothing is
  lost, the bands are zeros);
* ``stretch``: scaled to the target in each direction (the shape is distorted).

`config.dataset.channels` converts: 1 (Pillow's ITU-R 601-2 luma) or 3
(grey copied to each channel); 0 keeps the data's (a split that mixes grey
and colour images becomes colour). Images already of the target size and
channel count are returned unchanged, byte for byte.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

RESIZE_METHODS = ('bilinear', 'bicubic', 'lanczos', 'box')
RESIZE_ASPECTS = ('crop', 'pad', 'stretch')
CHANNELS = (0, 1, 3)


def size_pair(value: Any) -> tuple[int, int] | None:
  """`config.dataset.image_size` as (height, width); None for 0 (keep the data's size)."""
  if isinstance(value, int):
    return None if value == 0 else (value, value)
  height, width = value
  return int(height), int(width)


@dataclasses.dataclass(frozen=True)
class ImageFormat:
  """The size (None: keep), resize method, aspect rule and channels (0: keep) of a split."""

  size: tuple[int, int] | None = None
  method: str = 'bilinear'
  aspect: str = 'crop'
  channels: int = 0

  @classmethod
  def from_config(cls, dataset_config: ml_collections.ConfigDict) -> ImageFormat:
    return cls(size_pair(dataset_config.image_size), dataset_config.resize_method,
               dataset_config.resize_aspect, dataset_config.channels)

  @property
  def changes_images(self) -> bool:
    return self.size is not None or self.channels != 0

  def key(self) -> str:
    """What the decoded cache's file name records of the format ('' for the data's own)."""
    if not self.changes_images:
      return ''
    size = f'{self.size[0]}x{self.size[1]}-{self.method}-{self.aspect}' if self.size else 'size'
    return f'{size}-c{self.channels}'

  def apply(self, image: Any, channels: int | None = None) -> np.ndarray:
    """A Pillow image or uint8 [H, W(, C)] array in this format, as uint8 [H, W, C].

    `channels` (1 or 3) overrides `self.channels` (the split's choice when
    `self.channels` is 0: see `decode_channels`).
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    channels = channels or self.channels
    if isinstance(image, np.ndarray):
      if (self.size is None or tuple(image.shape[:2]) == self.size) and (
          channels in (0, image.shape[-1] if image.ndim == 3 else 1)):
        return image if image.ndim == 3 else image[..., None]
      image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    mode = {1: 'L', 3: 'RGB'}[channels or decode_channels(image.mode)]
    if image.mode != mode:
      image = image.convert(mode)
    if self.size is not None and (image.height, image.width) != self.size:
      image = self._resized(image)
    array = np.asarray(image, np.uint8)
    return array if array.ndim == 3 else array[..., None]

  def _resized(self, image: Any) -> Any:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    resample = getattr(Image.Resampling, self.method.upper())
    height, width = self.size
    if self.aspect == 'stretch':
      return image.resize((width, height), resample)
    cover = self.aspect == 'crop'
    scale = (max if cover else min)(height / image.height, width / image.width)
    if cover:
      # The centred box of the source that maps onto the target exactly. On the side that
      # decides the scale the box is the whole side, but `target / scale` can come out a
      # hair above it in floating point, and Pillow refuses a box outside the image:
      # clamped to the image, it is the whole side.
      box_w, box_h = min(image.width, width / scale), min(image.height, height / scale)
      left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
      box = (left, top, min(image.width, left + box_w), min(image.height, top + box_h))
      return image.resize((width, height), resample, box=box)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new(image.mode, (width, height))
    canvas.paste(image.resize(inner, resample),
                 ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


def decode_channels(mode: str) -> int:
  """The channels an image of Pillow `mode` keeps when the config keeps the data's (0)."""
  return 1 if mode in ('L', 'LA', '1', 'I', 'I;16', 'F') else 3
