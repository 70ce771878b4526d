"""The linear classifier of both linear probes: online (during pretraining, `train.py`) and
offline (on a frozen checkpoint, `evaluate/linear_probe.py`).

Params {"kernel": (F, K), "bias": (K,)} float32, zero-initialised; logits in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def init(num_features: int, num_classes: int) -> dict[str, jax.Array]:
    """Zero-initialised params: kernel (F, K), bias (K,) float32."""
    return {"kernel": jnp.zeros((num_features, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}


def logits(params: dict[str, jax.Array], features: jax.Array) -> jax.Array:
    """features (B, F) -> logits (B, K) float32."""
    return features.astype(jnp.float32) @ params["kernel"] + params["bias"]


def cross_entropy(params: dict[str, jax.Array], features: jax.Array, labels: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """(mean softmax cross-entropy over the labelled rows, logits (B, K)).

    labels (B,) int; -1 marks a row without a label (STL-10's unlabelled images), left out.
    """
    out = logits(params, features)
    valid = (labels >= 0).astype(jnp.float32)
    per_example = optax.softmax_cross_entropy_with_integer_labels(out, jnp.maximum(labels, 0))
    return jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0), out
