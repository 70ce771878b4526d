"""Input data: in-memory sources, stateless augmentations, and (seed, step)-pure input pipelines.

    files.py           read_image, ImageFiles (a split kept as files: data.streaming)
    sources.py         load_split (digits, .npz, image folders/archives, TFDS), dataset_stats
    folders.py         image folders and archives of one: listed, or decoded into memory
    augment.py         the paper's augmentation letters a..e as stateless TF ops, make_view_fn
    pipeline.py        train_iterator (resumable from any step), eval_iterator, steps_per_epoch
    shuffle.py         the training stream's example order without TensorFlow
    device_augment.py  the views made on the accelerator (data.augment_on="device"), DeviceViews

TensorFlow is imported when a tf.data pipeline, a TF decoder or TFDS is first used (`_tf.py`),
so a run with views made on the devices from an in-memory split needs no TensorFlow.
"""

from amcl_jax.data._tf import available as tensorflow_available
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
from amcl_jax.data.device_augment import DeviceViews
from amcl_jax.data.files import ImageFiles, UnreadableImageError, read_image
from amcl_jax.data.folders import extract_archive
from amcl_jax.data.pipeline import eval_iterator, example_index, steps_per_epoch, train_iterator
from amcl_jax.data.sources import (
    DATASET_STATS,
    dataset_stats,
    evaluates_with_centre_crop,
    load_split,
)

__all__ = [
    "AUGMENTATION_LETTERS",
    "DATASET_STATS",
    "DeviceViews",
    "ImageFiles",
    "color_jitter",
    "dataset_stats",
    "eval_iterator",
    "evaluates_with_centre_crop",
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
    "tensorflow_available",
    "train_iterator",
    "UnreadableImageError",
    "validate_letters",
]
