"""In-batch contrastive losses over the 2N views of a batch.

SimCLR's NT-Xent (one global temperature) and AMCL-SimCLR: Eq. 2.1 with the top-k (Eq. 5),
hard-max or log-sum-exp negatives (the log-sum-exp chunked over anchors, each chunk
rematerialised in the backward pass), and Eq. 2.4's InfoNCE form with the hard max.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from amcl_jax.losses import hard_negatives
from amcl_jax.losses.common import Metrics, l2_normalize
from amcl_jax.losses.hard_negatives import DEFAULT_TOPK
from amcl_jax.losses.regularisers import omega
from amcl_jax.losses.temperatures import TemperatureFn, _pair_grid_temperatures, _temperatures

NEGATIVES_CHOICES = ("topk", "max", "logsumexp")
# What the temperatures learn from: "contrast", the whole loss (the paper's Eq. 2.1); or
# "likelihood", each pair's Gaussian likelihood alone, while the similarities learn from the
# contrast at fixed temperatures; or "row_likelihood", the same with one temperature per anchor,
# its positive pair's, for the anchor's whole row (the likelihood form: docs/amcl.md).
TEMPERATURE_OBJECTIVES = ("contrast", "likelihood", "row_likelihood")
DEFAULT_CHUNK_SIZE = 32


def nt_xent(z_a: jax.Array, z_b: jax.Array, temperature: float) -> tuple[jax.Array, Metrics]:
    """SimCLR's NT-Xent loss over 2N views with one global temperature.

    Every view is an anchor; its other view is the positive and the remaining 2N - 2 views are its
    negatives (self excluded from the denominator, the positive included).

    Args:
      z_a, z_b: (N, D) projections of the two views, any float dtype; L2-normalised inside.
      temperature: scalar temperature.

    Returns:
      loss: float32 scalar, mean over the 2N anchors.
      metrics: `pos_sim` (mean positive cosine), `neg_sim` (mean cosine over all negatives),
        float32 scalars.
    """
    n = z_a.shape[0]
    z = l2_normalize(jnp.concatenate([z_a, z_b], axis=0))  # (2N, D)
    cos = z @ z.T  # (2N, 2N)
    views = jnp.arange(2 * n)
    positive = (views + n) % (2 * n)
    is_self = views[:, None] == views[None, :]
    is_pos = positive[:, None] == views[None, :]
    logits = jnp.where(is_self, -jnp.inf, cos / jnp.float32(temperature))
    pos_logit = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos_logit)

    is_neg = ~(is_self | is_pos)
    cos_sg = jax.lax.stop_gradient(cos)
    metrics = {
        "pos_sim": jnp.mean(jnp.take_along_axis(cos_sg, positive[:, None], axis=1)),
        "neg_sim": jnp.sum(jnp.where(is_neg, cos_sg, 0.0)) / jnp.sum(is_neg),
    }
    return loss, metrics


def _amcl_max(
    z: jax.Array, temperature_fn: TemperatureFn, beta: float, omega_dim: float,
    positive_temperature_fn: TemperatureFn | None = None,
) -> tuple[jax.Array, Metrics]:
    """Eq. 2.1 with the hard max over negatives. z: (C, 2N, D) float32, normalised."""
    num_views = z.shape[1]
    n = num_views // 2
    views = jnp.arange(num_views)
    positive = (views + n) % num_views
    z_pos = jnp.concatenate([z[:, n:], z[:, :n]], axis=1)  # z_pos[:, i] = z[:, positive[i]]

    cos = jnp.einsum("cid,cjd->cij", z, z)  # (C, 2N, 2N); the logits matrix of plain SimCLR
    is_neg = ~((views[:, None] == views[None, :]) | (positive[:, None] == views[None, :]))
    masked_cos = jnp.where(is_neg, jax.lax.stop_gradient(cos), -jnp.inf)
    hardest = jnp.argmax(masked_cos, axis=-1)  # (C, 2N), not differentiated
    # Gradient reaches s* and tau* through the gathered features, not through the argmax.
    z_hard = jnp.take_along_axis(z, hardest[..., None], axis=1)  # (C, 2N, D)

    s_pos = jnp.sum(z * z_pos, axis=-1)  # (C, 2N)
    s_hard = jnp.sum(z * z_hard, axis=-1)
    if positive_temperature_fn is None:
        # One call on the 2 * 2N pairs per head (positive, hardest negative): O(N) evaluations.
        tau = _temperatures(
            temperature_fn,
            jnp.concatenate([z, z], axis=1),
            jnp.concatenate([z_pos, z_hard], axis=1),
        )
        tau_pos, tau_hard = tau[:, :num_views], tau[:, num_views:]
    else:
        tau_pos = _temperatures(positive_temperature_fn, z, z_pos)
        tau_hard = _temperatures(temperature_fn, z, z_hard)

    per_anchor = (
        -s_pos / tau_pos
        + s_hard / tau_hard
        + beta * omega(tau_pos, omega_dim)
        - beta * omega(tau_hard, omega_dim)
    )
    loss = jnp.sum(jnp.mean(per_anchor, axis=1))

    cos_sg = jax.lax.stop_gradient(cos)
    neg_cos_sum = jnp.sum(jnp.where(is_neg, cos_sg, 0.0), axis=-1)
    tau_pos, tau_hard = jax.lax.stop_gradient(tau_pos), jax.lax.stop_gradient(tau_hard)
    metrics = {
        "pos_sim": jnp.mean(jax.lax.stop_gradient(s_pos)),
        "neg_sim": jnp.mean(neg_cos_sum) / (num_views - 2),
        "hard_neg_sim": jnp.mean(jax.lax.stop_gradient(s_hard)),
        "tau_pos_mean": jnp.mean(tau_pos, axis=1),
        "tau_pos_min": jnp.min(tau_pos, axis=1),
        "tau_pos_max": jnp.max(tau_pos, axis=1),
        "tau_neg_mean": jnp.mean(tau_hard, axis=1),
        "tau_neg_min": jnp.min(tau_hard, axis=1),
        "tau_neg_max": jnp.max(tau_hard, axis=1),
    }
    return loss, metrics


def _amcl_logsumexp(
    z: jax.Array,
    temperature_fn: TemperatureFn,
    beta: float,
    omega_dim: float,
    chunk_size: int | None,
    positive_temperature_fn: TemperatureFn | None = None,
    temperature_objective: str = "contrast",
) -> tuple[jax.Array, Metrics]:
    """Eq. 2.1 with a log-sum-exp over views, chunked over anchors. z: (C, 2N, D) float32."""
    likelihood = temperature_objective in ("likelihood", "row_likelihood")
    row = temperature_objective == "row_likelihood"
    num_heads, num_views, dim = z.shape
    n = num_views // 2
    if chunk_size is None:
        chunk_size = min(num_views, DEFAULT_CHUNK_SIZE)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    chunk_size = min(chunk_size, num_views)
    num_chunks = -(-num_views // chunk_size)
    padded = num_chunks * chunk_size
    # Padding anchors (indices >= 2N) repeat real views, so every value stays finite whatever
    # temperature_fn does; they are sliced away below and so get no gradient.
    rows = jnp.arange(padded)
    z_anchors = jnp.take(z, rows % num_views, axis=1)
    anchor_chunks = z_anchors.reshape(num_heads, num_chunks, chunk_size, dim).transpose(1, 0, 2, 3)
    index_chunks = rows.reshape(num_chunks, chunk_size)
    columns = jnp.arange(num_views)

    def chunk_terms(z_all, z_chunk, rows):
        """Per-anchor loss and statistics for one chunk of K anchors; each output (C, K)."""
        positive = (rows + n) % num_views  # (K,)
        is_self = rows[:, None] == columns[None, :]  # (K, 2N)
        is_pos = positive[:, None] == columns[None, :]
        is_neg = ~(is_self | is_pos)

        cos = jnp.einsum("ckd,cjd->ckj", z_chunk, z_all)  # (C, K, 2N)
        if likelihood:  # The temperature network sees the features but moves none of them.
            z_chunk, z_all = jax.lax.stop_gradient(z_chunk), jax.lax.stop_gradient(z_all)
        if row:  # The positive pair's temperature for the whole row: O(K) evaluations.
            z_positive = jnp.take(z_all, positive, axis=1)  # (C, K, D)
            tau_row = _temperatures(temperature_fn, z_chunk, z_positive)  # (C, K)
            tau = jnp.broadcast_to(tau_row[:, :, None], cos.shape)
        else:
            tau = _pair_grid_temperatures(temperature_fn, z_chunk, z_all)  # (C, K, 2N)
        if positive_temperature_fn is not None and not row:
            z_positive = jnp.take(z_all, positive, axis=1)  # (C, K, D)
            tau_positive = _temperatures(positive_temperature_fn, z_chunk, z_positive)
            tau = jnp.where(is_pos, tau_positive[:, :, None], tau)
        logits = cos / (jax.lax.stop_gradient(tau) if likelihood else tau)
        lse = jax.nn.logsumexp(jnp.where(is_self, -jnp.inf, logits), axis=-1)
        pos_logit = jnp.sum(jnp.where(is_pos, logits, 0.0), axis=-1)
        tau_pos = jnp.sum(jnp.where(is_pos, tau, 0.0), axis=-1)
        # Soft analogue of selecting n*: fixed (stop-gradient) softmax weights over negatives.
        weights = jax.nn.softmax(
            jnp.where(is_neg, jax.lax.stop_gradient(logits), -jnp.inf), axis=-1
        )
        if likelihood:
            # Every pair's Gaussian negative log-likelihood, Omega(tau) - s / tau with s fixed:
            # the positive's, plus the mean over the negatives'. Minimised at tau = 2 (1 - s) / K.
            # With one temperature per row, the positive's alone.
            nll = omega(tau, omega_dim) - jax.lax.stop_gradient(cos) / tau
            fit = jnp.sum(jnp.where(is_pos, nll, 0.0), axis=-1)
            if not row:
                fit += jnp.sum(jnp.where(is_neg, nll, 0.0), axis=-1) / (num_views - 2)
            per_anchor = -pos_logit + lse + beta * fit
        else:
            omega_neg = jnp.sum(weights * jnp.where(is_neg, omega(tau, omega_dim), 0.0), axis=-1)
            per_anchor = -pos_logit + lse + beta * omega(tau_pos, omega_dim) - beta * omega_neg

        cos_sg = jax.lax.stop_gradient(cos)
        tau_sg = jax.lax.stop_gradient(tau)
        return {
            "loss": per_anchor,
            "pos_sim": jnp.sum(jnp.where(is_pos, cos_sg, 0.0), axis=-1),
            "neg_cos_sum": jnp.sum(jnp.where(is_neg, cos_sg, 0.0), axis=-1),
            "hard_neg_sim": jnp.max(jnp.where(is_neg, cos_sg, -jnp.inf), axis=-1),
            "tau_pos": jax.lax.stop_gradient(tau_pos),
            "tau_neg_weighted": jnp.sum(weights * jnp.where(is_neg, tau_sg, 0.0), axis=-1),
            "tau_neg_min": jnp.min(jnp.where(is_neg, tau_sg, jnp.inf), axis=-1),
            "tau_neg_max": jnp.max(jnp.where(is_neg, tau_sg, -jnp.inf), axis=-1),
        }

    # Rematerialise each chunk in the backward pass: peak memory is one chunk's (C, K, 2N, hidden)
    # temperature activations, not all of them.
    chunk_terms = jax.checkpoint(chunk_terms)
    stacked = jax.lax.map(lambda xs: chunk_terms(z, *xs), (anchor_chunks, index_chunks))
    # (num_chunks, C, K) -> (C, 2N)
    per_view = {
        key: value.transpose(1, 0, 2).reshape(num_heads, padded)[:, :num_views]
        for key, value in stacked.items()
    }
    loss = jnp.sum(jnp.mean(per_view["loss"], axis=1))
    metrics = {
        "pos_sim": jnp.mean(per_view["pos_sim"]),
        "neg_sim": jnp.mean(per_view["neg_cos_sum"]) / (num_views - 2),
        "hard_neg_sim": jnp.mean(per_view["hard_neg_sim"]),
        "tau_pos_mean": jnp.mean(per_view["tau_pos"], axis=1),
        "tau_pos_min": jnp.min(per_view["tau_pos"], axis=1),
        "tau_pos_max": jnp.max(per_view["tau_pos"], axis=1),
        "tau_neg_mean": jnp.mean(per_view["tau_neg_weighted"], axis=1),
        "tau_neg_min": jnp.min(per_view["tau_neg_min"], axis=1),
        "tau_neg_max": jnp.max(per_view["tau_neg_max"], axis=1),
    }
    return loss, metrics


def amcl_contrastive(
    z_a: jax.Array,
    z_b: jax.Array,
    temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array],
    *,
    beta: float,
    omega_dim: float,
    negatives: str = "topk",
    topk: int = DEFAULT_TOPK,
    chunk_size: int | None = None,
    positive_temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array]
    | None = None,
    temperature_objective: str = "contrast",
) -> tuple[jax.Array, Metrics]:
    """AMCL loss for SimCLR / MoCo-style methods (the paper's Eq. 2.1), summed over heads.

    Views are stacked per head as z = concat([z_a, z_b], axis=1), shape (C, 2N, D); anchor i's
    positive is view (i + N) mod 2N and its negatives are the other 2N - 2 views. With s = cosine
    similarity and tau = temperature_fn(anchor, candidate), the per-anchor loss is:

    - `negatives="topk"` (the authors' v2.0 code, the paper's Eq. 5): with the k = min(topk,
      2N - 2) negatives of largest cosine (the selection is not differentiated),
        -s+/tau+ + mean_k(s_k/tau_k) + beta * Omega(tau+) - beta * sum_k(log tau_k + 1/tau_k).
      Temperatures only for the positive and the k chosen pairs, through
      `temperature_fn.gathered` when present (one matmul of phi features for the pair-score
      map). With k = 1 and beta = 0 it equals "max" with beta = 0.
    - `negatives="max"` (the paper's table): with n* the hardest negative (largest cosine),
        -s+/tau+ + s*/tau* + beta * Omega(tau+) - beta * Omega(tau*).
      Only 2 temperatures per anchor are evaluated (positive and n*), O(N) per head. The argmax
      is not differentiated; the gradient flows through s* and tau* via the gathered n* features.
    - `negatives="logsumexp"` (soft max):
        -s+/tau+ + logsumexp_{j != i}(s_ij / tau_ij)
        + beta * Omega(tau+) - beta * sum_{j negative} w_ij Omega(tau_ij),
      the log-sum-exp over all 2N - 1 non-self views (positive included, as in NT-Xent) and
      w_ij = softmax over negatives of s_ij / tau_ij, held fixed by a stop-gradient. The weights
      are the soft analogue of selecting n*: replacing them by the one-hot argmax (and the
      log-sum-exp by the max) gives back the "max" variant, where n* also carries no gradient.
      With C = 1, a constant tau and beta = 0 this is exactly `nt_xent`.
      With `temperature_objective="likelihood"` (log-sum-exp only) the regulariser is replaced by
      each pair's Gaussian negative log-likelihood, nll(tau, s) = Omega(tau) - s / tau =
      (1 - s) / tau + (K / 2) log tau, minimised at tau = 2 (1 - s) / K:
        -s+/[tau+] + logsumexp_{j != i}(s_ij / [tau_ij])
        + beta * (nll(tau+, [s+]) + mean_{j negative} nll(tau_ij, [s_ij])),
      [.] a stop-gradient, and the temperature network applied to stop-gradient features: the
      features learn from the contrast at fixed temperatures, the temperatures from the
      likelihood alone, so no term can drive a temperature to its bound.
      `temperature_objective="row_likelihood"`: the same with tau_ij = tau+ for every j of
      anchor i's row and only the positive's nll: one temperature per anchor, so a direction
      shared by all features feels no force (it does when tau+ < tau-: docs/amcl.md); only
      the positive pairs' temperatures are evaluated.
      Otherwise temperatures are needed for every (anchor, view) pair: anchors are processed
      `chunk_size` rows at a time under `jax.lax.map`, each chunk rematerialised
      (`jax.checkpoint`) in the backward pass, and `temperature_fn.pair_grid` is used when
      present so no (rows, 2N, 2D) tensor is built.

    Args:
      z_a, z_b: (C, N, D) per-head projections of the two views, any float dtype; cast to
        float32 and L2-normalised inside. N >= 2.
      temperature_fn: `temperature_fn(u, v)`, u, v (C, M, D) float32 -> (C, M) temperatures,
        optionally with `pair_grid(u, v)`, u (C, A, D), v (C, B, D) -> (C, A, B).
      beta: regulariser weight.
      omega_dim: K in Omega(tau) = (K / 2) log tau + 1 / tau (the head output dimension D).
      negatives: "topk", "max" or "logsumexp".
      topk: k of "topk" (100 in the authors' code), capped at the 2N - 2 negatives.
      chunk_size: anchors per chunk for "logsumexp" (default min(2N, 32)) and "topk" (default
        none: all at once); need not divide 2N. Each chunk is recomputed in the backward pass.
      positive_temperature_fn: None (default): `temperature_fn` gives every temperature. Else it
        gives the positive pairs' tau+ and `temperature_fn` only the negatives' (the temperature
        ablation: e.g. a constant for one side, the network for the other). O(N) extra calls.
      temperature_objective: "contrast" (the paper's), "likelihood" or "row_likelihood" (these
        two with "logsumexp" only, and without `positive_temperature_fn`).

    Returns:
      loss: float32 scalar, mean over the 2N anchors, summed over the C heads.
      metrics: float32 scalars `pos_sim`, `neg_sim` (mean over all negatives), `hard_neg_sim`
        (mean hardest-negative cosine); (C,) float32 `tau_pos_mean/min/max` over anchors and
        `tau_neg_mean/min/max`: for "max" over the tau* of every anchor; for "logsumexp" the mean
        is over anchors of the softmax-weighted negative tau, min/max over all negative pairs.
    """
    if negatives not in NEGATIVES_CHOICES:
        raise ValueError(f"negatives must be one of {NEGATIVES_CHOICES}, got {negatives!r}")
    if temperature_objective not in TEMPERATURE_OBJECTIVES:
        raise ValueError(f"temperature_objective must be one of {TEMPERATURE_OBJECTIVES}, got "
                         f"{temperature_objective!r}")
    if temperature_objective != "contrast" and negatives != "logsumexp":
        raise ValueError(f"temperature_objective={temperature_objective!r} needs "
                         f"negatives='logsumexp', got {negatives!r}")
    if z_a.ndim != 3 or z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must both have shape (C, N, D); got {z_a.shape} and {z_b.shape}"
        )
    if z_a.shape[1] < 2:
        raise ValueError(f"need N >= 2 images per batch for negatives, got N = {z_a.shape[1]}")
    z = l2_normalize(jnp.concatenate([z_a, z_b], axis=1))  # (C, 2N, D) float32
    if negatives == "topk":
        num_views = z.shape[1]
        k = hard_negatives.check_topk(topk, num_views - 2)
        views = jnp.arange(num_views)

        def is_negative(rows):  # (R,) anchor rows -> (R, 2N): neither itself nor its positive.
            positive = (rows + num_views // 2) % num_views
            return ~((rows[:, None] == views[None, :]) | (positive[:, None] == views[None, :]))

        z_pos = jnp.concatenate([z[:, num_views // 2:], z[:, :num_views // 2]], axis=1)
        per_anchor, metrics = hard_negatives.topk_terms(
            z, z_pos, z, is_negative, temperature_fn, beta, omega_dim, k,
            positive_temperature_fn, chunk_size)
        # Mean over the 2N anchors: the two directions (a -> b, b -> a) averaged.
        return jnp.sum(jnp.mean(per_anchor, axis=1)), metrics
    if negatives == "max":
        return _amcl_max(z, temperature_fn, beta, omega_dim, positive_temperature_fn)
    return _amcl_logsumexp(z, temperature_fn, beta, omega_dim, chunk_size,
                           positive_temperature_fn, temperature_objective)


def amcl_infonce_max(
    z_a: jax.Array, z_b: jax.Array,
    temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array],
    *, beta: float, omega_dim: float,
) -> tuple[jax.Array, Metrics]:
    """AMCL-SimCLR in the InfoNCE form (the paper's Eq. 2.4) with the hard max.

    As `amcl_contrastive(..., negatives="max")` but the max runs over the 2N - 2 negatives AND
    the positive: with n* = argmax over {positive, negatives} of the cosine, the per-anchor loss
    is -s+/tau+ + s_n*/tau_n* + beta * Omega(tau+) - beta * Omega(tau_n*), which is 0 whenever
    the positive is the most similar view. Unlike Eq. 2.1 it is bounded below (by 0 plus the
    Omega difference), so a temperature driven to its lower bound cannot send it to -inf.
    (The log-sum-exp variant of `amcl_contrastive` already has the positive in its denominator.)

    Args:
      z_a, z_b: (C, N, D) per-head projections of the two views, any float dtype. N >= 2.
      temperature_fn: u, v (C, M, D) -> (C, M).
      beta, omega_dim: as in `amcl_contrastive`.

    Returns:
      loss: float32 scalar, mean over the 2N anchors, summed over heads; metrics as
      `amcl_contrastive`'s "max" variant (`tau_neg_*` over the selected n*).
    """
    if z_a.ndim != 3 or z_a.shape != z_b.shape or z_a.shape[1] < 2:
        raise ValueError(f"z_a and z_b must both have shape (C, N >= 2, D); got {z_a.shape} "
                         f"and {z_b.shape}")
    z = l2_normalize(jnp.concatenate([z_a, z_b], axis=1))  # (C, 2N, D)
    num_views = z.shape[1]
    n = num_views // 2
    views = jnp.arange(num_views)
    positive = (views + n) % num_views
    is_neg = ~((views[:, None] == views[None, :]) | (positive[:, None] == views[None, :]))
    z_pos = jnp.concatenate([z[:, n:], z[:, :n]], axis=1)
    per_anchor, metrics = hard_negatives.hard_max_terms(z, z_pos, z, is_neg, temperature_fn,
                                                        beta, omega_dim, infonce=True)
    return jnp.sum(jnp.mean(per_anchor, axis=1)), metrics
