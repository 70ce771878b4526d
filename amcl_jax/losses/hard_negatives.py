"""Eq. 2.1's per-anchor terms with the hardest negatives, against any bank of candidates.

Shared by the in-batch losses (`contrastive`: the other 2N - 2 views) and the queue losses
(`moco`: the queued keys): the k hardest (Eq. 5's top-k, chunked over anchors) and the hardest
alone (the max of Eq. 2.1, or of Eq. 2.4 with the positive in the max).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from amcl_jax.losses.common import Metrics
from amcl_jax.losses.regularisers import omega
from amcl_jax.losses.temperatures import (
    TemperatureFn,
    _gathered_temperatures,
    _tau_metrics,
    _temperatures,
)

DEFAULT_TOPK = 100  # Eq. 5's k in the authors' code.


def check_topk(topk: int, available: int) -> int:
    """Eq. 5's k, at most the `available` negatives per anchor."""
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
    return min(topk, available)


def topk_terms(
    anchors: jax.Array,
    positives: jax.Array,
    bank: jax.Array,
    negative_mask_fn: Callable[[jax.Array], jax.Array] | None,
    temperature_fn: TemperatureFn,
    beta: float,
    omega_dim: float,
    topk: int,
    positive_temperature_fn: TemperatureFn | None = None,
    chunk_size: int | None = None,
) -> tuple[jax.Array, Metrics]:
    """Eq. 2.1 with Eq. 5's top-k negatives (the authors' v2.0 form), per anchor.

    anchors, positives: (C, M, D); bank: (C, K, D) candidate negatives, all float32 and
    normalised; negative_mask_fn: anchor rows (R,) int32 -> (R, K) bool, True where bank row k
    is a negative of that anchor, or None (all are). Per anchor, with the k negatives of largest
    cosine (chosen without gradient; the gradient reaches their cosines and temperatures through
    the features):
        -s+/tau+ + mean_k(s_k/tau_k) + beta Omega_K(tau+) - beta sum_k (log tau_k + 1/tau_k).
    The negative side's regulariser is Omega with K = 2, summed over the k negatives (as the
    authors' code). `topk` must not exceed the number of negatives per anchor. `chunk_size`:
    anchors per chunk, each rematerialised in the backward pass, so the (C, M, K) similarities
    are never held at once (peak C * chunk * K); None: all anchors at once.
    Returns per-anchor loss (C, M) and metrics.
    """
    num_heads, num_anchors, dim = anchors.shape
    sg = jax.lax.stop_gradient

    def chunk_terms(bank, anchors, positives, rows):
        """Per-anchor loss and statistics of the anchors `rows`, each (C, R) (counts (R,))."""
        s_pos = jnp.sum(anchors * positives, axis=-1)  # (C, R)
        cos = jnp.einsum("cmd,ckd->cmk", anchors, bank)  # (C, R, K)
        cos_sg = sg(cos)
        mask = None if negative_mask_fn is None else negative_mask_fn(rows)
        ranked = cos_sg if mask is None else jnp.where(mask, cos_sg, -jnp.inf)
        _, index = jax.lax.top_k(ranked, topk)  # (C, R, k), not differentiated
        s_neg = jnp.take_along_axis(cos, index, axis=-1)  # (C, R, k)
        tau_pos = _temperatures(positive_temperature_fn or temperature_fn, anchors, positives)
        tau_neg = _gathered_temperatures(temperature_fn, anchors, bank, index)
        per_anchor = (-s_pos / tau_pos + jnp.mean(s_neg / tau_neg, axis=-1)
                      + beta * omega(tau_pos, omega_dim)
                      - beta * jnp.sum(omega(tau_neg, 2.0), axis=-1))  # log tau + 1 / tau
        return {
            "loss": per_anchor,
            "pos_sim": sg(s_pos),
            "neg_cos_sum": jnp.sum(cos_sg if mask is None else jnp.where(mask, cos_sg, 0.0),
                                   axis=-1),
            "neg_count": (jnp.full(rows.shape, bank.shape[1], jnp.int32) if mask is None
                          else jnp.sum(mask, axis=-1, dtype=jnp.int32)),
            "hard_neg_sim": jnp.max(ranked, axis=-1),
            "topk_neg_sim": jnp.mean(sg(s_neg), axis=-1),
            "tau_pos": sg(tau_pos),
            "tau_neg_mean": sg(jnp.mean(tau_neg, axis=-1)),
            "tau_neg_min": sg(jnp.min(tau_neg, axis=-1)),
            "tau_neg_max": sg(jnp.max(tau_neg, axis=-1)),
        }

    if chunk_size is None or chunk_size >= num_anchors:
        per = chunk_terms(bank, anchors, positives, jnp.arange(num_anchors))
    else:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        num_chunks = -(-num_anchors // chunk_size)
        # Padding anchors repeat real ones (finite values); they are sliced away below.
        rows = jnp.arange(num_chunks * chunk_size) % num_anchors
        to_chunks = lambda x: jnp.take(x, rows, axis=1).reshape(
            num_heads, num_chunks, chunk_size, dim).transpose(1, 0, 2, 3)
        stacked = jax.lax.map(
            lambda xs: jax.checkpoint(chunk_terms)(bank, *xs),
            (to_chunks(anchors), to_chunks(positives), rows.reshape(num_chunks, chunk_size)))
        # (num_chunks, C, R) -> (C, M); counts (num_chunks, R) -> (M,).
        per = {key: (value.reshape(-1)[:num_anchors] if value.ndim == 2 else
                     value.transpose(1, 0, 2).reshape(num_heads, -1)[:, :num_anchors])
               for key, value in stacked.items()}
    metrics = {
        "pos_sim": jnp.mean(per["pos_sim"]),
        "neg_sim": jnp.sum(per["neg_cos_sum"]) / (num_heads * jnp.sum(per["neg_count"])),
        "hard_neg_sim": jnp.mean(per["hard_neg_sim"]),
        "topk_neg_sim": jnp.mean(per["topk_neg_sim"]),
        **_tau_metrics(per["tau_pos"], per["tau_neg_mean"], per["tau_neg_min"],
                       per["tau_neg_max"]),
    }
    return per["loss"], metrics


def hard_max_terms(
    anchors: jax.Array,
    positives: jax.Array,
    bank: jax.Array,
    negative_mask: jax.Array | None,
    temperature_fn: TemperatureFn,
    beta: float,
    omega_dim: float,
    infonce: bool,
) -> tuple[jax.Array, Metrics]:
    """Eq. 2.1 (infonce=False) or Eq. 2.4 (infonce=True) with the hard max, per anchor.

    anchors, positives: (C, M, D); bank: (C, K, D) candidate negatives; negative_mask: (M, K)
    bool (True where bank row k is a negative of anchor m) or None (all are). All float32,
    normalised. n* = argmax of the cosine over the negatives (Eq. 2.4: over the negatives and
    the positive), not differentiated; the gradient reaches s* and tau* through the gathered
    features. Returns per-anchor loss (C, M) and metrics.
    """
    s_pos = jnp.sum(anchors * positives, axis=-1)  # (C, M)
    cos = jnp.einsum("cmd,ckd->cmk", anchors, bank)  # (C, M, K)
    cos_sg = jax.lax.stop_gradient(cos)
    masked = cos_sg if negative_mask is None else jnp.where(negative_mask, cos_sg, -jnp.inf)
    hardest = jnp.argmax(masked, axis=-1)  # (C, M)
    z_hard = jnp.take_along_axis(bank, hardest[..., None], axis=1)  # (C, M, D)
    s_hard = jnp.sum(anchors * z_hard, axis=-1)
    num = anchors.shape[1]
    tau = _temperatures(temperature_fn, jnp.concatenate([anchors, anchors], axis=1),
                        jnp.concatenate([positives, z_hard], axis=1))
    tau_pos, tau_hard = tau[:, :num], tau[:, num:]
    if infonce:
        # The positive wins the max when it is at least as similar as the hardest negative;
        # then the two similarity terms and the two Omega terms cancel (the loss is 0).
        positive_wins = jax.lax.stop_gradient(s_pos >= s_hard)
        s_max = jnp.where(positive_wins, s_pos, s_hard)
        tau_max = jnp.where(positive_wins, tau_pos, tau_hard)
    else:
        s_max, tau_max = s_hard, tau_hard
    per_anchor = (-s_pos / tau_pos + s_max / tau_max
                  + beta * omega(tau_pos, omega_dim) - beta * omega(tau_max, omega_dim))
    if negative_mask is None:
        neg_sim = jnp.mean(cos_sg)
    else:
        neg_sim = jnp.sum(jnp.where(negative_mask, cos_sg, 0.0)) / (
            anchors.shape[0] * jnp.sum(negative_mask))
    metrics = {
        "pos_sim": jnp.mean(jax.lax.stop_gradient(s_pos)),
        "neg_sim": neg_sim,
        "hard_neg_sim": jnp.mean(jax.lax.stop_gradient(s_hard)),
        **_tau_metrics(tau_pos, tau_max, tau_max, tau_max),
    }
    return per_anchor, metrics
