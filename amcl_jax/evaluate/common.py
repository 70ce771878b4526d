"""Shared by the evaluators: labelled splits, and features of a frozen encoder at a chosen layer.

Every evaluator runs the encoder in inference mode (BatchNorm with its running statistics, no
state update) under `jax.jit`, outside any gradient: the pretrained parameters are read, never
written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from amcl_jax import data as data_lib
from amcl_jax import losses, train

# "backbone": the encoder's pooled features (the paper's kNN and linear-probe input);
# "head<c>": projection head c's output; "heads": every head's L2-normalised output, concatenated.
FEATURE_LAYERS = ("backbone", "head<c>", "heads")


def load_labelled_split(config: ml_collections.ConfigDict, split: str, max_examples: int = -1
                        ) -> tuple[np.ndarray | data_lib.ImageFiles, np.ndarray, int]:
    """(images uint8 or their files, labels int32, num_classes) of `split`, without unlabelled
    examples.

    Examples labelled -1 (STL-10's "unlabelled" split) are dropped; `max_examples` > 0 keeps a
    fixed random subset (seed 0), as the pretraining monitor does. ImageNet-style datasets are
    loaded as evaluated: resized to data.image_size / 0.875 and centre-cropped
    (`train.load_data(for_evaluation=True)`).
    """
    images, labels, num_classes = train.load_data(config, split, for_evaluation=True)
    if np.any(labels < 0):
        images, labels = images[labels >= 0], labels[labels >= 0]
    images, labels = train.fixed_subset(images, labels, max_examples)
    return images, labels, num_classes


def features_fn_for_layer(model, layer: str, compiler_options: dict | None = None
                          ) -> Callable[[dict, jax.Array], jax.Array]:
    """A jitted `fn(variables, images (B, H, W, 3)) -> (B, F) float32` for `layer`.

    `compiler_options`: for `jax.jit`, as `train.compiler_options(config)` gives them.
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
    """Features (N, F) float32 and labels (N,) of every example once (train.extract_features)."""
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    return train.extract_features(features_fn, variables, images, labels, config=config,
                                  mesh=mesh)


def normalisation(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return data_lib.dataset_stats(dataset)
