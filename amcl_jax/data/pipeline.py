"""tf.data input pipelines: training batches are a pure function of (seed, step).

Training stream. Example positions 0, 1, 2, ... run through an endless sequence of epochs; the
position p belongs to epoch p // N and maps to dataset example
``index_shuffle(p % N, seed=fold_in([seed, 0], epoch), max_index=N - 1)``, a stateless
permutation per epoch. Global batch ``step`` holds positions [step * B, (step + 1) * B); process
k of K takes the slice [k * B / K, (k + 1) * B / K) of it. View v of the example at position p
is augmented with stateless ops seeded by ``fold_in(fold_in([seed, 1], p), v)``. Nothing
depends on earlier batches, so ``train_iterator(start_step=s)`` yields bit-exactly what a run
from step 0 yields after s batches: resuming needs only the step.

Batches run on across epoch boundaries (no example is dropped; a batch that straddles a
boundary may hold one image twice). `steps_per_epoch` is N // B for schedules.

Images come as an (N, H, W, 3) uint8 array held in memory, or as `files.ImageFiles` whose files
are read and decoded as batches need them (`data.streaming`): the batches are the same for the
same pixels, so a streamed split and the same split loaded into memory train alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from amcl_jax.data._tf import graph_fn, tf
from amcl_jax.data.augment import make_view_fn, resize, validate_letters
from amcl_jax.data.files import ImageFiles, naming_unreadable_files

_SHUFFLE_STREAM = 0  # seed stream for the per-epoch permutations
_AUGMENT_STREAM = 1  # seed stream for view augmentations


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Steps in one epoch for schedules: num_examples // global_batch_size (at least 1)."""
    return max(1, num_examples // global_batch_size)


def _local_batch_size(global_batch_size: int, process_count: int, field: str) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"{field}={global_batch_size} must be a positive multiple of the process count "
            f"({process_count})"
        )
    return global_batch_size // process_count


def _check_arrays(images: np.ndarray | ImageFiles, labels: np.ndarray) -> None:
    if not isinstance(images, ImageFiles) and (
            images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8):
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be ({len(images)},), got {labels.shape}")
    if len(images) == 0:
        raise ValueError("the dataset is empty")


def _image_reader(images: np.ndarray | ImageFiles):
    """A TF function: dataset index (int64) -> that example's (H, W, 3) uint8 image."""
    if isinstance(images, ImageFiles):
        return images.reader()
    images_t = tf.constant(images)
    return lambda index: tf.gather(images_t, index)


def _normalise(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (image - mean) / std


def per_view(probability: float | Sequence[float], num_views: int) -> tuple[float, ...]:
    """One probability per view: a number serves every view; a sequence (e.g. BYOL's
    asymmetric blur (1.0, 0.1)) gives view v its entry v mod its length."""
    values = (tuple(float(p) for p in probability) if isinstance(probability, Sequence)
              else (float(probability),))
    if not values or not all(0.0 <= p <= 1.0 for p in values):
        raise ValueError(f"probability {probability!r}: a number or a per-view sequence of "
                         "numbers in [0, 1]")
    return tuple(values[view % len(values)] for view in range(num_views))


def example_index(
    position: tf.Tensor, *, seed: int, num_examples: int
) -> tf.Tensor:
    """Dataset index of stream position(s) `position` (int64): a fresh permutation per epoch."""
    position = tf.cast(position, tf.int64)
    epoch = position // num_examples
    offset = position % num_examples
    epoch_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _SHUFFLE_STREAM], tf.int64), epoch
    )
    return tf.random.experimental.index_shuffle(
        offset, seed=epoch_seed, max_index=tf.constant(num_examples - 1, tf.int64)
    )


def train_iterator(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int,
    augmentations: str,
    image_size: int,
    num_views: int = 2,
    mean: Sequence[float],
    std: Sequence[float],
    process_index: int = 0,
    process_count: int = 1,
    color_jitter_strength: float = 0.5,
    blur_p: float | Sequence[float] = 0.5,
    solarize_p: float | Sequence[float] = 0.0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches for this process, starting at global step `start_step`.

    Args:
      images: (N, H, W, 3) uint8 or `ImageFiles`; labels: (N,) int.
      augmentations: paper letters, e.g. "abcde" (see `augment.make_view_fn`).
      mean, std: per-channel constants for (x - mean) / std on pixels in [0, 1].
      blur_p, solarize_p: for every view, or per view (`per_view`).

    Yields:
      {"views": (num_views, B_local, S, S, 3) float32 normalised,
       "label": (B_local,) int32, "index": (B_local,) int32 dataset indices},
      B_local = global_batch_size // process_count, S = image_size.
    """
    _check_arrays(images, labels)
    validate_letters(augmentations)
    local_batch = _local_batch_size(global_batch_size, process_count, "batch_size")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    num_examples = len(images)
    view_fns = [
        make_view_fn(
            augmentations,
            image_size=image_size,
            color_jitter_strength=color_jitter_strength,
            blur_p=blur,
            solarize_p=solarize,
        )
        for blur, solarize in zip(per_view(blur_p, num_views), per_view(solarize_p, num_views),
                                  strict=True)
    ]
    read_image = _image_reader(images)
    labels_t = tf.constant(labels.astype(np.int32))
    augment_seed = tf.constant([seed, _AUGMENT_STREAM], tf.int64)

    def position_of(counter: tf.Tensor) -> tf.Tensor:
        # counter enumerates this process's examples; turn it into a global stream position.
        step = counter // local_batch
        return step * global_batch_size + process_index * local_batch + counter % local_batch

    def load_example(counter: tf.Tensor) -> dict[str, tf.Tensor]:
        position = position_of(counter)
        index = example_index(position, seed=seed, num_examples=num_examples)
        image = tf.image.convert_image_dtype(read_image(index), tf.float32)
        example_seed = tf.random.experimental.stateless_fold_in(augment_seed, position)
        views = [
            _normalise(
                view_fns[view](image,
                               tf.random.experimental.stateless_fold_in(example_seed, view)),
                mean,
                std,
            )
            for view in range(num_views)
        ]
        return {
            "views": tf.stack(views),
            "label": tf.gather(labels_t, index),
            "index": tf.cast(index, tf.int32),
        }

    def views_first(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**batch, "views": tf.transpose(batch["views"], [1, 0, 2, 3, 4])}

    ds = tf.data.Dataset.counter(start=start_step * local_batch, dtype=tf.int64)
    ds = ds.map(graph_fn(load_example), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map(graph_fn(views_first))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds = ds.with_options(_deterministic_options())
    if not isinstance(images, ImageFiles):
        return ds.as_numpy_iterator()

    def indices_of_step(step: int) -> np.ndarray:
        counters = step * local_batch + np.arange(local_batch)
        return np.array([int(example_index(position_of(tf.constant(c, tf.int64)), seed=seed,
                                           num_examples=num_examples)) for c in counters])

    return naming_unreadable_files(ds.as_numpy_iterator(), images, indices_of_step, start_step)


def eval_iterator(
    images: np.ndarray | ImageFiles,
    labels: np.ndarray,
    *,
    batch_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the data in dataset order, no augmentation (resize only).

    `batch_size` is global: every process yields ceil(N / batch_size) batches of
    batch_size // process_count rows, and global batch k holds examples
    [k * batch_size, (k + 1) * batch_size), process p taking its p-th slice; so every example
    appears exactly once over all processes. Rows past the end are padding: zero image,
    label -1, index -1, mask False. `images` is an (N, H, W, 3) uint8 array or `ImageFiles`
    (read one file at a time).

    Yields:
      {"image": (B, S, S, 3) float32 normalised, "label": (B,) int32, "index": (B,) int32,
       "mask": (B,) bool}, B = batch_size // process_count.
    """
    _check_arrays(images, labels)
    local_batch = _local_batch_size(batch_size, process_count, "batch_size")
    num_examples = len(images)
    num_batches = -(-num_examples // batch_size)
    labels_t = tf.constant(labels.astype(np.int32))
    if isinstance(images, ImageFiles):
        stored_size = None if images.size is None else (images.size, images.size)
    else:
        stored_size = tuple(images.shape[1:3])
    read_image = _image_reader(images)

    def rows(positions: tf.Tensor, image: tf.Tensor) -> dict[str, tf.Tensor]:
        # `image`: the examples at `positions` (clamped to the last example) as uint8.
        mask = positions < num_examples
        index = tf.minimum(positions, num_examples - 1)
        image = tf.image.convert_image_dtype(image, tf.float32)
        if stored_size != (image_size, image_size):
            image = resize(image, image_size)
        image = _normalise(image, mean, std) * tf.cast(mask, tf.float32)[..., None, None, None]
        return {
            "image": tf.ensure_shape(image, (*positions.shape, image_size, image_size, 3)),
            "label": tf.where(mask, tf.gather(labels_t, index), -1),
            "index": tf.where(mask, tf.cast(index, tf.int32), -1),
            "mask": mask,
        }

    def first_position(step: tf.Tensor) -> tf.Tensor:
        return step * batch_size + process_index * local_batch

    if isinstance(images, ImageFiles):  # One file per element, then batches.
        def load_example(counter: tf.Tensor) -> dict[str, tf.Tensor]:
            position = first_position(counter // local_batch) + counter % local_batch
            return rows(position, read_image(tf.minimum(position, num_examples - 1)))

        ds = tf.data.Dataset.range(num_batches * local_batch)
        ds = ds.map(graph_fn(load_example), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(local_batch, drop_remainder=True)
    else:  # A whole batch per element, gathered from memory.
        def load_batch(step: tf.Tensor) -> dict[str, tf.Tensor]:
            positions = first_position(step) + tf.range(local_batch, dtype=tf.int64)
            return rows(positions, read_image(tf.minimum(positions, num_examples - 1)))

        ds = tf.data.Dataset.range(num_batches)
        ds = ds.map(graph_fn(load_batch), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_deterministic_options())
    if not isinstance(images, ImageFiles):
        return ds.as_numpy_iterator()

    def indices_of_batch(step: int) -> np.ndarray:
        positions = step * batch_size + process_index * local_batch + np.arange(local_batch)
        return np.minimum(positions, num_examples - 1)

    return naming_unreadable_files(ds.as_numpy_iterator(), images, indices_of_batch)


def _deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options
