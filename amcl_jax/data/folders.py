"""Image folders laid out ``<split>/<class_name>/<image>`` and archives of one (``.tar.gz``,
``.tgz``, ``.tar``, ``.zip``, extracted once into a cache folder): listed (streaming), or decoded
into memory with TensorFlow (Pillow where it is not installed), a decoded archive memoised as .npz
beside its extraction. `sources.load_split` picks this source."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib

import numpy as np
from absl import logging

from amcl_jax.data._tf import available as tensorflow_available
from amcl_jax.data._tf import graph_fn, tf
from amcl_jax.data.files import read_image, resize_uint8
from amcl_jax.errors import RunError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def is_archive(path: str | None) -> bool:
    return path is not None and path.lower().endswith(ARCHIVE_SUFFIXES) and os.path.isfile(path)


def is_image_folder_source(data_dir: str | None, split: str) -> bool:
    if data_dir is None:
        return False
    if is_archive(data_dir):
        return True
    first_split = split.split("+")[0].strip()
    return os.path.isdir(data_dir) and os.path.isdir(
        os.path.join(_image_root(data_dir, split), first_split)
    )


def _image_root(path: str, split: str) -> str:
    """The folder holding the split folders: `path`, or its only subfolder (archives often wrap
    their content in one top-level folder)."""
    first_split = split.split("+")[0].strip()
    if os.path.isdir(os.path.join(path, first_split)):
        return path
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    if len(entries) == 1 and os.path.isdir(os.path.join(path, entries[0], first_split)):
        return os.path.join(path, entries[0])
    return path


def archive_cache_path(archive: str, cache_dir: str | None = None) -> str:
    """Where `archive` is (or will be) extracted: ``<cache_dir>/<stem>-<hash>``.

    The hash covers the absolute path, size and modification time, so a changed archive gets a
    fresh folder.
    """
    archive = os.path.abspath(archive)
    info = os.stat(archive)
    key = f"{archive}|{info.st_size}|{info.st_mtime_ns}".encode()
    name = os.path.basename(archive)
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    parent = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "amcl_jax")
    return os.path.join(parent, f"{name}-{hashlib.sha1(key).hexdigest()[:10]}")


def extract_archive(archive: str, cache_dir: str | None = None) -> str:
    """Extracts `archive` once and returns the folder; later calls reuse it.

    Extraction goes to a temporary sibling folder that is renamed into place, so a crashed or
    concurrent extraction never leaves a half-filled cache folder behind.
    """
    target = archive_cache_path(archive, cache_dir)
    if os.path.isdir(target):
        return target
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".extract-", dir=parent)
    except OSError as error:
        if error.errno == errno.ENOSPC:  # The full-disk line of errors.describe.
            raise
        raise RunError(
            f"data.cache_dir={cache_dir or ''!r}: cannot create the folder {archive} is "
            f"extracted into under {parent} ({error.strerror}); set --config.data.cache_dir to a "
            "writable folder") from error
    try:
        _extract_into(archive, staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is shared like any folder
        try:
            os.rename(staging, target)
        except OSError:
            if not os.path.isdir(target):  # not a lost race with another process: a real error
                raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_decoded_cache(
    root: str, split: str, image_size: int | None, corrupt_images: str = "skip"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Image folder read, memoised as .npz next to an extracted archive (which never changes:
    its cache folder name hashes the archive), so later runs skip decoding every file."""
    name = f"decoded-{split.replace('+', '_')}-{image_size or 'native'}-{corrupt_images}.npz"
    if not tensorflow_available():  # Pillow's pixels are not always TF's: a cache of their own
        name = name.replace(".npz", "-pillow.npz")
    path = os.path.join(root, ".amcl_jax", name)
    if os.path.isfile(path):
        with np.load(path) as cached:
            return cached["images"], cached["labels"], int(cached["num_classes"])
    images, labels, num_classes = load_image_folder(root, split, image_size, corrupt_images)
    staging = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, staging = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as file:
            np.savez(file, images=images, labels=labels, num_classes=num_classes)
        os.chmod(staging, 0o644)
        os.replace(staging, path)  # atomic: a reader never sees a half-written file
    except OSError as error:  # A read-only (shared) cache or a full disk: only the memo is lost.
        logging.warning("the decoded images are not memoised in %s (%s): later runs decode "
                        "them again", path, error.strerror or error)
        if staging and os.path.exists(staging):
            os.remove(staging)
    return images, labels, num_classes


def _extract_into(archive: str, folder: str) -> None:
    """Extracts `archive` into `folder`; a truncated or damaged archive raises ValueError naming
    it (tarfile and zipfile name neither the file nor the cause)."""
    try:
        if archive.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(folder)
        else:
            with tarfile.open(archive) as tf_archive:
                # "data" rejects paths leaving `folder`.
                tf_archive.extractall(folder, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise ValueError(
            f"data.data_dir={archive!r} cannot be extracted, the archive is truncated or damaged "
            f"({type(error).__name__}: {error}); download or copy it again") from error


def _class_names(root: str) -> list[str]:
    """Sorted class folder names over all splits, so train and test share one label mapping."""
    names = set()
    for split_name in os.listdir(root):
        split_dir = os.path.join(root, split_name)
        if os.path.isdir(split_dir) and not split_name.startswith("."):
            names.update(
                c for c in os.listdir(split_dir)
                if os.path.isdir(os.path.join(split_dir, c)) and not c.startswith(".")
            )
    return sorted(names)


def load_image_folder(
    data_dir: str, split: str, image_size: int | None, corrupt_images: str = "skip",
    centre_crop: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Reads ``<root>/<split>/<class>/<image>`` into memory (see `list_image_folder`)."""
    paths, labels, num_classes = list_image_folder(data_dir, split)
    images, kept = _decode_files(paths, image_size, corrupt_images, centre_crop)
    return images, labels[kept], num_classes


def list_image_folder(data_dir: str, split: str) -> tuple[list[str], np.ndarray, int]:
    """Paths and labels of ``<root>/<split>/<class>/<image>``, in folder and file name order;
    labels index the sorted class folder names.

    Sorted names are the label order (for the CIFAR-10 class names this happens to be the
    official CIFAR order); labels are consistent across splits of one folder.
    """
    root = _image_root(data_dir, split)
    classes = _class_names(root)
    paths, labels = [], []
    for split_name in split.split("+"):
        split_dir = os.path.join(root, split_name.strip())
        if not os.path.isdir(split_dir):
            found = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
            raise ValueError(
                f"data.data_dir={data_dir!r} has no split folder {split_name!r} (found {found})"
            )
        for label, name in enumerate(classes):
            class_dir = os.path.join(split_dir, name)
            if not os.path.isdir(class_dir):
                continue
            for file in sorted(os.listdir(class_dir)):
                if file.lower().endswith(IMAGE_SUFFIXES):
                    paths.append(os.path.join(class_dir, file))
                    labels.append(label)
    if not paths:
        raise ValueError(f"data.data_dir={data_dir!r}: no images under split {split!r}")
    return paths, np.asarray(labels, np.int32), len(classes)


CORRUPT_IMAGE_POLICIES = ("skip", "fail")


def _decode_files(
    paths: list[str], image_size: int | None, corrupt_images: str = "skip",
    centre_crop: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes `paths` in order; returns (images (M, H, W, 3) uint8, kept (M,) indices into
    paths). Files that fail to decode are skipped and reported, or raise ("fail")."""
    if corrupt_images not in CORRUPT_IMAGE_POLICIES:
        raise ValueError(f"data.corrupt_images={corrupt_images!r}: allowed values are "
                         f"{', '.join(repr(p) for p in CORRUPT_IMAGE_POLICIES)}")
    if centre_crop:
        if not tensorflow_available():
            raise ValueError("centre-cropped evaluation images of an image folder are decoded "
                             "with TensorFlow, which is not installed")
        images, kept = _decode_with_tf(paths, image_size, centre_crop=True)
    else:
        decode = _decode_with_tf if tensorflow_available() else _decode_with_pillow
        images, kept = decode(paths, image_size)
    if len(kept) != len(paths):
        bad = sorted(set(range(len(paths))) - set(kept.tolist()))
        names = ", ".join(paths[i] for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        if corrupt_images == "fail":
            raise ValueError(f"cannot decode {len(bad)} image file(s): {names} (set "
                             "data.corrupt_images='skip' to skip them)")
        message = f"skipped {len(bad)} image file(s) that cannot be decoded: {names}"
        logging.warning(message)
        print(f"warning: {message}", flush=True)
        if not len(kept):
            raise ValueError(f"no image could be decoded ({names})")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"images have different sizes {sorted(shapes)[:4]}...: set data.load_size to resize "
            f"them at load, or data.streaming=true to read each file as it is (image folders)"
        )
    return np.stack(images), kept


def _decode_with_tf(paths: list[str], image_size: int | None, centre_crop: bool = False
                    ) -> tuple[list[np.ndarray], np.ndarray]:
    """(images, kept indices) of the files tf.data decodes (`files.read_image`)."""
    # Each element carries its index, so the files dropped by ignore_errors() can be named.
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths)).map(
        graph_fn(lambda index, path: (index, read_image(path, image_size, centre_crop))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    ).ignore_errors()
    if image_size is not None:
        batches = list(ds.batch(1024).as_numpy_iterator())
        kept = np.concatenate([b[0] for b in batches]) if batches else np.zeros(0, np.int64)
        return [im for b in batches for im in b[1]], kept
    pairs = list(ds.as_numpy_iterator())
    return [p[1] for p in pairs], np.asarray([p[0] for p in pairs], np.int64)


def _decode_with_pillow(paths: list[str], image_size: int | None
                        ) -> tuple[list[np.ndarray], np.ndarray]:
    """(images, kept indices) of the files Pillow decodes (as RGB), where TensorFlow is not
    installed; resized as `resize_uint8` resizes. Pillow and TF's JPEG decoders may differ by a
    grey level here and there (TF's default IDCT is the fast integer one)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def decode(path: str) -> np.ndarray | None:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, paths, chunksize=256))
    kept = np.asarray([i for i, image in enumerate(decoded) if image is not None], np.int64)
    images = [decoded[i] for i in kept]
    if image_size is not None:
        for shape in {image.shape for image in images}:  # one resize per distinct size
            rows = [i for i, image in enumerate(images) if image.shape == shape]
            resized = resize_uint8(np.stack([images[i] for i in rows]), image_size)
            for i, image in zip(rows, resized, strict=True):
                images[i] = image
    return images, kept
