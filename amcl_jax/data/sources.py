"""Where examples come from: whole splits loaded into memory as uint8 arrays.

Four kinds of source, picked by `load_split(dataset, split, data_dir=...)`:

- ``dataset="digits"``: scikit-learn's 1,797 8x8 digits (ships in the wheel, no files needed).
- a ``.npz`` file (``data_dir``) of uint8 arrays ``<split>_images`` and ``<split>_labels``; the
  ``dataset`` name only picks the normalisation constants.
- an **image folder** laid out ``<split>/<class_name>/<image>`` (PNG/JPEG/BMP/GIF), or an archive
  of one (``.tar.gz``/``.tgz``/``.tar``/``.zip``) which is extracted once into a cache folder.
  Used when ``dataset="image_folder"``, when ``data_dir`` is an archive file, or when ``data_dir``
  holds a ``<split>`` folder; the ``dataset`` name (e.g. "cifar10") then only picks the
  normalisation constants.
- otherwise a **TFDS dataset** by name (cifar10, cifar100, stl10, ...) read from ``data_dir``;
  downloading happens only with ``download=True``.

Splits are loaded into memory as uint8 arrays, which suits digits, CIFAR, STL-10 and folders of
small images. Without TensorFlow installed, digits, .npz files and image folders (decoded with
Pillow) still load; TFDS datasets need it. With ``streaming=True`` an image folder (or archive,
or an ImageNet subset's folder) is returned as `files.ImageFiles` instead, its files decoded by
the input pipeline as batches need them, which suits ImageNet-scale folders.
"""

from __future__ import annotations

import os

import numpy as np

from amcl_jax.data import folders, imagenet_subsets
from amcl_jax.data._tf import graph_fn, tf
from amcl_jax.data.files import (
    ImageFiles,
    resize_centre_crop,
    resize_square,
    resize_uint8,
)
from amcl_jax.data.folders import ARCHIVE_SUFFIXES

# Per-channel mean and std of pixel values in [0, 1], used as (x - mean) / std.
DATASET_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet100": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Grayscale digits replicated to 3 channels (measured on the 8x8 images scaled to [0, 1]).
    "digits": ((0.3053, 0.3053, 0.3053), (0.3759, 0.3759, 0.3759)),
}
DEFAULT_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Names that say "a file" (a source file, or another archive or array format): a data_dir ending
# so that does not exist is a mistyped path, never a folder TFDS may create and download into.
FILE_NAME_SUFFIXES = (".npz", *ARCHIVE_SUFFIXES, ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".gz",
                      ".bz2", ".xz", ".7z", ".rar", ".npy", ".h5", ".hdf5", ".pkl", ".tfrecord")
DATA_DIR_ALLOWED = (
    "an image folder (<dir>/<split>/<class>/<image>), an archive of one (.tar.gz, .tgz, .tar, "
    ".zip), a .npz file, or a TFDS data_dir (an existing folder; with data.download=True also a "
    "new folder inside an existing one, for a TFDS dataset name)")
DIGITS_TEST_EVERY = 6  # every 6th digit of each class (in a fixed shuffled order) is "test": 297


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel for pixels in [0, 1]; 0.5/0.5 for unknown names.

    A TFDS config or version suffix is ignored: "cifar10:3.0.2" -> cifar10's constants.
    """
    key = name.lower().split(":")[0].split("/")[0]
    return DATASET_STATS.get(key, DEFAULT_STATS)


def data_dir_problem(dataset: str, data_dir: str | None, download: bool) -> str | None:
    """Why `data.data_dir` cannot be read for `dataset`, or None: checked before anything is
    written or downloaded (`load_split`, and `config.validate_config` before the workdir).

    A path that does not exist is refused, except as a TFDS data_dir to download into (with
    `download`, a TFDS dataset name, and an existing parent folder): TFDS would otherwise create
    folders inside a mistyped path, or retry a download for minutes. A missing path named like
    a file (.npz, .tar.gz, ...) is always refused, as is an existing file of another kind.
    """
    if not data_dir:
        return None
    path = os.path.expanduser(data_dir)
    if os.path.isdir(path):
        return None
    if os.path.exists(path):
        if path.lower().endswith((".npz", *ARCHIVE_SUFFIXES)) and os.path.isfile(path):
            return None
        return "is a file, but neither a .npz file nor an archive (.tar.gz, .tgz, .tar, .zip)"
    if path.lower().endswith(FILE_NAME_SUFFIXES):
        return "names a file that does not exist"
    if not download or dataset in ("digits", "image_folder"):
        return "does not exist"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return (f"does not exist, nor does its parent folder {parent} (TFDS downloads only into "
                "an existing folder or a new one inside an existing folder)")
    return None


def check_data_dir(dataset: str, data_dir: str | None, download: bool) -> None:
    """Raises ValueError (one line naming data.data_dir) if `data_dir_problem` finds one."""
    problem = data_dir_problem(dataset, data_dir, download)
    if problem is not None:
        raise ValueError(f"data.data_dir={data_dir!r} is invalid: it {problem}; allowed: "
                         f"{DATA_DIR_ALLOWED}")


# ImageNet-style datasets (photographs of many sizes and aspect ratios): evaluated on the centre
# crop (`files.resize_centre_crop`) rather than on the squashed image.
CENTRE_CROP_DATASETS = ("imagenet2012", "imagenet2012_subset", "imagenet_v2",
                        *imagenet_subsets.SUBSETS)


def evaluates_with_centre_crop(dataset: str) -> bool:
    """Whether `data.dataset` is evaluated on centre crops (a TFDS version or config suffix, as in
    "imagenet2012:5.1.0" or "imagenet2012_subset/10pct", is ignored)."""
    return dataset.split(":")[0].split("/")[0] in CENTRE_CROP_DATASETS


def load_split(
    dataset: str,
    split: str,
    *,
    data_dir: str | None,
    cache_dir: str | None = None,
    image_size: int | None = None,
    download: bool = False,
    corrupt_images: str = "skip",
    streaming: bool = False,
    centre_crop: bool = False,
) -> tuple[np.ndarray | ImageFiles, np.ndarray, int]:
    """Loads one split into memory, or lists its image files (`streaming`).

    Args:
      dataset: "digits", "image_folder", or a TFDS name ("cifar10", "stl10", ...).
      split: "train", "test", ...; "a+b" concatenates splits (TFDS: any split expression,
        e.g. "train+unlabelled" for STL-10, whose unlabelled examples have label -1).
      data_dir: an image folder, an archive of one, or a TFDS data_dir (None: TFDS default).
      cache_dir: parent folder for extracted archives (default ``~/.cache/amcl_jax``).
      image_size: if given, every image is resized (bilinear) to image_size x image_size.
      download: let TFDS download and prepare the dataset (needs network).
      corrupt_images: image folders loaded into memory: "skip" drops files that cannot be
        decoded (reported with their count and names), "fail" raises ValueError naming the
        first one. A streamed split's files are decoded only when read.
      streaming: return the split's files (image folders, archives and ImageNet subsets' folders
        only) instead of decoding them into memory.
      centre_crop: with `image_size`, each image is resized as ImageNet evaluation does
        (`files.resize_centre_crop`: shorter side to image_size / 0.875, central crop) instead
        of squashed to a square; decoded with TensorFlow.

    Returns:
      images: (N, H, W, 3) uint8, or `ImageFiles` when streaming (each resized to image_size
        when it is given); labels: (N,) int32; num_classes: int.

    Raises:
      ValueError naming ``data.dataset`` or ``data.data_dir`` when nothing can be loaded; before
      anything is read, extracted or downloaded when `data_dir` does not exist
      (`check_data_dir`: only a new TFDS data_dir inside an existing folder is downloaded into).
    """
    if centre_crop and image_size is None:
        raise ValueError("centre_crop needs an image_size")
    if dataset != "digits":  # Digits read no files (config.validate_config refuses a data_dir).
        check_data_dir(dataset, data_dir, download)
        data_dir = os.path.expanduser(data_dir) if data_dir else data_dir
    if dataset in imagenet_subsets.SUBSETS:  # ImageNet-100: imagenet2012 or a folder, filtered.
        images, labels, num_classes = imagenet_subsets.load_subset(
            dataset, split, data_dir=data_dir, image_size=image_size or 224, download=download,
            streaming=streaming, centre_crop=centre_crop)
        return images, labels.astype(np.int32), num_classes
    is_folder = dataset != "digits" and (dataset == "image_folder"
                                         or folders.is_image_folder_source(data_dir, split))
    if streaming and not is_folder:
        raise ValueError(
            f"data.streaming=True reads image files: it needs data.data_dir to be an image "
            f"folder or an archive of one (data.dataset={dataset!r}, data.data_dir="
            f"{data_dir!r}); TFDS datasets and digits are loaded into memory "
            f"(data.streaming=False)")
    if dataset == "digits":
        images, labels, num_classes = _load_digits(split)
    elif _is_npz(data_dir):
        images, labels, num_classes = _load_npz(data_dir, split)
    elif is_folder:
        if data_dir is None:
            raise ValueError("data.dataset='image_folder' needs data.data_dir (folder or archive)")
        archive = folders.is_archive(data_dir)
        root = folders.extract_archive(data_dir, cache_dir=cache_dir) if archive else data_dir
        if streaming:
            paths, labels, num_classes = folders.list_image_folder(root, split)
            return ImageFiles(paths, image_size, centre_crop), labels, num_classes
        if centre_crop:  # Evaluation images: decoded anew, not from the training cache.
            images, labels, num_classes = folders.load_image_folder(
                root, split, image_size, corrupt_images, centre_crop=True)
        else:
            load = folders.load_decoded_cache if archive else folders.load_image_folder
            images, labels, num_classes = load(root, split, image_size, corrupt_images)
    else:
        images, labels, num_classes = _load_tfds(dataset, split, data_dir, download, image_size,
                                                 centre_crop)
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        images = resize_uint8(images, image_size)
    return images, labels.astype(np.int32), num_classes


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as `load_digits` gives them: (1797, 8, 8) float64 in 0..16 and the
    labels. Read from the CSV its wheel ships, without importing `sklearn.datasets` (a second of
    imports in every run on digits, for a 100 KB file); through `load_digits` where this
    scikit-learn keeps the file elsewhere."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray, int]:
    digit_images, digit_labels = digits_arrays()
    images = np.round(digit_images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digit_labels.astype(np.int32)
    # A fixed stratified split that depends on no RNG library: order examples by a hash of their
    # index, then send every DIGITS_TEST_EVERY-th example of each class to "test".
    order = np.argsort(_mix32(np.arange(len(labels), dtype=np.uint64)), kind="stable")
    is_test = np.zeros(len(labels), bool)
    for label in range(10):
        members = order[labels[order] == label]
        is_test[members[::DIGITS_TEST_EVERY]] = True
    parts = {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}
    selected = []
    for name in split.split("+"):
        name = name.strip()
        if name not in parts:
            raise ValueError(f"data.dataset='digits' has splits 'train' and 'test', got {split!r}")
        selected.append(parts[name])
    index = np.concatenate(selected)
    return images[index], labels[index], 10


def _mix32(x: np.ndarray) -> np.ndarray:
    """A fixed integer hash (murmur3 finaliser) of uint64 values, truncated to 32 bits."""
    mask = np.uint64(0xFFFFFFFF)
    x = x & mask
    x = ((x ^ (x >> np.uint64(16))) * np.uint64(0x85EBCA6B)) & mask
    x = ((x ^ (x >> np.uint64(13))) * np.uint64(0xC2B2AE35)) & mask
    return x ^ (x >> np.uint64(16))


# ---------------------------------------------------------------------------------------------
# .npz of uint8 arrays
# ---------------------------------------------------------------------------------------------
def _is_npz(path: str | None) -> bool:
    return path is not None and path.lower().endswith(".npz") and os.path.isfile(path)


def _load_npz(path: str, split: str) -> tuple[np.ndarray, np.ndarray, int]:
    """`<split>_images` (N, H, W, 3) or (N, H, W) uint8 and `<split>_labels` (N,) int from the
    .npz at `path` ("a+b" concatenates); `num_classes` if stored, else max label + 1."""
    with np.load(path) as stored:
        names = split.split("+")
        missing = [f"{n.strip()}_{part}" for n in names for part in ("images", "labels")
                   if f"{n.strip()}_{part}" not in stored]
        if missing:
            raise ValueError(f"data.data_dir={path!r} has no array {missing[0]!r} (holds "
                             f"{sorted(stored.files)}): a .npz source stores <split>_images "
                             "and <split>_labels")
        parts = []
        for name in names:
            images = stored[f"{name.strip()}_images"]
            if images.dtype != np.uint8 or images.ndim not in (3, 4):
                raise ValueError(f"data.data_dir={path!r}: {name}_images must be (N, H, W[, 3]) "
                                 f"uint8, got {images.shape} {images.dtype}")
            images = images[..., None] if images.ndim == 3 else images
            parts.append(np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images)
        images = np.concatenate(parts)
        labels = np.concatenate([stored[f"{n.strip()}_labels"] for n in names]).astype(np.int32)
        num_classes = int(stored["num_classes"]) if "num_classes" in stored else None
    if labels.shape != (len(images),):
        raise ValueError(f"data.data_dir={path!r}: {split} has {len(images)} images but labels "
                         f"of shape {labels.shape}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    return images, labels, num_classes


# ---------------------------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------------------------
def _load_tfds(
    dataset: str, split: str, data_dir: str | None, download: bool, image_size: int | None = None,
    centre_crop: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """A TFDS split in memory; with `image_size`, each image is resized (`resize_square`, or
    `resize_centre_crop` with `centre_crop`) as it is decoded, so that images of different sizes
    (ImageNet) batch and only the resized split is ever held."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError, bad config names, ...
        raise ValueError(
            f"data.dataset={dataset!r} is not 'digits', 'image_folder', a TFDS dataset name, and "
            f"data.data_dir={data_dir!r} is not an image folder or archive: {error}"
        ) from error
    try:
        # Batches rather than batch_size=-1: the same code reads real data and
        # tfds.testing.mock_data (where batch_size=-1 aborts the process).
        ds = tfds.load(
            dataset, split=split, data_dir=data_dir, download=download, as_supervised=False
        )
        def example(ex):
            image = ex["image"]
            if image_size is not None:
                image = (resize_centre_crop(image, image_size) if centre_crop
                         else resize_square(image, image_size))
            return image, ex["label"]

        ds = ds.map(graph_fn(example), num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
        chunks = list(ds.as_numpy_iterator())
        if not chunks:
            raise ValueError(f"split {split!r} is empty")
        images = np.concatenate([c[0] for c in chunks])
        labels = np.concatenate([c[1] for c in chunks])
    except Exception as error:
        hint = "" if download else " (set data.download=True to download it)"
        if image_size is None and "to the batch" in str(error):  # tf.data's batching error
            hint = " (its images differ in size: set data.load_size to resize them while loading)"
        raise ValueError(
            f"could not load TFDS data.dataset={dataset!r} split={split!r} from "
            f"data.data_dir={data_dir!r}{hint}: {error}"
        ) from error
    if images.ndim == 3:  # grayscale datasets without a channel axis
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    num_classes = builder.info.features["label"].num_classes
    return images.astype(np.uint8), labels.astype(np.int32), int(num_classes)
