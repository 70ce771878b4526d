"""MoCo's queue losses: each anchor's negatives are the queued keys of earlier batches.

MoCo's InfoNCE with one global temperature, and AMCL-MoCo: Eq. 2.1 (or 2.4) against the
queue with the top-k, hard-max or log-sum-exp negatives, in one direction or both.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from amcl_jax.losses import hard_negatives
from amcl_jax.losses.common import Metrics, l2_normalize
from amcl_jax.losses.contrastive import DEFAULT_CHUNK_SIZE, NEGATIVES_CHOICES
from amcl_jax.losses.hard_negatives import DEFAULT_TOPK
from amcl_jax.losses.regularisers import omega
from amcl_jax.losses.temperatures import (
    TemperatureFn,
    _pair_grid_temperatures,
    _tau_metrics,
    _temperatures,
)

QUEUE_DIRECTIONS = ("query", "query_and_key")


def moco_infonce(
    q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float
) -> tuple[jax.Array, Metrics]:
    """MoCo's InfoNCE: each query's positive is its key, its negatives are the queued keys.

    loss = mean_i [ logsumexp([q_i.k_i, q_i.queue_1, ..., q_i.queue_K] / t) - q_i.k_i / t ].

    Args:
      q: (N, D) queries (online network), any float dtype; L2-normalised inside.
      k: (N, D) keys (momentum network); the caller stops their gradient. L2-normalised inside.
      queue: (K, D) keys of earlier batches, L2-normalised inside.
      temperature: scalar t.

    Returns:
      loss: float32 scalar. metrics: float32 scalars `pos_sim`, `neg_sim` (mean over the queue),
      `hard_neg_sim` (mean over queries of the largest queue cosine).
    """
    q, k, queue = l2_normalize(q), l2_normalize(k), l2_normalize(queue)
    pos = jnp.sum(q * k, axis=-1)  # (N,)
    neg = q @ queue.T  # (N, K)
    logits = jnp.concatenate([pos[:, None], neg], axis=1) / jnp.float32(temperature)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
    neg_sg = jax.lax.stop_gradient(neg)
    metrics = {
        "pos_sim": jnp.mean(jax.lax.stop_gradient(pos)),
        "neg_sim": jnp.mean(neg_sg),
        "hard_neg_sim": jnp.mean(jnp.max(neg_sg, axis=1)),
    }
    return loss, metrics


def _queue_logsumexp_terms(
    anchors: jax.Array, positives: jax.Array, queue: jax.Array, temperature_fn: TemperatureFn,
    beta: float, omega_dim: float, chunk_size: int | None,
) -> tuple[jax.Array, Metrics]:
    """The log-sum-exp form of Eq. 2.1 against a queue, per anchor: (C, M) and metrics.

    anchors, positives (C, M, D), queue (C, K, D), float32 and normalised. The (C, chunk, K)
    temperature grid is built `chunk_size` anchors at a time under `jax.lax.map`, each chunk
    rematerialised in the backward pass.
    """
    num_heads, num, dim = anchors.shape
    s_pos = jnp.sum(anchors * positives, axis=-1)  # (C, M)
    tau_pos = _temperatures(temperature_fn, anchors, positives)
    pos_logit = s_pos / tau_pos
    chunk_size = min(num, chunk_size or DEFAULT_CHUNK_SIZE)
    num_chunks = -(-num // chunk_size)
    padded = num_chunks * chunk_size
    # Padding anchors repeat real ones (finite values) and are sliced away below.
    a_chunks = jnp.take(anchors, jnp.arange(padded) % num, axis=1)
    a_chunks = a_chunks.reshape(num_heads, num_chunks, chunk_size, dim).transpose(1, 0, 2, 3)
    pos_chunks = jnp.take(pos_logit, jnp.arange(padded) % num, axis=1)
    pos_chunks = pos_chunks.reshape(num_heads, num_chunks, chunk_size).transpose(1, 0, 2)

    def chunk_terms(queue, a_chunk, pos_chunk):
        """(C, Kc, D) anchors and their (C, Kc) positive logits -> per-anchor terms (C, Kc)."""
        cos = jnp.einsum("cmd,ckd->cmk", a_chunk, queue)  # (C, Kc, K)
        tau = _pair_grid_temperatures(temperature_fn, a_chunk, queue)
        logits = cos / tau
        lse = jax.nn.logsumexp(jnp.concatenate([pos_chunk[..., None], logits], axis=-1), axis=-1)
        weights = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
        omega_neg = jnp.sum(weights * omega(tau, omega_dim), axis=-1)
        cos_sg, tau_sg = jax.lax.stop_gradient(cos), jax.lax.stop_gradient(tau)
        return {
            "lse_minus_omega": lse - beta * omega_neg,
            "neg_sim": jnp.mean(cos_sg, axis=-1),
            "hard_neg_sim": jnp.max(cos_sg, axis=-1),
            "tau_neg_weighted": jnp.sum(weights * tau_sg, axis=-1),
            "tau_neg_min": jnp.min(tau_sg, axis=-1),
            "tau_neg_max": jnp.max(tau_sg, axis=-1),
        }

    chunk_terms = jax.checkpoint(chunk_terms)
    stacked = jax.lax.map(lambda xs: chunk_terms(queue, *xs), (a_chunks, pos_chunks))
    per = {key: value.transpose(1, 0, 2).reshape(num_heads, padded)[:, :num]
           for key, value in stacked.items()}
    per_anchor = -pos_logit + per["lse_minus_omega"] + beta * omega(tau_pos, omega_dim)
    metrics = {
        "pos_sim": jnp.mean(jax.lax.stop_gradient(s_pos)),
        "neg_sim": jnp.mean(per["neg_sim"]),
        "hard_neg_sim": jnp.mean(per["hard_neg_sim"]),
        **_tau_metrics(tau_pos, per["tau_neg_weighted"], per["tau_neg_min"], per["tau_neg_max"]),
    }
    return per_anchor, metrics


def amcl_queue_contrastive(
    q: jax.Array, k: jax.Array, queue: jax.Array,
    temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array],
    *, beta: float, omega_dim: float, negatives: str = "topk", topk: int = DEFAULT_TOPK,
    directions: str | None = None, infonce: bool = False, chunk_size: int | None = None,
) -> tuple[jax.Array, Metrics]:
    """AMCL-MoCo: Eq. 2.1 (or 2.4) with a queue of keys as the negatives, summed over heads.

    Direction "query": anchor q[c, i] (online head c), positive k[c, i] (momentum head c),
    negatives the K queued keys queue[c]. Direction "key": anchor k[c, i], positive q[c, i],
    the same queue. `directions="query_and_key"` (the authors' v2.0 MoCo) is, per head, the mean
    of the two; "query" the first alone (the project's form, which the method makes symmetric
    over the two views instead). Keys and queue carry no gradient (stopped here). With
    s = cosine and tau = temperature_fn(anchor, candidate), per anchor:

    - `negatives="topk"` (the authors'): the k = min(topk, K) queued keys of largest cosine with
      the anchor, -s+/tau+ + mean_k(s_k/tau_k) + beta Omega(tau+) - beta sum_k(log tau_k +
      1/tau_k); temperatures for the positive and the k chosen keys only.
    - `negatives="max"`: -s+/tau+ + s*/tau* + beta Omega(tau+) - beta Omega(tau*), n* the most
      similar queued key (`infonce=True`: the most similar of the queue and the positive, Eq. 2.4).
    - `negatives="logsumexp"`: -s+/tau+ + logsumexp([s+/tau+, s_1/tau_1, ..., s_K/tau_K])
      + beta Omega(tau+) - beta sum_n w_n Omega(tau_n), w = stop-gradient softmax over the queue
      of s_n/tau_n. With C = 1, a constant tau, beta = 0 and direction "query" this is exactly
      `moco_infonce`. Peak memory C * chunk * K * hidden floats for the concat-MLP network
      (3 * 32 * 4096 * 128 * 4 B = 200 MB: lower `amcl.chunk_size` on small accelerators).

    Args:
      q: (C, N, D) queries, any float dtype; cast to float32 and L2-normalised inside.
      k: (C, N, D) keys.
      queue: (C, K, D) queued keys.
      temperature_fn: u, v (C, M, D) -> (C, M), optionally `pair_grid`, `gathered`.
      beta, omega_dim, negatives, topk, chunk_size: as `amcl_contrastive`.
      directions: "query" or "query_and_key"; None: "query_and_key" for "topk", else "query".
      infonce: Eq. 2.4 for the hard max (no effect on the other forms).

    Returns:
      loss: float32 scalar (mean over anchors and directions, sum over heads). metrics: float32
      scalars `pos_sim`, `neg_sim`, `hard_neg_sim`; (C,) `tau_pos_*`, `tau_neg_*`.
    """
    if negatives not in NEGATIVES_CHOICES:
        raise ValueError(f"negatives must be one of {NEGATIVES_CHOICES}, got {negatives!r}")
    if directions is None:
        directions = "query_and_key" if negatives == "topk" else "query"
    if directions not in QUEUE_DIRECTIONS:
        raise ValueError(f"directions must be one of {QUEUE_DIRECTIONS}, got {directions!r}")
    if q.ndim != 3 or q.shape != k.shape or queue.ndim != 3 or queue.shape[::2] != q.shape[::2]:
        raise ValueError(f"need q, k (C, N, D) and queue (C, K, D); got {q.shape}, {k.shape}, "
                         f"{queue.shape}")
    sg = jax.lax.stop_gradient
    q, k, queue = l2_normalize(q), sg(l2_normalize(k)), sg(l2_normalize(queue))

    def direction(anchors, positives):
        if negatives == "topk":
            return hard_negatives.topk_terms(
                anchors, positives, queue, None, temperature_fn, beta, omega_dim,
                hard_negatives.check_topk(topk, queue.shape[1]), chunk_size=chunk_size)
        if negatives == "max":
            return hard_negatives.hard_max_terms(anchors, positives, queue, None,
                                                 temperature_fn, beta, omega_dim, infonce)
        return _queue_logsumexp_terms(anchors, positives, queue, temperature_fn, beta,
                                      omega_dim, chunk_size)

    per_anchor, metrics = direction(q, k)
    loss = jnp.sum(jnp.mean(per_anchor, axis=1))
    if directions == "query_and_key":
        per_anchor_k, metrics_k = direction(k, q)
        loss = 0.5 * (loss + jnp.sum(jnp.mean(per_anchor_k, axis=1)))
        metrics = jax.tree.map(lambda a, b: 0.5 * (a + b), metrics, metrics_k)
    return loss, metrics
