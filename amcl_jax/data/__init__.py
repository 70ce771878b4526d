"""Input data: in-memory sources, stateless augmentations, and (seed, step)-pure tf.data pipelines.

    files.py     read_image, ImageFiles (a split kept as files: data.streaming)
    sources.py   load_split (digits, image folders/archives, TFDS), dataset_stats
    augment.py   the paper's augmentation letters a..e as stateless TF ops, make_view_fn
    pipeline.py  train_iterator (resumable from any step), eval_iterator, steps_per_epoch
"""

from amcl_jax.data.augment import (
    AUGMENTATION_LETTERS,
    color_jitter,
    gaussian_blur,
    make_view_fn,
    random_flip,
    random_grayscale,
    random_resized_crop,
    solarize,
    validate_letters,
)
from amcl_jax.data.files import ImageFiles, UnreadableImageError, read_image
from amcl_jax.data.pipeline import eval_iterator, example_index, steps_per_epoch, train_iterator
from amcl_jax.data.sources import (
    DATASET_STATS,
    dataset_stats,
    extract_archive,
    load_split,
)

__all__ = [
    "AUGMENTATION_LETTERS",
    "DATASET_STATS",
    "ImageFiles",
    "color_jitter",
    "dataset_stats",
    "eval_iterator",
    "example_index",
    "extract_archive",
    "gaussian_blur",
    "load_split",
    "make_view_fn",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "read_image",
    "solarize",
    "steps_per_epoch",
    "train_iterator",
    "UnreadableImageError",
    "validate_letters",
]
