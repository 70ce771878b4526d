"""Contrastive views made on the accelerator (`data.augment_on="device"`), without TensorFlow.

The uint8 training split is placed on every device once (replicated). Each step the host computes
the step's example indices with `shuffle.example_indices` (the same (seed, step) permutation as
the tf.data pipeline, so the same examples), and one jitted function gathers those examples and
makes their views on the devices, each device the rows of its batch shard. The ops are the host
pipeline's (`augment.py`) in the same order, strengths and probabilities:

    a  random resized crop     d  colour jitter (brightness, contrast, saturation, hue)
    c  grayscale               b  Gaussian blur      solarize      e  flip

View v of the example at stream position p is drawn from the key
``fold_in(fold_in(fold_in(PRNGKey(seed), 1), p), v)`` split per op as the host splits its seeds,
so a run is a pure function of (seed, step): it resumes bit-exactly, and any device count makes
the same views (each example's view depends on its key only). The random numbers are JAX's,
not TF's: the two paths draw from the same distributions (tested by two-sample tests over many
draws), not the same values.

dm-pix supplies grayscale (ITU-R 601 luma, as tf.image), hue rotation (= tf.image.adjust_hue),
the separable Gaussian blur (after reflect padding, which dm-pix does not offer), flip and
solarize. Brightness, contrast and saturation are written here because dm-pix's versions are
other operations: brightness adds a delta (the host multiplies), contrast blends with each
channel's mean (the host: the mean luma), saturation scales HSV saturation (the host blends with
the per-pixel luma, as torchvision). dm-pix has no random resized crop; the crop is resampled
here with two small interpolation matrices per view (bilinear, half-pixel centres, edge clamped
as tf.image.resize), which the accelerator runs as matrix products instead of gathers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax.data.pipeline import per_view  # TF-free: tf is imported on first use.
from amcl_jax.data.shuffle import example_indices

AUGMENTATION_LETTERS = "abcde"  # as augment.AUGMENTATION_LETTERS
AUGMENT_ON = ("host", "device", "auto")
AUGMENT_STREAM = 1  # as pipeline._AUGMENT_STREAM
_OP_INDEX = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "solarize": 5}  # as augment._OP_INDEX
# Largest share of one device's memory the replicated uint8 split may take ("auto" and "device").
DEVICE_MEMORY_SHARE = 0.25
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# The ops: one image (H, W, 3) float32 in [0, 1] and a key -> float32 in [0, 1]
# ---------------------------------------------------------------------------------------------
def crop_box(key: jax.Array, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10
             ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(top, left, crop_height, crop_width) int32 of torchvision's RandomResizedCrop, drawn as
    `augment.random_resized_crop` draws it: up to `attempts` (area, log-ratio) pairs, the first
    that fits, else the centre crop with the ratio clipped into `ratio`."""
    draws = jax.random.uniform(key, (2 * attempts + 2,))
    area = float(height * width)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[:attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * draws[attempts: 2 * attempts])
    crop_w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    crop_h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    fits = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
    in_ratio = width / height
    fallback_w = round(height * ratio[1]) if in_ratio > ratio[1] else width
    fallback_h = round(width / ratio[0]) if in_ratio < ratio[0] else height
    first_fit = jnp.argmax(fits)
    any_fit = jnp.any(fits)
    crop_w = jnp.where(any_fit, crop_w[first_fit], fallback_w)
    crop_h = jnp.where(any_fit, crop_h[first_fit], fallback_h)

    def offset(u, room):  # uniform integer in [0, room]
        return jnp.minimum((u * (room + 1).astype(jnp.float32)).astype(jnp.int32), room)

    top = jnp.where(any_fit, offset(draws[-2], height - crop_h), (height - crop_h) // 2)
    left = jnp.where(any_fit, offset(draws[-1], width - crop_w), (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def _interpolation_matrix(start: jax.Array, length: jax.Array, size: int, full: int) -> jax.Array:
    """(size, full) weights resampling [start, start + length) to `size` samples: bilinear,
    half-pixel centres, clamped to the crop's edge pixels (tf.image.resize, no antialiasing)."""
    length_f = length.astype(jnp.float32)
    coord = (jnp.arange(size, dtype=jnp.float32) + 0.5) * (length_f / size) - 0.5
    floor = jnp.floor(coord)
    lerp = coord - floor
    lower = jnp.clip(floor.astype(jnp.int32), 0, length - 1)
    upper = jnp.clip(jnp.ceil(coord).astype(jnp.int32), 0, length - 1)
    return ((1.0 - lerp)[:, None] * jax.nn.one_hot(start + lower, full)
            + lerp[:, None] * jax.nn.one_hot(start + upper, full))


def random_resized_crop(image: jax.Array, key: jax.Array, size: int,
                        scale: tuple[float, float] = (0.08, 1.0)) -> jax.Array:
    """The crop of `crop_box`, resized (bilinear) to (size, size, 3)."""
    height, width = image.shape[:2]
    top, left, crop_h, crop_w = crop_box(key, height, width, scale)
    rows = _interpolation_matrix(top, crop_h, size, height)
    cols = _interpolation_matrix(left, crop_w, size, width)
    out = jnp.einsum("iy,yxc->ixc", rows, image, precision=_HIGHEST)
    out = jnp.einsum("jx,ixc->ijc", cols, out, precision=_HIGHEST)
    return jnp.clip(out, 0.0, 1.0)


def resize(image: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of (..., H, W, 3) to (..., size, size, 3), antialiased when shrinking
    (as `augment.resize`), clipped to [0, 1]."""
    shape = (*image.shape[:-3], size, size, image.shape[-1])
    return jnp.clip(jax.image.resize(image, shape, "linear", antialias=True), 0.0, 1.0)


def _gray(image: jax.Array) -> jax.Array:
    return dm_pix.rgb_to_grayscale(image)  # (H, W, 1), ITU-R 601 as tf.image.rgb_to_grayscale


def color_jitter(image: jax.Array, key: jax.Array, strength: float = 0.5,
                 p: float = 0.8) -> jax.Array:
    """`augment.color_jitter`: with probability p, brightness, contrast, saturation (factors
    ~ U(1 - 0.8s, 1 + 0.8s)) then hue (delta ~ U(-0.2s, 0.2s)), clipped after each."""
    draws = jax.random.uniform(key, (5,))  # apply?, brightness, contrast, saturation, hue
    amount = 0.8 * strength
    hue_amount = min(0.2 * strength, 0.5)
    low = max(0.0, 1 - amount)
    factors = low + (1 + amount - low) * draws[1:4]
    x = image
    if amount > 0:
        x = jnp.clip(x * factors[0], 0.0, 1.0)
        mean = jnp.mean(_gray(x))
        x = jnp.clip((x - mean) * factors[1] + mean, 0.0, 1.0)
        gray = _gray(x)
        x = jnp.clip((x - gray) * factors[2] + gray, 0.0, 1.0)
    if hue_amount > 0:
        x = jnp.clip(dm_pix.adjust_hue(x, hue_amount * (2.0 * draws[4] - 1.0)), 0.0, 1.0)
    return _with_probability(image, x, draws[0], p)


def _with_probability(image: jax.Array, changed: jax.Array, u: jax.Array, p: float
                      ) -> jax.Array:
    """`changed` if u < p (u ~ U[0, 1)), else `image` (both computed: no branch per example)."""
    if p <= 0.0:
        return image
    if p >= 1.0:
        return changed
    return jnp.where(u < p, changed, image)


def random_grayscale(image: jax.Array, key: jax.Array, p: float = 0.2) -> jax.Array:
    gray = dm_pix.rgb_to_grayscale(image, keep_dims=True)
    return _with_probability(image, gray, jax.random.uniform(key), p)


def blur_kernel_size(image_size: int) -> int:
    """As `augment.blur_kernel_size`: about 10% of the side, odd, at least 3."""
    kernel = image_size // 10
    return max(3, kernel if kernel % 2 == 1 else kernel + 1)


def gaussian_blur(image: jax.Array, key: jax.Array, p: float = 0.5,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> jax.Array:
    """`augment.gaussian_blur`: with probability p, sigma ~ U(sigma), reflect padding."""
    kernel_size = blur_kernel_size(image.shape[0])
    radius = kernel_size // 2
    draws = jax.random.uniform(key, (2,))  # apply?, sigma
    std = sigma[0] + (sigma[1] - sigma[0]) * draws[1]
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    blurred = dm_pix.gaussian_blur(padded, std, kernel_size, padding="VALID")
    return _with_probability(image, jnp.clip(blurred, 0.0, 1.0), draws[0], p)


def random_flip(image: jax.Array, key: jax.Array, p: float = 0.5) -> jax.Array:
    return _with_probability(image, dm_pix.flip_left_right(image), jax.random.uniform(key), p)


def solarize(image: jax.Array, key: jax.Array, p: float = 0.0, threshold: float = 0.5
             ) -> jax.Array:
    """With probability p, pixels at or above `threshold` become 1 - x."""
    return _with_probability(image, dm_pix.solarize(image, threshold), jax.random.uniform(key), p)


# ---------------------------------------------------------------------------------------------
# letters -> view function
# ---------------------------------------------------------------------------------------------
def make_view_fn(letters: str, *, image_size: int, color_jitter_strength: float = 0.5,
                 blur_p: float = 0.5, solarize_p: float = 0.0, grayscale_p: float = 0.2,
                 color_jitter_p: float = 0.8, flip_p: float = 0.5,
                 crop_scale: tuple[float, float] = (0.08, 1.0)):
    """view(image (H, W, 3) float32 in [0, 1], key) -> (S, S, 3): `augment.make_view_fn` in JAX
    (letters applied in the order a, d, c, b, solarize, e; without "a" a resize)."""
    bad = sorted(set(letters) - set(AUGMENTATION_LETTERS))
    if bad or len(set(letters)) != len(letters):
        raise ValueError(f"data.augmentations={letters!r}: distinct letters from "
                         f"{AUGMENTATION_LETTERS!r} only")

    def view(image: jax.Array, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, len(_OP_INDEX))
        if "a" in letters:
            image = random_resized_crop(image, keys[_OP_INDEX["a"]], image_size, crop_scale)
        elif image.shape[:2] != (image_size, image_size):
            image = resize(image, image_size)
        if "d" in letters:
            image = color_jitter(image, keys[_OP_INDEX["d"]], color_jitter_strength,
                                 color_jitter_p)
        if "c" in letters:
            image = random_grayscale(image, keys[_OP_INDEX["c"]], grayscale_p)
        if "b" in letters:
            image = gaussian_blur(image, keys[_OP_INDEX["b"]], blur_p)
        if solarize_p > 0:
            image = solarize(image, keys[_OP_INDEX["solarize"]], solarize_p)
        if "e" in letters:
            image = random_flip(image, keys[_OP_INDEX["e"]], flip_p)
        return image

    return view


def view_keys(seed: int, positions: jax.Array, num_views: int) -> jax.Array:
    """(B, V) keys: view v of stream position p (uint32) gets fold_in(fold_in(base, p), v)."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), AUGMENT_STREAM)
    per_example = jax.vmap(lambda p: jax.random.fold_in(base, p))(positions)
    return jax.vmap(lambda k: jax.vmap(lambda v: jax.random.fold_in(k, v))(
        jnp.arange(num_views, dtype=jnp.uint32)))(per_example)


def to_float(images: jax.Array) -> jax.Array:
    """uint8 -> float32 in [0, 1] as tf.image.convert_image_dtype (x * (1 / 255))."""
    return images.astype(jnp.float32) * jnp.float32(1.0 / 255.0)


def make_views(images: jax.Array, positions: jax.Array, *, seed: int, view_fns: Sequence,
               mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """(V, B, S, S, 3) normalised views of uint8 images (B, H, W, 3) at stream `positions`;
    view v made by view_fns[v]."""
    keys = view_keys(seed, positions, len(view_fns))
    x = to_float(images)
    with jax.default_matmul_precision("highest"):  # no TF32/bf16 passes for the blur on GPUs
        views = jnp.stack([jax.vmap(fn)(x, keys[:, v]) for v, fn in enumerate(view_fns)])
    return (views - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# ---------------------------------------------------------------------------------------------
# Where views are made: resolving data.augment_on
# ---------------------------------------------------------------------------------------------
def device_memory_bytes(device: jax.Device) -> int | None:
    """The device's memory limit in bytes, or None where the runtime does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 (some backends raise instead of returning None)
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def fits_on_device(nbytes: int, device: jax.Device) -> bool:
    limit = device_memory_bytes(device)
    return limit is None or nbytes <= DEVICE_MEMORY_SHARE * limit


def resolve_augment_on(augment_on: str, images, device: jax.Device, *,
                       tensorflow_available: bool) -> str:
    """"host" or "device" for `data.augment_on` and this training split.

    "auto" is "device" when the split is an in-memory array that fits and the device is a GPU or
    TPU (or TensorFlow, which the host pipeline needs, is not installed); otherwise "host".
    "device" with a streamed split, or a split too large for the device, raises ValueError
    naming data.augment_on.
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"data.augment_on={augment_on!r}: allowed values are "
                         f"{', '.join(repr(a) for a in AUGMENT_ON)}")
    if augment_on == "host":
        return "host"
    in_memory = isinstance(images, np.ndarray)
    if augment_on == "auto":
        wanted = device.platform in ("gpu", "tpu") or not tensorflow_available
        return "device" if wanted and in_memory and fits_on_device(images.nbytes, device) \
            else "host"
    if not in_memory:
        raise ValueError("data.augment_on='device' keeps the training split on the devices: it "
                         "needs it in memory (data.streaming=false), or use "
                         "data.augment_on='host'")
    if not fits_on_device(images.nbytes, device):
        limit = device_memory_bytes(device)
        raise ValueError(
            f"data.augment_on='device': the training split ({images.nbytes / 2**30:.2f} GiB of "
            f"uint8 pixels, {images.shape}) does not fit in {DEVICE_MEMORY_SHARE:.0%} of one "
            f"device's memory ({limit / 2**30:.1f} GiB); use data.augment_on='host' (tf.data "
            f"on the host), or a smaller data.load_size")
    return "device"


# ---------------------------------------------------------------------------------------------
# The training stream
# ---------------------------------------------------------------------------------------------
class DeviceViews:
    """The training split on the devices and the jitted function that makes a step's batch.

    `blur_p` and `solarize_p` are for every view or per view (`per_view`). `batch(step)` is the
    global batch of `step` as arrays sharded along the mesh's "data" axis:
    {"views": (V, B, S, S, 3) float32 normalised, "label": (B,) int32, "index": (B,) int32}.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, mesh: Mesh,
                 global_batch_size: int, seed: int, augmentations: str, image_size: int,
                 num_views: int = 2, mean: Sequence[float], std: Sequence[float],
                 color_jitter_strength: float = 0.5, blur_p: float | Sequence[float] = 0.5,
                 solarize_p: float | Sequence[float] = 0.0) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} "
                             f"{images.dtype}")
        if labels.shape != (len(images),) or len(images) == 0:
            raise ValueError(f"labels must be ({len(images)},) for a non-empty split")
        num_devices = mesh.devices.size
        if global_batch_size <= 0 or global_batch_size % num_devices:
            raise ValueError(f"batch_size={global_batch_size} must be a positive multiple of "
                             f"the device count ({num_devices})")
        self.num_examples = len(images)
        self.global_batch_size = global_batch_size
        self.seed = int(seed)
        self._rows = NamedSharding(mesh, P("data"))
        replicated = NamedSharding(mesh, P())
        self._images = jax.device_put(images, replicated)
        self._labels = jax.device_put(labels.astype(np.int32), replicated)
        view_fns = [make_view_fn(augmentations, image_size=image_size,
                                 color_jitter_strength=color_jitter_strength, blur_p=blur,
                                 solarize_p=solarize)
                    for blur, solarize in zip(per_view(blur_p, num_views),
                                              per_view(solarize_p, num_views), strict=True)]
        make = functools.partial(make_views, seed=self.seed, view_fns=view_fns,
                                 mean=tuple(mean), std=tuple(std))

        def batch(images, labels, index, positions):
            return {"views": make(images[index], positions), "label": labels[index],
                    "index": index}

        self._batch = jax.jit(batch, out_shardings={
            "views": NamedSharding(mesh, P(None, "data")), "label": self._rows,
            "index": self._rows})
        process_count = jax.process_count()
        self._local = slice(jax.process_index() * global_batch_size // process_count,
                            (jax.process_index() + 1) * global_batch_size // process_count)

    def positions(self, step: int) -> np.ndarray:
        """The global batch's stream positions (int64): step * B .. (step + 1) * B - 1."""
        return step * self.global_batch_size + np.arange(self.global_batch_size, dtype=np.int64)

    def batch(self, step: int) -> dict[str, jax.Array]:
        positions = self.positions(step)
        if positions[-1] >= 2**32:
            raise ValueError(f"step {step}: stream positions past 2**32 are not supported")
        index = example_indices(positions, seed=self.seed, num_examples=self.num_examples)
        put = lambda x: jax.make_array_from_process_local_data(self._rows, x[self._local])
        return self._batch(self._images, self._labels, put(index.astype(np.int32)),
                           put(positions.astype(np.uint32)))

    def iterator(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Endless batches from global step `start_step` (the same as from 0 after that many)."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1


def eval_iterator(images: np.ndarray, labels: np.ndarray, *, batch_size: int, image_size: int,
                  mean: Sequence[float], std: Sequence[float], process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """`pipeline.eval_iterator` for an in-memory split, in NumPy (no TensorFlow): the same
    batches, padding rows (zero image, label and index -1, mask False) and process slices."""
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the process "
                         f"count ({process_count})")
    local_batch = batch_size // process_count
    num_examples = len(images)
    labels = np.asarray(labels, np.int32)
    resize_fn = None
    if tuple(images.shape[1:3]) != (image_size, image_size):
        resize_fn = jax.jit(lambda x: resize(to_float(x), image_size))
    mean_f, std_f = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    for step in range(-(-num_examples // batch_size)):
        positions = step * batch_size + process_index * local_batch + np.arange(local_batch)
        mask = positions < num_examples
        index = np.minimum(positions, num_examples - 1)
        if resize_fn is None:
            image = images[index].astype(np.float32) * np.float32(1.0 / 255.0)
        else:
            image = np.asarray(resize_fn(images[index]))
        image = (image - mean_f) / std_f * mask[:, None, None, None].astype(np.float32)
        yield {"image": image, "label": np.where(mask, labels[index], -1),
               "index": np.where(mask, index, -1).astype(np.int32), "mask": mask}
