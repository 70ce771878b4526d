"""Weighted k-nearest-neighbour classification (the InstDisc / SimCLR-CIFAR monitor).

Each query votes with its k most cosine-similar bank examples, each weighted by exp(sim / T);
the class with the largest total weight wins. Features are L2-normalised here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from amcl_jax import losses


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_votes(queries, bank, bank_labels, *, k: int, temperature: float, num_classes: int):
    sims = queries @ bank.T  # (Q, Nb) cosine similarities.
    top_sims, top_idx = jax.lax.top_k(sims, k)
    weights = jnp.exp(top_sims / temperature)
    one_hot = jax.nn.one_hot(bank_labels[top_idx], num_classes, dtype=jnp.float32)
    return jnp.einsum("qk,qkc->qc", weights, one_hot)


def _normalise(x: np.ndarray) -> jax.Array:
    return losses.l2_normalize(jnp.asarray(x, jnp.float32))


def knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, *,
                k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                query_chunk: int = 1024) -> np.ndarray:
    """Predicted labels (Q,) int32 for queries (Q, F) against a bank (Nb, F) with labels (Nb,).

    k is capped at the bank size; queries are processed in chunks so the (Q, Nb) similarity
    matrix never exceeds query_chunk rows.
    """
    if num_classes is None:
        num_classes = int(np.max(bank_labels)) + 1
    bank_n = _normalise(bank)
    labels = jnp.asarray(bank_labels, jnp.int32)
    k = min(k, bank_n.shape[0])
    predictions = []
    for start in range(0, len(queries), query_chunk):
        q = _normalise(queries[start:start + query_chunk])
        votes = _knn_votes(q, bank_n, labels, k=k, temperature=float(temperature),
                           num_classes=num_classes)
        predictions.append(np.asarray(jnp.argmax(votes, axis=-1), np.int32))
    return np.concatenate(predictions) if predictions else np.zeros((0,), np.int32)


def knn_accuracy(bank, bank_labels, queries, query_labels, **kwargs) -> float:
    """Top-1 accuracy (a fraction) of `knn_predict`."""
    predictions = knn_predict(bank, bank_labels, queries, **kwargs)
    return float(np.mean(predictions == np.asarray(query_labels)))
