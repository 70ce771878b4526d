"""Shared by the evaluators: labelled splits, and features of a frozen encoder at a chosen layer.

Every evaluator runs the encoder in inference mode (BatchNorm with its running statistics, no
state update) under `jax.jit`, outside any gradient: the pretrained parameters are read, never
written.

Evaluating on other data (`evaluation_configs`): by default the evaluators read the pretraining
data as the workdir's `config.json` records them. `eval_dataset` (another dataset: transfer, e.g.
CIFAR-100 features of a CIFAR-10 encoder) and `eval_data_dir` (where that dataset is, or where
the pretraining data have moved) change what is read; the encoder's input contract does not
change: images are resized to the pretraining `data.image_size` and normalised with the
pretraining dataset's statistics, and the classes are the evaluation data's. `overrides`
(`--config.<field>=` in an evaluation mode) may set only `EVALUATION_FIELDS`; any other field
describes the pretraining and is refused (UsageError naming it).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from amcl_jax import data as data_lib
from amcl_jax import losses
from amcl_jax.data import inputs
from amcl_jax.evaluate import monitor

# "backbone": the encoder's pooled features (the paper's kNN and linear-probe input);
# "head<c>": projection head c's output; "heads": every head's L2-normalised output, concatenated.
FEATURE_LAYERS = ("backbone", "head<c>", "heads")


# Fields of the pretraining config that an evaluation may override (`--config.<field>=` in an
# evaluation mode): the kNN settings and evaluation sizes, the splits evaluated, and how the
# data are read. Every other field describes the pretraining (the encoder, its input contract,
# its training) and is refused. Which data: `eval_dataset` and `eval_data_dir`, not data.dataset
# and data.data_dir (the pretraining's, which stay recorded as they were).
EVALUATION_FIELDS = (
    "eval.knn_k", "eval.knn_temperature", "eval.batch_size", "eval.max_bank_examples",
    "eval.max_query_examples", "data.eval_train_split", "data.eval_test_split",
    "data.cache_dir", "data.download", "data.corrupt_images", "data.streaming",
)
_DATA_FLAGS = {"data.dataset": "--eval_dataset", "data.data_dir": "--eval_data_dir"}


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Raises UsageError naming the first `--config.<field>` that is not an evaluation field."""
    from amcl_jax.errors import UsageError

    for field, value in overrides.items():
        if field in EVALUATION_FIELDS:
            continue
        if field in _DATA_FLAGS:
            raise UsageError(
                f"--config.{field}={value!r}: an evaluation reads other data with "
                f"{_DATA_FLAGS[field]}=... ({field} stays the pretraining's, as config.json "
                "records it)")
        raise UsageError(
            f"--config.{field}={value!r} cannot change in an evaluation: the encoder is "
            "evaluated as --workdir's config.json records it; allowed are --config."
            + ", --config.".join(EVALUATION_FIELDS) + ", and --eval_dataset, --eval_data_dir")


def _set(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    section, name = field.split(".")
    config[section][name] = value


def evaluation_configs(config: ml_collections.ConfigDict, *, eval_dataset: str | None = None,
                       eval_data_dir: str | None = None,
                       overrides: Mapping[str, Any] | None = None, num_devices: int = 1
                       ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(config, data_config) of an evaluation of a pretrained `config` (its config.json).

    `config`: a copy with `overrides` (EVALUATION_FIELDS only) applied; it gives the encoder, its
    input contract (data.image_size, the normalisation of data.dataset) and the evaluation
    settings. `data_config`: the same with the data to read (`load_labelled_split`):
    `eval_dataset` (None or the pretraining dataset: the pretraining data) and `eval_data_dir`
    (None: the pretraining data_dir for the pretraining dataset, TFDS's default place, "", for
    another). Another dataset is read at its native size (data.load_size and data.streaming of
    the pretraining do not carry over; ImageNet-style data are centre-cropped at
    data.image_size) and resized to data.image_size as batches are made.

    Raises UsageError (a field that cannot change) or ConfigError (an invalid value, naming the
    field or the flag), before anything is loaded.
    """
    from amcl_jax.config import ConfigError, get_default_config, validate_config

    overrides = dict(overrides or {})
    check_overrides(overrides)
    config = copy.deepcopy(config)
    for field, value in overrides.items():
        _set(config, field, value)
    data_config = copy.deepcopy(config)
    other = bool(eval_dataset) and eval_dataset != config.data.dataset
    if other:
        data_config.data.dataset = eval_dataset
        data_config.data.data_dir = ""
        data_config.data.load_size = -1
        data_config.data.streaming = overrides.get("data.streaming", False)
    if eval_data_dir is not None:
        data_config.data.data_dir = eval_data_dir
    # Validated as a default config carrying the evaluation's fields: the rest of config.json
    # is the pretraining's (valid when it ran) and is not the evaluation's business.
    checked = get_default_config()
    for field in (*EVALUATION_FIELDS, "data.dataset", "data.data_dir", "data.image_size"):
        section, name = field.split(".")
        if name in data_config[section]:
            _set(checked, field, data_config[section][name])
    try:
        validate_config(checked, num_devices=num_devices)
    except ConfigError as e:
        message = str(e)
        given = {"data.dataset": eval_dataset, "data.data_dir": eval_data_dir}
        for field, flag in _DATA_FLAGS.items():
            if not message.startswith(f"config.{field}="):
                continue
            if given[field] is not None or (field == "data.data_dir" and other):
                message = flag + message[len(f"config.{field}"):]
            else:
                message += f" (--workdir's config.json; {flag}=... reads other data)"
        raise ConfigError(message) from None
    return config, data_config


def other_data(config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict) -> bool:
    """Whether the evaluation reads another dataset than the encoder was pretrained on."""
    return data_config.data.dataset != config.data.dataset


def result_file(name: str, config: ml_collections.ConfigDict,
                data_config: ml_collections.ConfigDict) -> str:
    """`name` (e.g. knn.json) for the pretraining data, `<stem>_<dataset>.json` for another
    dataset (e.g. knn_cifar100.json), so a transfer result never replaces the in-domain one."""
    if not other_data(config, data_config):
        return name
    stem, ext = os.path.splitext(name)
    return f"{stem}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', data_config.data.dataset)}{ext}"


def load_labelled_split(config: ml_collections.ConfigDict, split: str, max_examples: int = -1
                        ) -> tuple[np.ndarray | data_lib.ImageFiles, np.ndarray, int]:
    """(images uint8 or their files, labels int32, num_classes) of `split`, without unlabelled
    examples.

    Examples labelled -1 (STL-10's "unlabelled" split) are dropped; `max_examples` > 0 keeps a
    fixed random subset (seed 0), as the pretraining monitor does. ImageNet-style datasets are
    loaded as evaluated: resized to data.image_size / 0.875 and centre-cropped
    (`data.inputs.load_data(for_evaluation=True)`).
    """
    images, labels, num_classes = inputs.load_data(config, split, for_evaluation=True)
    if np.any(labels < 0):
        images, labels = images[labels >= 0], labels[labels >= 0]
    images, labels = inputs.fixed_subset(images, labels, max_examples)
    return images, labels, num_classes


def features_fn_for_layer(model, layer: str, compiler_options: dict | None = None
                          ) -> Callable[[dict, jax.Array], jax.Array]:
    """A jitted `fn(variables, images (B, H, W, 3)) -> (B, F) float32` for `layer`.

    `compiler_options`: for `jax.jit`, as `program.compiler_options(config)` gives them.
    """
    jit = functools.partial(jax.jit, compiler_options=compiler_options)
    if layer == "backbone":
        return jit(lambda variables, x: model.apply(variables, x, method="features"))
    match = re.fullmatch(r"head(\d+)", layer)
    if match is None and layer != "heads":
        from amcl_jax.errors import UsageError

        raise UsageError(f"--feature_layer={layer!r} is invalid: allowed are backbone, head0, "
                         "head1, ..., heads")

    def projections(variables, x):
        out = model.apply(variables, x, train=False)
        if not (isinstance(out, tuple) and len(out) == 2 and out[1].ndim == 3):
            from amcl_jax.errors import UsageError

            raise UsageError(f"--feature_layer={layer!r} is invalid: this model has no "
                             "multi-head projector (use backbone)")
        return out[1]  # (C, B, D)

    if layer == "heads":
        def all_heads(variables, x):
            z = projections(variables, x)
            z = losses.l2_normalize(z)
            return jnp.transpose(z, (1, 0, 2)).reshape(x.shape[0], -1)
        return jit(all_heads)
    head = int(match.group(1))

    def one_head(variables, x):
        z = projections(variables, x)
        if head >= z.shape[0]:  # Checked when traced: an index past the end would be clamped.
            from amcl_jax.errors import UsageError

            raise UsageError(f"--feature_layer={layer!r} is invalid: this model has "
                             f"{z.shape[0]} heads, head0 to head{z.shape[0] - 1}")
        return z[head]
    return jit(one_head)


def extract(config, features_fn, variables, images: np.ndarray, labels: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) float32 and labels (N,) of every example once (monitor.extract_features)."""
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    return monitor.extract_features(features_fn, variables, images, labels, config=config,
                                    mesh=mesh)
