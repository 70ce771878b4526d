"""Image files: one decoder for every folder source, and a split kept as files (`data.streaming`).

`read_image` is how every image file becomes pixels, whether a split is decoded into memory at
load or streamed: decode (PNG/JPEG/BMP/GIF, 3 channels) and, given a size, a bilinear
antialiased resize to size x size rounded back to uint8. `ImageFiles` holds a split's paths and
stands in for the (N, H, W, 3) uint8 array of the in-memory sources: the pipelines read each
image from its file when a batch needs it, so a dataset of any size costs memory only for its
paths. A streamed split yields the same pixels as the same split loaded into memory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from amcl_jax.data._tf import available as tensorflow_available
from amcl_jax.data._tf import tf


def resize_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """(H, W, 3) or (N, H, W, 3) uint8 -> size x size uint8: bilinear, antialiased, rounded."""
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def resize_square_without_tensorflow(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 as `resize_square` resizes, without TF.

    `jax.image.resize(..., "linear", antialias=True)` uses the same scale-and-translate kernel
    as `tf.image.resize(antialias=True)` (a triangle filter stretched by the scale when
    shrinking), then the same clip and round. Tolerance against `resize_square`: at most one
    grey level per pixel, on under 1% of pixels (float32 sums landing on either side of .5);
    upsampling the 8x8 digits to 16 or 32 is identical (tests/test_data.py measures both).
    Computed on the CPU when JAX has one, so every machine gets the same pixels.
    """
    try:
        device = jax.devices("cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without "cpu": the default device.
        device = None
    with jax.default_device(device):
        return np.asarray(_jax_resize(np.asarray(images), size))


@functools.partial(jax.jit, static_argnums=1)
def _jax_resize(images: jax.Array, size: int) -> jax.Array:
    resized = jax.image.resize(images.astype(jnp.float32),
                               (images.shape[0], size, size, images.shape[3]), "linear",
                               antialias=True)
    return jnp.round(jnp.clip(resized, 0.0, 255.0)).astype(jnp.uint8)


# Evaluation of ImageNet-style images: the shorter side resized to size / CENTRE_CROP_FRACTION
# (224 -> 256), then the central size x size square, instead of squashing the whole image.
CENTRE_CROP_FRACTION = 0.875


def resize_centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: the shorter side resized (bilinear,
    antialiased) to round(size / 0.875), then the central size x size crop, rounded."""
    shorter = int(round(size / CENTRE_CROP_FRACTION))
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    scale = shorter / tf.cast(tf.minimum(height, width), tf.float64)
    new_height = tf.maximum(tf.cast(tf.round(tf.cast(height, tf.float64) * scale), tf.int32),
                            shorter)
    new_width = tf.maximum(tf.cast(tf.round(tf.cast(width, tf.float64) * scale), tf.int32),
                           shorter)
    resized = tf.image.resize(tf.cast(image, tf.float32), (new_height, new_width),
                              antialias=True)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    crop = resized[top:top + size, left:left + size]
    return tf.ensure_shape(tf.cast(tf.round(tf.clip_by_value(crop, 0.0, 255.0)), tf.uint8),
                           (size, size, 3))


def decode_image(encoded: tf.Tensor, size: int | None = None, centre_crop: bool = False
                 ) -> tf.Tensor:
    """Encoded image bytes (a string tensor) as (H, W, 3) uint8; given a `size`, resized to
    size x size (`centre_crop`: the central crop of `resize_centre_crop` instead)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if size is None:
        return image
    return resize_centre_crop(image, size) if centre_crop else resize_square(image, size)


def read_image(path: tf.Tensor, size: int | None = None, centre_crop: bool = False
               ) -> tf.Tensor:
    """The image file at `path` (a string tensor) as `decode_image` gives it."""
    return decode_image(tf.io.read_file(path), size, centre_crop)


class ImageFiles:
    """A split's images as files, decoded when the input pipeline reads them.

    Used where the in-memory sources return an (N, H, W, 3) uint8 array: `len(files)` is N, and
    indexing with an integer or boolean array (subsets, dropping unlabelled examples) gives the
    ImageFiles of those examples. Images are decoded at their native size unless `size` is set
    (then resized to size x size, or centre-cropped with `centre_crop`: `resize_centre_crop`).
    """

    def __init__(self, paths: Sequence[str] | np.ndarray, size: int | None = None,
                 centre_crop: bool = False) -> None:
        self.paths = np.asarray(paths, dtype=object).reshape(-1)
        self.size = size
        self.centre_crop = centre_crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> ImageFiles:
        return ImageFiles(self.paths[np.asarray(index)], self.size, self.centre_crop)

    def __repr__(self) -> str:
        size = "native size" if self.size is None else f"{self.size}x{self.size}"
        return f"ImageFiles({len(self)} files, {size}{', centre crop' * self.centre_crop})"

    def reader(self):
        """A TF function: dataset index (int64 scalar) -> (H, W, 3) uint8."""
        paths = tf.constant(self.paths.astype(str))
        return lambda index: read_image(tf.gather(paths, index), self.size, self.centre_crop)

    def unreadable(self, indices) -> list[str]:
        """The paths among `indices` (distinct, in order) that cannot be read and decoded."""
        bad = []
        for index in dict.fromkeys(int(i) for i in np.asarray(indices).reshape(-1)):
            try:
                read_image(tf.constant(str(self.paths[index])), self.size, self.centre_crop)
            except (tf.errors.OpError, ValueError):
                bad.append(str(self.paths[index]))
        return bad


class UnreadableImageError(ValueError):
    """A streamed image file cannot be read or decoded (the message names it)."""


def naming_unreadable_files(batches, files: ImageFiles, indices_of_batch, first_batch: int = 0):
    """Yields `batches`; if the pipeline fails, raises UnreadableImageError naming the files of
    the failing batch that cannot be decoded (tf.data's own error names no file).

    `indices_of_batch(k)` gives the dataset indices of batch number k (counted from
    `first_batch`, the number of the first batch yielded).
    """
    number = first_batch
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            bad = files.unreadable(indices_of_batch(number))
            named = (f"cannot decode {len(bad)} image file(s) of batch {number}: "
                     f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}" if bad else
                     f"the input pipeline failed at batch {number}")
            raise UnreadableImageError(
                f"data.streaming=True: {named} ({_first_line(error.message)}). "
                f"Streamed files are decoded as they are read; remove or replace the file, or "
                f"load the split into memory (data.streaming=False), where "
                f"data.corrupt_images='skip' leaves such files out") from error
        yield batch
        number += 1


def _first_line(message: str) -> str:
    """A TF error's first line without its "{{function_node ...}}" prefix."""
    return re.sub(r"\{\{.*?\}\}\s*", "", message.strip().splitlines()[0]) if message else ""


def resize_uint8(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8, bilinear (antialiased when shrinking):
    `files.resize_square` where TensorFlow is installed (the pixels every result so far was
    measured on), else `files.resize_square_without_tensorflow` (within one grey level)."""
    if tensorflow_available():
        out = [resize_square(images[start : start + chunk], size).numpy()
               for start in range(0, len(images), chunk)]
    else:  # The same resize in JAX, within one grey level of TF's.
        out = [resize_square_without_tensorflow(images[start : start + chunk], size)
               for start in range(0, len(images), chunk)]
    if not out:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.concatenate(out)
