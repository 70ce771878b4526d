"""The pretraining run's data: the training split, the kNN monitor's bank and queries
(`load_inputs`), the run length they give, and the checks that the config fits the data and the
train state fits the device before anything is allocated.

Splits are uint8 arrays in memory, or `ImageFiles` with `data.streaming`; the loaders are in
`sources.py`, the views in `pipeline.py` (tf.data) and `device_augment.py` (jitted).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from amcl_jax import data as data_lib
from amcl_jax.data import device_augment


@dataclasses.dataclass
class Inputs:
    """The run's data: the training split, the kNN monitor's bank and queries (uint8 arrays, or
    `ImageFiles` when streamed), and what follows from them."""

    train_images: Any
    train_labels: np.ndarray
    bank_images: Any
    bank_labels: np.ndarray
    query_images: Any
    query_labels: np.ndarray
    num_classes: int
    total_steps: int
    augment_on: str  # Where the views are made: "host" (tf.data) or "device" (jitted).


def load_inputs(config: ml_collections.ConfigDict) -> Inputs:
    """Loads the splits `config.data` names, applies the subset caps and resolves the run length
    and `data.augment_on`; sets `online_probe.num_classes` = -1 to the data's class count (the
    caller records it)."""
    train_images, train_labels, num_classes = load_data(config, config.data.train_split)
    train_images, train_labels = fixed_subset(train_images, train_labels,
                                              config.data.get("max_train_examples", -1))
    if config.data.eval_train_split == config.data.train_split:
        bank_images, bank_labels = train_images, train_labels
    else:
        bank_images, bank_labels, _ = load_data(config, config.data.eval_train_split)
    if np.any(bank_labels < 0):  # STL-10's unlabelled examples (label -1) cannot vote.
        bank_images, bank_labels = bank_images[bank_labels >= 0], bank_labels[bank_labels >= 0]
    bank_images, bank_labels = fixed_subset(bank_images, bank_labels,
                                            config.eval.max_bank_examples)
    query_images, query_labels, _ = load_data(config, config.data.eval_test_split)
    query_images, query_labels = fixed_subset(query_images, query_labels,
                                              config.eval.max_query_examples)
    bank_images, query_images = monitor_images(config, bank_images), monitor_images(
        config, query_images)
    total_steps = total_steps_for(config, len(train_images))
    try:  # Where the views are made: tf.data on the host, or a jitted function on the devices.
        augment_on = device_augment.resolve_augment_on(
            config.data.get("augment_on", "host"), train_images, jax.devices()[0],
            tensorflow_available=data_lib.tensorflow_available())
    except ValueError as e:
        from amcl_jax.fields import ConfigError

        raise ConfigError(str(e)) from None
    if config.online_probe.enabled and config.online_probe.num_classes == -1:
        config.online_probe.num_classes = int(num_classes)
    logging.info("train examples %d, bank %d, queries %d, %d classes, %d steps, views made on "
                 "the %s", len(train_images), len(bank_images), len(query_images), num_classes,
                 total_steps, augment_on)
    return Inputs(train_images, train_labels, bank_images, bank_labels, query_images,
                  query_labels, int(num_classes), total_steps, augment_on)


def fixed_subset(images, labels, limit):
    """A fixed random subset of `limit` examples (all when limit <= 0): folders are class-sorted."""
    if limit <= 0 or limit >= len(images):
        return images, labels
    keep = np.sort(np.random.default_rng(0).permutation(len(images))[:limit])
    return images[keep], labels[keep]


def load_data(config: ml_collections.ConfigDict, split: str, *, for_evaluation: bool = False):
    """(images, labels, num_classes) of `split` as `config.data` says: a uint8 array in memory,
    or the split's `ImageFiles` with `data.streaming`.

    `for_evaluation` (the offline kNN and linear probe): an ImageNet-style dataset
    (`data.evaluates_with_centre_crop`) is loaded at `data.image_size` as its evaluation reads
    it, the shorter side resized to image_size / 0.875 and the centre cropped; other datasets
    as for pretraining.
    """
    centre_crop = for_evaluation and data_lib.evaluates_with_centre_crop(config.data.dataset)
    size = config.data.load_size if config.data.load_size > 0 else None
    return data_lib.load_split(
        config.data.dataset, split, data_dir=config.data.data_dir or None,
        cache_dir=config.data.cache_dir or None, download=config.data.download,
        image_size=config.data.image_size if centre_crop else size,
        corrupt_images=config.data.get("corrupt_images", "skip"),
        streaming=config.data.get("streaming", False), centre_crop=centre_crop)


def monitor_images(config: ml_collections.ConfigDict, images):
    """The kNN monitor's bank or queries: streamed files of an ImageNet-style dataset at native
    size are read as evaluation reads them (centre crop at `data.image_size`). Images held in
    memory stay as loaded: the bank is the pretraining split at `data.load_size`, and the
    queries must be resized as the bank is."""
    if (isinstance(images, data_lib.ImageFiles) and images.size is None
            and data_lib.evaluates_with_centre_crop(config.data.dataset)):
        return data_lib.ImageFiles(images.paths, config.data.image_size, centre_crop=True)
    return images


def total_steps_for(config, num_train_examples: int) -> int:
    if config.total_steps >= 0:
        return int(config.total_steps)
    return int(config.num_epochs) * data_lib.steps_per_epoch(num_train_examples, config.batch_size)


def check_data_sizes(config: ml_collections.ConfigDict, *, num_train: int,
                     bank_labels: np.ndarray, num_queries: int) -> None:
    """Raises ConfigError when the loaded data cannot give what the config asks: a batch larger
    than the training set, k larger than the kNN bank, a bank of fewer than 2 classes."""
    from amcl_jax.fields import ConfigError

    if config.batch_size > num_train:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is invalid: data.train_split="
            f"{config.data.train_split!r} has {num_train} examples (data.max_train_examples="
            f"{config.data.max_train_examples}); use a batch_size <= {num_train}")
    if config.eval.knn_k > len(bank_labels):
        raise ConfigError(
            f"config.eval.knn_k={config.eval.knn_k} is invalid: the kNN bank (data."
            f"eval_train_split={config.data.eval_train_split!r}, eval.max_bank_examples="
            f"{config.eval.max_bank_examples}) has {len(bank_labels)} labelled examples; "
            f"use eval.knn_k <= {len(bank_labels)}")
    classes = len(np.unique(bank_labels))
    if classes < 2:
        raise ConfigError(
            f"config.data.eval_train_split={config.data.eval_train_split!r} is invalid: its "
            f"labelled examples hold {classes} class(es); kNN accuracy and the linear probes "
            "need at least 2 (an image folder needs one subfolder per class)")
    if num_queries < 1:
        raise ConfigError(f"config.data.eval_test_split={config.data.eval_test_split!r} is "
                          "invalid: it has no labelled examples to evaluate")


def _format_bytes(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num_bytes < 1024 or unit == "PiB":
            return f"{num_bytes:.1f} {unit}" if unit != "bytes" else f"{int(num_bytes)} bytes"
        num_bytes /= 1024
    return ""


def check_state_fits(config: ml_collections.ConfigDict, state_shapes) -> None:
    """Raises ConfigError, with an estimate, when the train state (parameters, optimizer and
    method state) plus gradients and updates cannot fit in one device's memory: a failed
    allocation of that size can leave the runtime waiting forever instead of failing."""
    from amcl_jax.fields import ConfigError

    nbytes = lambda tree: sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                              for x in jax.tree.leaves(tree))
    param_bytes = nbytes(state_shapes.params)
    needed = nbytes(state_shapes) + 2 * param_bytes  # + gradients and updates.
    device = jax.local_devices()[0]
    try:
        available = int((device.memory_stats() or {}).get("bytes_limit", 0))
        where = f"one {device.platform.upper()} device's memory"
    except Exception:  # noqa: BLE001 (backends without memory statistics)
        available = 0
    if not available:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return
        where = "this machine's memory"
        needed *= jax.local_device_count()  # CPU devices share the host's memory.
    if needed > available:
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state_shapes.params))
        raise ConfigError(
            f"the model does not fit: its {num_params:,} parameters with their gradients and "
            f"optimizer state need at least {_format_bytes(needed)} (activations not counted) "
            f"and {where} is {_format_bytes(available)}; reduce amcl.num_heads="
            f"{config.amcl.num_heads}, projector.hidden_dim={config.projector.hidden_dim}, "
            f"projector.out_dim={config.projector.out_dim}, amcl.temperature_hidden_dim="
            f"{config.amcl.temperature_hidden_dim} or model.width={config.model.width}")
