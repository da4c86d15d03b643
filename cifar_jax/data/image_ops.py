"""The single-image operations the augmentations are made of ([H, W, C] float32, 0-255 scale).

Each is TensorFlow's or torchvision's operation of the same name, written with jax.numpy so
that it runs inside the jitted training step (`augmentations` composes them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax.data.input_pipeline import crop_shape


def random_crop(key: jax.Array, image: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """A `size` x `size` window (0: the image's size) at a uniformly random position."""
  height, width = crop_shape(image.shape, size)
  top_key, left_key = jax.random.split(key)
  top = jax.random.randint(top_key, (), 0, image.shape[0] - height + 1)
  left = jax.random.randint(left_key, (), 0, image.shape[1] - width + 1)
  return jax.lax.dynamic_slice(image, (top, left, 0), (height, width, image.shape[2]))


def resize_box(image: jax.Array, top: jax.Array, left: jax.Array, height: jax.Array,
               width: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
  """The box (top, left, height, width) of `image`, in pixels, resized to `out_shape`.

  Linear interpolation with an antialiasing filter widened by the
  downscaling factor (`jax.image.scale_and_translate`); the box may be traced.
  """
  scale = jnp.stack([out_shape[0] / height, out_shape[1] / width]).astype(jnp.float32)
  translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
  return jax.image.scale_and_translate(image, (*out_shape, image.shape[2]), (0, 1), scale,
                                       translation, method='linear', antialias=True)


def random_resized_crop(key: jax.Array, image: jax.Array, size: int,
                        scale: tuple[float, float], ratio: tuple[float, float]) -> jax.Array:
  """A box of a random share of the area and aspect ratio, resized to `size` (0: image size).

  The share is uniform in `scale`, the ratio (width / height) log-uniform in
  `ratio`, as torchvision's RandomResizedCrop; where the box would leave the
  image, its sides are clipped to the image's instead of drawing again (one
  draw keeps it a fixed-shape computation).
  """
  image_h, image_w = image.shape[0], image.shape[1]
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = jax.random.uniform(area_key, (), minval=scale[0], maxval=scale[1]) * image_h * image_w
  aspect = jnp.exp(jax.random.uniform(ratio_key, (), minval=np.log(ratio[0]),
                                      maxval=np.log(ratio[1])))
  width = jnp.clip(jnp.sqrt(area * aspect), 1.0, image_w)
  height = jnp.clip(jnp.sqrt(area / aspect), 1.0, image_h)
  top = jax.random.uniform(top_key, ()) * (image_h - height)
  left = jax.random.uniform(left_key, ()) * (image_w - width)
  return resize_box(image, top, left, height, width, crop_shape(image.shape, size))


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
  """`tf.image.adjust_brightness` on a float image (no clipping, as in TF)."""
  return image + delta


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """`tf.image.adjust_contrast`: (x - channel mean) * factor + channel mean."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def reflect_pad(image: jax.Array, pixels: int) -> jax.Array:
  """`np.pad(..., mode='reflect')` of an [H, W, C] image (the edge is not repeated)."""
  return jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)), mode='reflect')


def zero_pad(image: jax.Array, pixels: int) -> jax.Array:
  """torchvision's `RandomCrop(padding=pixels)` padding of an [H, W, C] image: black (0)."""
  return jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)))
