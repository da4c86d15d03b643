"""One size and channel count per split: resize (antialiased), aspect rules, channel conversion."""

import numpy as np
from PIL import Image
import pytest

from cifar_jax.data import image_format
from cifar_jax.data.image_format import ImageFormat


def _three_bands(height=40, width=80):
  """Red left quarter, green middle half, blue right quarter."""
  image = np.zeros((height, width, 3), np.uint8)
  image[:, : width // 4, 0] = 255
  image[:, width // 4 : 3 * width // 4, 1] = 255
  image[:, 3 * width // 4 :, 2] = 255
  return image


def test_the_datas_own_format_is_returned_byte_for_byte():
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  assert ImageFormat().apply(image) is image
  assert ImageFormat(size=(32, 32), channels=3).apply(image) is image
  grey = image[..., 0]
  np.testing.assert_array_equal(ImageFormat().apply(grey), grey[..., None])


def test_crop_covers_the_target_and_cuts_the_centre():
  out = ImageFormat(size=(20, 20), aspect='crop').apply(_three_bands())
  assert out.shape == (20, 20, 3)
  # The centred 40x40 box of the 40x80 image is the green half (the filter's support reaches
  # a pixel past the box at its edges: the outer columns are mostly green).
  np.testing.assert_array_equal(out[:, 1:-1, 1], 255)
  np.testing.assert_array_equal(out[:, 1:-1][..., [0, 2]], 0)
  assert out[..., 1].min() > 200
  # The same as Pillow's own resize of that box.
  box = Image.fromarray(_three_bands()).resize((20, 20), Image.Resampling.BILINEAR,
                                               box=(20, 0, 60, 40))
  np.testing.assert_array_equal(out, np.asarray(box))


def test_pad_fits_inside_and_centres_on_black():
  out = ImageFormat(size=(20, 20), aspect='pad').apply(_three_bands())
  assert out.shape == (20, 20, 3)
  # 40x80 scaled by 1/4 is 10x20: rows 5..14 hold the image, the bands above and below are zero.
  np.testing.assert_array_equal(out[:5], 0)
  np.testing.assert_array_equal(out[15:], 0)
  assert out[10, 1, 0] > 200 and out[10, 10, 1] > 200 and out[10, 18, 2] > 200


def test_stretch_keeps_every_band():
  out = ImageFormat(size=(20, 20), aspect='stretch').apply(_three_bands())
  assert out[10, 1, 0] > 200 and out[10, 10, 1] > 200 and out[10, 18, 2] > 200


@pytest.mark.parametrize('method', image_format.RESIZE_METHODS)
def test_downscaling_is_antialiased(method):
  # A one-pixel checkerboard averages to grey; point sampling would keep 0s and 255s.
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  out = ImageFormat(size=(16, 16), method=method).apply(np.stack([board] * 3, -1))
  assert np.abs(out[2:-2, 2:-2].astype(float) - 127.5).max() < 12


def test_channels_convert_with_pillows_luma_and_by_copying_grey():
  colour = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  grey = ImageFormat(channels=1).apply(colour)
  assert grey.shape == (8, 8, 1)
  np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.fromarray(colour).convert('L')))
  back = ImageFormat(channels=3).apply(grey)
  np.testing.assert_array_equal(back, np.repeat(grey, 3, axis=-1))


def test_size_pairs_and_cache_keys():
  assert image_format.size_pair(0) is None
  assert image_format.size_pair(64) == (64, 64)
  assert image_format.size_pair((48, 64)) == (48, 64)
  assert ImageFormat().key() == ''  # the data's own format: the same cache as before
  assert ImageFormat((64, 64), 'bicubic', 'pad', 1).key() == '64x64-bicubic-pad-c1'
  assert ImageFormat((64, 64)).key() != ImageFormat((64, 64), aspect='pad').key()


@pytest.mark.parametrize('aspect', image_format.RESIZE_ASPECTS)
def test_every_source_side_from_1_to_600_gives_exactly_the_target(aspect):
  # Real folders (photos of 500x375, 375x500, 500x333, ...; 49x49 to 64) were refused when the
  # centred box came out a hair larger than the image in floating point.
  targets = [ImageFormat(size=size, aspect=aspect) for size in ((64, 64), (32, 32), (24, 40))]
  for side in range(1, 601):
    other = max(1, side * 3 // 4 + side % 7)  # odd, uneven ratios
    for shape in ((side, other), (other, side), (side, side)):
      image = Image.new('L', shape[::-1])
      for target in targets:
        assert target.apply(image).shape == (*target.size, 1), (shape, target)


def test_photo_sizes_that_were_refused_are_resized():
  for height, width, size in ((375, 500, 64), (500, 375, 64), (333, 500, 64), (49, 49, 64),
                              (500, 333, 224), (123, 457, 32)):
    image = np.full((height, width, 3), 77, np.uint8)
    out = ImageFormat(size=(size, size), aspect='crop').apply(image)
    assert out.shape == (size, size, 3) and (out == 77).all()
