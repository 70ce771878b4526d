"""Contrastive view augmentations as pure, stateless TF ops.

Every op takes one image ``(H, W, 3) float32`` in [0, 1] and a stateless seed ``(2,) int32/int64``
and returns ``float32`` in [0, 1]. Randomness comes only from ``tf.random.stateless_*`` ops keyed
by that seed, so the same (image, seed) always gives the same view: the training stream can be
recomputed from any step after a restart.

The paper's augmentation letters (AMCL, Table "1 to 5 augmentations"):

    a  random resized crop      b  Gaussian blur     c  random grayscale
    d  colour jitter            e  horizontal flip

`make_view_fn` applies them in the order a, d, c, b, (solarize), e: crop first so later ops work
at the output size, then the SimCLR order of colour ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from amcl_jax.data._tf import tf

AUGMENTATION_LETTERS = "abcde"
_APPLY_ORDER = "adcbe"  # crop, colour jitter, grayscale, blur, flip (solarize before flip)
# Each op draws from its own sub-seed, keyed by op (not by position in the letter string).
_OP_INDEX = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "solarize": 5}

# Annotations only: reading tf.Tensor here would import TensorFlow with this module.
Image = Seed = "tf.Tensor"
ViewFn = Callable[[Image, Seed], Image]


def _split(seed: Seed, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)


def _uniform(seed: Seed, minval: float = 0.0, maxval: float = 1.0, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval)


def _with_probability(image: Image, u: tf.Tensor, p: float, op: Callable[[Image], Image]) -> Image:
    """op(image) if u < p (u ~ U[0, 1)), else image unchanged (p=0: never, p=1: always)."""
    if p <= 0.0:
        return image
    if p >= 1.0:
        return op(image)
    return tf.cond(u < p, lambda: op(image), lambda: image)


# ---------------------------------------------------------------------------------------------
# a: random resized crop
# ---------------------------------------------------------------------------------------------
def random_resized_crop(
    image: Image,
    seed: Seed,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Image:
    """torchvision's RandomResizedCrop: a crop covering `scale` of the area with aspect ratio in
    `ratio` (log-uniform), resized (bilinear) to (size, size, 3).

    Like torchvision, up to `attempts` (area, ratio) draws are tried and the first that fits is
    used; if none fits, the largest centre crop with the ratio clipped to `ratio` is taken.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    # One draw for everything (fewer ops per example): attempts x (area, log-ratio), top, left.
    draws = _uniform(seed, shape=[2 * attempts + 2])
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float32)

    target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[:attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * draws[attempts : 2 * attempts])
    crop_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)

    # Fallback: centre crop of the whole image with the aspect ratio clipped into `ratio`.
    in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
    fallback_w = tf.where(
        in_ratio > ratio[1],
        tf.cast(tf.round(tf.cast(height, tf.float32) * ratio[1]), tf.int32),
        width,
    )
    fallback_h = tf.where(
        in_ratio < ratio[0],
        tf.cast(tf.round(tf.cast(width, tf.float32) / ratio[0]), tf.int32),
        height,
    )
    first_fit = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    any_fit = tf.reduce_any(fits)
    crop_w = tf.where(any_fit, crop_w[first_fit], fallback_w)
    crop_h = tf.where(any_fit, crop_h[first_fit], fallback_h)

    def offset(u: tf.Tensor, room: tf.Tensor) -> tf.Tensor:  # uniform integer in [0, room]
        return tf.minimum(tf.cast(u * tf.cast(room + 1, tf.float32), tf.int32), room)

    top = tf.where(any_fit, offset(draws[-2], height - crop_h), (height - crop_h) // 2)
    left = tf.where(any_fit, offset(draws[-1], width - crop_w), (width - crop_w) // 2)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([crop_h, crop_w, 3]))
    # No antialiasing: crops are mostly enlarged, and the antialiased kernel costs ~4x here.
    out = tf.clip_by_value(tf.image.resize(crop, (size, size), method="bilinear"), 0.0, 1.0)
    return tf.ensure_shape(out, (size, size, 3))


def resize(image: Image, size: int) -> Image:
    """Bilinear resize of (..., H, W, 3) to (..., size, size, 3), antialiased when shrinking,
    clipped to [0, 1]."""
    out = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.clip_by_value(out, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# b: Gaussian blur
# ---------------------------------------------------------------------------------------------
def blur_kernel_size(image_size: int) -> int:
    """About 10% of the image side, odd, at least 3 (SimCLR): 32 -> 3, 96 -> 9, 224 -> 23."""
    kernel = image_size // 10
    return max(3, kernel if kernel % 2 == 1 else kernel + 1)


def gaussian_blur(
    image: Image,
    seed: Seed,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
) -> Image:
    """With probability p, a separable Gaussian blur with sigma ~ U(sigma), reflect padding.

    kernel_size defaults to `blur_kernel_size` of the image height (needs a static height).
    """
    image = tf.convert_to_tensor(image, tf.float32)
    if kernel_size is None:
        height = image.shape[0]
        if height is None:
            raise ValueError("gaussian_blur needs a static image height or an explicit kernel_size")
        kernel_size = blur_kernel_size(height)
    if kernel_size % 2 != 1:
        raise ValueError(f"gaussian_blur kernel_size must be odd, got {kernel_size}")
    draws = _uniform(seed, shape=[2])  # apply?, sigma
    radius = kernel_size // 2

    def blur(x: Image) -> Image:
        std = sigma[0] + (sigma[1] - sigma[0]) * draws[1]
        offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
        weights = tf.exp(-(offsets**2) / (2.0 * std**2))
        weights = weights / tf.reduce_sum(weights)
        kernel_h = tf.tile(tf.reshape(weights, [kernel_size, 1, 1, 1]), [1, 1, 3, 1])
        kernel_w = tf.tile(tf.reshape(weights, [1, kernel_size, 1, 1]), [1, 1, 3, 1])
        padded = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
        out = tf.nn.depthwise_conv2d(padded, kernel_h, [1, 1, 1, 1], "VALID")
        out = tf.nn.depthwise_conv2d(out, kernel_w, [1, 1, 1, 1], "VALID")
        return tf.clip_by_value(out[0], 0.0, 1.0)

    return _with_probability(image, draws[0], p, blur)


# ---------------------------------------------------------------------------------------------
# c: grayscale, d: colour jitter, e: flip, solarize
# ---------------------------------------------------------------------------------------------
def _gray(image: Image) -> Image:
    """(H, W, 1) luma with ITU-R 601 weights (as torchvision and tf.image)."""
    return tf.image.rgb_to_grayscale(image)


def random_grayscale(image: Image, seed: Seed, p: float = 0.2) -> Image:
    """With probability p, replace RGB by its luma in all three channels."""
    image = tf.convert_to_tensor(image, tf.float32)
    return _with_probability(image, _uniform(seed), p, lambda x: tf.tile(_gray(x), [1, 1, 3]))


def color_jitter(image: Image, seed: Seed, strength: float = 0.5, p: float = 0.8) -> Image:
    """With probability p, torchvision-style ColorJitter(0.8s, 0.8s, 0.8s, 0.2s), s = strength.

    Brightness scales pixels, contrast blends with the mean luma, saturation blends with the
    per-pixel luma, hue rotates by delta in turns; factors ~ U(1 - 0.8s, 1 + 0.8s), hue delta
    ~ U(-0.2s, 0.2s). Applied in that fixed order (torchvision shuffles it; SimCLR's TF code
    does not need to). Clipped to [0, 1] after each step.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    draws = _uniform(seed, shape=[5])  # apply?, brightness, contrast, saturation, hue
    amount = 0.8 * strength
    hue_amount = min(0.2 * strength, 0.5)
    low = max(0.0, 1 - amount)
    factors = low + (1 + amount - low) * draws[1:4]

    def jitter(x: Image) -> Image:
        if amount > 0:
            x = tf.clip_by_value(x * factors[0], 0.0, 1.0)
            mean = tf.reduce_mean(_gray(x))
            x = tf.clip_by_value((x - mean) * factors[1] + mean, 0.0, 1.0)
            gray = _gray(x)
            x = tf.clip_by_value((x - gray) * factors[2] + gray, 0.0, 1.0)
        if hue_amount > 0:
            x = tf.image.adjust_hue(x, hue_amount * (2.0 * draws[4] - 1.0))
            x = tf.clip_by_value(x, 0.0, 1.0)
        return x

    return _with_probability(image, draws[0], p, jitter)


def random_flip(image: Image, seed: Seed, p: float = 0.5) -> Image:
    """With probability p, mirror left-right."""
    image = tf.convert_to_tensor(image, tf.float32)
    return _with_probability(image, _uniform(seed), p, lambda x: tf.reverse(x, axis=[1]))


def solarize(image: Image, seed: Seed, p: float = 0.0, threshold: float = 0.5) -> Image:
    """With probability p, invert pixels at or above `threshold` (x -> 1 - x)."""
    image = tf.convert_to_tensor(image, tf.float32)
    return _with_probability(image, _uniform(seed), p, lambda x: tf.where(x >= threshold, 1 - x, x))


# ---------------------------------------------------------------------------------------------
# letters -> view function
# ---------------------------------------------------------------------------------------------
def validate_letters(letters: str) -> str:
    """Checks an augmentation string such as "abcde"; returns it unchanged.

    Only the letters a..e, each at most once, in any order (they are always applied in the order
    a, d, c, b, e). The empty string means no augmentation (resize only).
    """
    if not isinstance(letters, str):
        raise ValueError(f"data.augmentations must be a string of letters from "
                         f"{AUGMENTATION_LETTERS!r}, got {letters!r}")
    bad = sorted(set(letters) - set(AUGMENTATION_LETTERS))
    if bad:
        raise ValueError(
            f"data.augmentations={letters!r} has unknown letters {bad}: allowed are "
            f"{AUGMENTATION_LETTERS!r} (a crop, b blur, c grayscale, d colour jitter, e flip)"
        )
    if len(set(letters)) != len(letters):
        raise ValueError(
            f"data.augmentations={letters!r} repeats a letter: use each of "
            f"{AUGMENTATION_LETTERS!r} at most once"
        )
    return letters


def make_view_fn(
    letters: str,
    *,
    image_size: int,
    color_jitter_strength: float = 0.5,
    blur_p: float = 0.5,
    solarize_p: float = 0.0,
    grayscale_p: float = 0.2,
    color_jitter_p: float = 0.8,
    flip_p: float = 0.5,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> ViewFn:
    """Returns view(image (H, W, 3) float32 in [0, 1], seed (2,)) -> (S, S, 3) float32 in [0, 1].

    Letters (see module docstring) are applied in the order a, d, c, b, then solarize (if
    solarize_p > 0), then e. Without "a" the image is resized to image_size x image_size instead.
    """
    letters = validate_letters(letters)

    def view(image: Image, seed: Seed) -> Image:
        image = tf.convert_to_tensor(image, tf.float32)
        seeds = _split(seed, len(_OP_INDEX))
        if "a" in letters:
            image = random_resized_crop(image, seeds[_OP_INDEX["a"]], image_size, scale=crop_scale)
        elif tuple(image.shape[:2]) != (image_size, image_size):
            image = resize(image, image_size)
        for letter in _APPLY_ORDER:
            if letter == "e" and solarize_p > 0:
                image = solarize(image, seeds[_OP_INDEX["solarize"]], p=solarize_p)
            if letter not in letters or letter == "a":
                continue
            op_seed = seeds[_OP_INDEX[letter]]
            if letter == "d":
                image = color_jitter(image, op_seed, color_jitter_strength, p=color_jitter_p)
            elif letter == "c":
                image = random_grayscale(image, op_seed, p=grayscale_p)
            elif letter == "b":
                image = gaussian_blur(image, op_seed, p=blur_p)
            elif letter == "e":
                image = random_flip(image, op_seed, p=flip_p)
        return tf.ensure_shape(image, (image_size, image_size, 3))

    return view
