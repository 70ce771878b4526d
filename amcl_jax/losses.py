"""Contrastive losses: NT-Xent, the AMCL loss (Eq. 2.1), and the authors' released loss.

All functions are pure JAX. Whatever the input dtype (bfloat16 under mixed precision), every
similarity, temperature, log-sum-exp and regulariser is computed in float32.

Shapes: C heads, N images per batch (2N views), D projection dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]

NEGATIVES_CHOICES = ("topk", "max", "logsumexp")
QUEUE_DIRECTIONS = ("query", "query_and_key")
DEFAULT_CHUNK_SIZE = 32
DEFAULT_TOPK = 100  # Eq. 5's k in the authors' code.


class TemperatureFn(Protocol):
    """Maps paired head features to temperatures.

    `__call__(u, v)`: u, v (C, M, D) float32, L2-normalised, anchor first -> (C, M) temperatures.
    Optionally `pair_grid(u, v)`: u (C, A, D), v (C, B, D) -> (C, A, B), the temperature of every
    (anchor row, candidate column) pair, ideally without building an (A, B, 2D) tensor.
    """

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array: ...


def omega(tau: jax.Array, dim: float) -> jax.Array:
    """Temperature regulariser Omega(tau) = (dim / 2) * log(tau) + 1 / tau, elementwise.

    It is the negative log-likelihood of a Gaussian on the unit sphere at temperature tau, up to
    constants; `dim` should be the head's output dimension D.

    Args:
      tau: any shape, positive. Cast to float32.
      dim: the dimension K in (K / 2) log tau.

    Returns:
      float32 array of tau's shape.
    """
    tau = jnp.asarray(tau).astype(jnp.float32)
    return (dim / 2.0) * jnp.log(tau) + 1.0 / tau


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Casts to float32 and L2-normalises the last axis (norms below `eps` count as `eps`).

    The project's one L2 normalisation: losses, the MoCo queue, kNN and the linear probe."""
    x = x.astype(jnp.float32)
    sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


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


def _temperatures(temperature_fn: TemperatureFn, u: jax.Array, v: jax.Array) -> jax.Array:
    """temperature_fn(u, v) with a shape check, as float32 (C, M)."""
    tau = jnp.asarray(temperature_fn(u, v)).astype(jnp.float32)
    if tau.shape != u.shape[:2]:
        raise ValueError(
            f"temperature_fn(u, v) must return shape {u.shape[:2]} (C, M), got {tau.shape}"
        )
    return tau


def _pair_grid_temperatures(temperature_fn: TemperatureFn, u: jax.Array, v: jax.Array) -> jax.Array:
    """Temperatures of every (row of u, row of v) pair: u (C, A, D), v (C, B, D) -> (C, A, B).

    Uses `temperature_fn.pair_grid` when it exists; otherwise tiles the pairs to (C, A * B, D) and
    calls temperature_fn (only ever on one chunk of anchors, so A is small).
    """
    num_heads, rows, dim = u.shape
    cols = v.shape[1]
    pair_grid = getattr(temperature_fn, "pair_grid", None)
    if pair_grid is not None:
        tau = jnp.asarray(pair_grid(u, v)).astype(jnp.float32)
        if tau.shape != (num_heads, rows, cols):
            raise ValueError(
                f"temperature_fn.pair_grid(u, v) must return shape {(num_heads, rows, cols)}, "
                f"got {tau.shape}"
            )
        return tau
    u_tiled = jnp.broadcast_to(u[:, :, None, :], (num_heads, rows, cols, dim))
    v_tiled = jnp.broadcast_to(v[:, None, :, :], (num_heads, rows, cols, dim))
    tau = _temperatures(
        temperature_fn,
        u_tiled.reshape(num_heads, rows * cols, dim),
        v_tiled.reshape(num_heads, rows * cols, dim),
    )
    return tau.reshape(num_heads, rows, cols)


def _gathered_temperatures(temperature_fn: TemperatureFn, u: jax.Array, v: jax.Array,
                           index: jax.Array) -> jax.Array:
    """Temperatures of the pairs (u[c, a], v[c, index[c, a, j]]): (C, A, k) float32.

    Uses `temperature_fn.gathered(u, v, index)` when it exists (the pair-score map takes them
    from one matmul of phi features); otherwise gathers the k rows of v per anchor and calls
    temperature_fn on the (C, A * k) pairs, so any `temperature_fn(u, v)` works.
    """
    num_heads, rows, k = index.shape
    gathered = getattr(temperature_fn, "gathered", None)
    if gathered is not None:
        tau = jnp.asarray(gathered(u, v, index)).astype(jnp.float32)
        if tau.shape != index.shape:
            raise ValueError(f"temperature_fn.gathered(u, v, index) must return shape "
                             f"{index.shape}, got {tau.shape}")
        return tau
    v_chosen = jnp.take_along_axis(v, index.reshape(num_heads, rows * k)[..., None], axis=1)
    u_repeated = jnp.repeat(u, k, axis=1)  # Row a * k + j pairs u[a] with its j-th choice.
    return _temperatures(temperature_fn, u_repeated, v_chosen).reshape(num_heads, rows, k)


def _topk_terms(
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


def _check_topk(topk: int, available: int) -> int:
    """Eq. 5's k, at most the `available` negatives per anchor."""
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
    return min(topk, available)


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
) -> tuple[jax.Array, Metrics]:
    """Eq. 2.1 with a log-sum-exp over views, chunked over anchors. z: (C, 2N, D) float32."""
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
        tau = _pair_grid_temperatures(temperature_fn, z_chunk, z_all)  # (C, K, 2N)
        if positive_temperature_fn is not None:
            z_positive = jnp.take(z_all, positive, axis=1)  # (C, K, D)
            tau_positive = _temperatures(positive_temperature_fn, z_chunk, z_positive)
            tau = jnp.where(is_pos, tau_positive[:, :, None], tau)
        logits = cos / tau
        lse = jax.nn.logsumexp(jnp.where(is_self, -jnp.inf, logits), axis=-1)
        pos_logit = jnp.sum(jnp.where(is_pos, logits, 0.0), axis=-1)
        tau_pos = jnp.sum(jnp.where(is_pos, tau, 0.0), axis=-1)
        # Soft analogue of selecting n*: fixed (stop-gradient) softmax weights over negatives.
        weights = jax.nn.softmax(
            jnp.where(is_neg, jax.lax.stop_gradient(logits), -jnp.inf), axis=-1
        )
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
      With C = 1, a constant tau and beta = 0 this is exactly `nt_xent`. Temperatures are needed
      for every (anchor, view) pair: anchors are processed `chunk_size` rows at a time under
      `jax.lax.map`, each chunk rematerialised (`jax.checkpoint`) in the backward pass, and
      `temperature_fn.pair_grid` is used when present so no (rows, 2N, 2D) tensor is built.

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

    Returns:
      loss: float32 scalar, mean over the 2N anchors, summed over the C heads.
      metrics: float32 scalars `pos_sim`, `neg_sim` (mean over all negatives), `hard_neg_sim`
        (mean hardest-negative cosine); (C,) float32 `tau_pos_mean/min/max` over anchors and
        `tau_neg_mean/min/max`: for "max" over the tau* of every anchor; for "logsumexp" the mean
        is over anchors of the softmax-weighted negative tau, min/max over all negative pairs.
    """
    if negatives not in NEGATIVES_CHOICES:
        raise ValueError(f"negatives must be one of {NEGATIVES_CHOICES}, got {negatives!r}")
    if z_a.ndim != 3 or z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must both have shape (C, N, D); got {z_a.shape} and {z_b.shape}"
        )
    if z_a.shape[1] < 2:
        raise ValueError(f"need N >= 2 images per batch for negatives, got N = {z_a.shape[1]}")
    z = l2_normalize(jnp.concatenate([z_a, z_b], axis=1))  # (C, 2N, D) float32
    if negatives == "topk":
        num_views = z.shape[1]
        k = _check_topk(topk, num_views - 2)
        views = jnp.arange(num_views)

        def is_negative(rows):  # (R,) anchor rows -> (R, 2N): neither itself nor its positive.
            positive = (rows + num_views // 2) % num_views
            return ~((rows[:, None] == views[None, :]) | (positive[:, None] == views[None, :]))

        z_pos = jnp.concatenate([z[:, num_views // 2:], z[:, :num_views // 2]], axis=1)
        per_anchor, metrics = _topk_terms(z, z_pos, z, is_negative, temperature_fn, beta,
                                          omega_dim, k, positive_temperature_fn, chunk_size)
        # Mean over the 2N anchors: the two directions (a -> b, b -> a) averaged.
        return jnp.sum(jnp.mean(per_anchor, axis=1)), metrics
    if negatives == "max":
        return _amcl_max(z, temperature_fn, beta, omega_dim, positive_temperature_fn)
    return _amcl_logsumexp(z, temperature_fn, beta, omega_dim, chunk_size,
                           positive_temperature_fn)


def released_code_loss(
    z_a: jax.Array, z_b: jax.Array, temperatures: jax.Array, *, beta: float
) -> tuple[jax.Array, Metrics]:
    """The loss of the authors' released `AMCLSimCLRModel`, for comparison only.

    This is NOT the paper's loss. The released code, for each head, takes only the cosine of each
    positive pair (no negatives at all), and divides it by the temperatures through a broadcasting
    bug ((N,) cosines / (N, 1) temperatures), giving an N x N matrix S[a, b] = cos_b / tau_a that
    mixes every pair's temperature with every other pair's similarity. It then minimises
    -log(e^S / (e^S + e^-S)) = softplus(-2 S) averaged over the matrix, plus the regulariser
    beta * mean((N / 2) log tau + 1 / tau), whose K = N is the batch size (again from the
    broadcast shape) instead of the head dimension. Heads are summed. Reproduced exactly here so
    results can be compared with it.

    Args:
      z_a, z_b: (C, N, D) per-head projections of the two views, any float dtype (cast to
        float32; cosine computed with normalisation inside).
      temperatures: (C, N) temperature of each positive pair (anchor from z_a), any float dtype.
      beta: regulariser weight.

    Returns:
      loss: float32 scalar.
      metrics: `pos_sim` float32 scalar; `tau_mean`, `tau_min`, `tau_max` (C,) float32.
    """
    n = z_a.shape[1]
    cos = jnp.sum(l2_normalize(z_a) * l2_normalize(z_b), axis=-1)  # (C, N)
    tau = jnp.asarray(temperatures).astype(jnp.float32)  # (C, N)
    scaled = cos[:, None, :] / tau[:, :, None]  # (C, N, N): S[c, a, b] = cos[c, b] / tau[c, a]
    head_loss = jnp.mean(jax.nn.softplus(-2.0 * scaled), axis=(1, 2)) + beta * jnp.mean(
        omega(tau, n), axis=1
    )
    tau_sg = jax.lax.stop_gradient(tau)
    metrics = {
        "pos_sim": jnp.mean(jax.lax.stop_gradient(cos)),
        "tau_mean": jnp.mean(tau_sg, axis=1),
        "tau_min": jnp.min(tau_sg, axis=1),
        "tau_max": jnp.max(tau_sg, axis=1),
    }
    return jnp.sum(head_loss), metrics


class ConstantTemperature:
    """A temperature_fn returning one fixed value for every pair."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u, v (C, M, D) -> (C, M) float32 filled with the value."""
        return jnp.full(u.shape[:2], self.value, dtype=jnp.float32)

    def pair_grid(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u (C, A, D), v (C, B, D) -> (C, A, B) float32 filled with the value."""
        return jnp.full((u.shape[0], u.shape[1], v.shape[1]), self.value, dtype=jnp.float32)

    def __repr__(self) -> str:
        return f"constant_temperature({self.value})"


def constant_temperature(value: float) -> ConstantTemperature:
    """A temperature_fn (with `pair_grid`) that gives every pair the temperature `value`.

    For baselines (one global temperature) and tests.
    """
    return ConstantTemperature(value)


# ---------------------------------------------------------------------------------------------
# MoCo (queue negatives), Eq. 2.4's hard max, SimSiam / BYOL, Barlow Twins.
# ---------------------------------------------------------------------------------------------
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


def _tau_metrics(tau_pos: jax.Array, tau_neg_mean: jax.Array, tau_neg_min: jax.Array,
                 tau_neg_max: jax.Array) -> Metrics:
    """(C, M) per-anchor temperatures -> (C,) summaries, without gradient."""
    sg = jax.lax.stop_gradient
    return {
        "tau_pos_mean": jnp.mean(sg(tau_pos), axis=1),
        "tau_pos_min": jnp.min(sg(tau_pos), axis=1),
        "tau_pos_max": jnp.max(sg(tau_pos), axis=1),
        "tau_neg_mean": jnp.mean(sg(tau_neg_mean), axis=1),
        "tau_neg_min": jnp.min(sg(tau_neg_min), axis=1),
        "tau_neg_max": jnp.max(sg(tau_neg_max), axis=1),
    }


def _hard_max_terms(
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


def amcl_infonce_max(
    z_a: jax.Array,
    z_b: jax.Array,
    temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array],
    *,
    beta: float,
    omega_dim: float,
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
    per_anchor, metrics = _hard_max_terms(z, z_pos, z, is_neg, temperature_fn, beta, omega_dim,
                                          infonce=True)
    return jnp.sum(jnp.mean(per_anchor, axis=1)), metrics


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
    q: jax.Array,
    k: jax.Array,
    queue: jax.Array,
    temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array],
    *,
    beta: float,
    omega_dim: float,
    negatives: str = "topk",
    topk: int = DEFAULT_TOPK,
    directions: str | None = None,
    infonce: bool = False,
    chunk_size: int | None = None,
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
            return _topk_terms(anchors, positives, queue, None, temperature_fn, beta, omega_dim,
                               _check_topk(topk, queue.shape[1]), chunk_size=chunk_size)
        if negatives == "max":
            return _hard_max_terms(anchors, positives, queue, None, temperature_fn, beta,
                                   omega_dim, infonce)
        return _queue_logsumexp_terms(anchors, positives, queue, temperature_fn, beta,
                                      omega_dim, chunk_size)

    per_anchor, metrics = direction(q, k)
    loss = jnp.sum(jnp.mean(per_anchor, axis=1))
    if directions == "query_and_key":
        per_anchor_k, metrics_k = direction(k, q)
        loss = 0.5 * (loss + jnp.sum(jnp.mean(per_anchor_k, axis=1)))
        metrics = jax.tree.map(lambda a, b: 0.5 * (a + b), metrics, metrics_k)
    return loss, metrics


def symmetric_negative_cosine(
    p_a: jax.Array, p_b: jax.Array, z_a: jax.Array, z_b: jax.Array
) -> tuple[jax.Array, Metrics]:
    """SimSiam's (and the base repository's BYOL) loss: -(cos(p_a, [z_b]) + cos(p_b, [z_a])) / 2.

    [.] = stop-gradient, applied here. For BYOL z are the target network's projections; the BYOL
    paper's 2 - 2 cos summed over both directions equals 4 * this + 4.

    Args:
      p_a, p_b: (..., N, D) predictions of the two views, any float dtype.
      z_a, z_b: (..., N, D) projections (targets) of the two views.

    Returns:
      loss: float32 scalar, mean over every leading axis and N (in [-1, 1]).
      metrics: `pos_sim` (the mean of the two cosines), float32 scalar.
    """
    sg = jax.lax.stop_gradient
    cos_ab = jnp.sum(l2_normalize(p_a) * l2_normalize(sg(z_b)), axis=-1)
    cos_ba = jnp.sum(l2_normalize(p_b) * l2_normalize(sg(z_a)), axis=-1)
    loss = -0.5 * (jnp.mean(cos_ab) + jnp.mean(cos_ba))
    return loss, {"pos_sim": sg(-loss)}


def amcl_simsiam(
    p_a: jax.Array,
    p_b: jax.Array,
    z_a: jax.Array,
    z_b: jax.Array,
    temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array],
    *,
    beta: float,
    omega_dim: float,
) -> tuple[jax.Array, Metrics]:
    """AMCL-SimSiam (the paper's Eq. 2.2), mean over the N images, summed over the C heads.

    Per image and head c, with s_ab = cos(p_a^c, [z_b^c]), s_ba = cos(p_b^c, [z_a^c]):
        -s_ab / (2 tau+) - s_ba / (2 tau~) + beta Omega(tau+) + beta Omega(tau~),
    tau+ = temperature_fn(p_a, [z_b]), tau~ = temperature_fn(p_b, [z_a]) (features normalised).
    With C = 1, tau = 1 and beta = 0 it is `symmetric_negative_cosine`.

    Degeneracy: per term, -s/(2 tau) + beta Omega(tau) = (beta - s/2)/tau + beta (K/2) log tau,
    which decreases without bound as tau -> 0 once s > 2 beta. With the default bounds
    (1e-5, 2) every temperature sits at 1e-5 as soon as the pairs agree, multiplying the
    gradient on s by up to 5e4. `configs/cifar10_amcl_simsiam.py` uses bounds (0.5, 2.0).

    Args:
      p_a, p_b: (C, N, D) per-head predictions; z_a, z_b: (C, N, D) per-head projections (their
        gradient is stopped here). Any float dtype; float32 inside.
      temperature_fn: u, v (C, M, D) -> (C, M).
      beta: regulariser weight. omega_dim: K of Omega.

    Returns:
      loss: float32 scalar. metrics: `pos_sim` scalar; (C,) `tau_pos_mean/min/max` (tau+) and
      `tau_neg_mean/min/max` (tau~, the second term's temperature; no negatives in SimSiam).
    """
    sg = jax.lax.stop_gradient
    p_a, p_b = l2_normalize(p_a), l2_normalize(p_b)
    t_a, t_b = sg(l2_normalize(z_a)), sg(l2_normalize(z_b))
    s_ab = jnp.sum(p_a * t_b, axis=-1)  # (C, N)
    s_ba = jnp.sum(p_b * t_a, axis=-1)
    tau_plus = _temperatures(temperature_fn, p_a, t_b)
    tau_tilde = _temperatures(temperature_fn, p_b, t_a)
    per_image = (-s_ab / (2 * tau_plus) - s_ba / (2 * tau_tilde)
                 + beta * omega(tau_plus, omega_dim) + beta * omega(tau_tilde, omega_dim))
    metrics = {
        "pos_sim": 0.5 * jnp.mean(sg(s_ab + s_ba)),
        **_tau_metrics(tau_plus, tau_tilde, tau_tilde, tau_tilde),
    }
    return jnp.sum(jnp.mean(per_image, axis=1)), metrics


STANDARDISATIONS = ("variance_eps", "std_eps")


def cross_correlation(z_a: jax.Array, z_b: jax.Array, eps: float = 1e-5,
                      standardisation: str = "variance_eps") -> jax.Array:
    """Barlow Twins' cross-correlation of batch-standardised features.

    Each feature is centred over the batch and divided by its unbiased standard deviation,
    then C = z_a_std^T z_b_std / N. `standardisation="variance_eps"`: (z - mean) / sqrt(var + eps)
    (the base repository's lightly loss, eps 1e-5); "std_eps": (z - mean) / (std + eps), the
    authors' v2.0 code with eps 1e-9. Either keeps a constant feature finite.

    Args:
      z_a, z_b: (..., N, D) any float dtype, N >= 2.

    Returns:
      (..., D, D) float32.
    """
    if standardisation not in STANDARDISATIONS:
        raise ValueError(f"standardisation must be one of {STANDARDISATIONS}, got "
                         f"{standardisation!r}")
    num = z_a.shape[-2]

    def standardise(z):
        z = z.astype(jnp.float32)
        centred = z - jnp.mean(z, axis=-2, keepdims=True)
        var = jnp.sum(centred * centred, axis=-2, keepdims=True) / (num - 1)
        if standardisation == "std_eps":
            return centred / (jnp.sqrt(var) + eps)
        return centred * jax.lax.rsqrt(var + eps)

    return jnp.einsum("...nl,...nm->...lm", standardise(z_a), standardise(z_b)) / num


def barlow_twins_loss(
    z_a: jax.Array, z_b: jax.Array, *, off_diagonal_weight: float
) -> tuple[jax.Array, Metrics]:
    """Barlow Twins: sum_l (1 - C_ll)^2 + lambda sum_{l != m} C_lm^2.

    Args:
      z_a, z_b: (N, D) projections of the two views (the global batch), any float dtype.
      off_diagonal_weight: lambda.

    Returns:
      loss: float32 scalar. metrics: `diag_corr` (mean C_ll), `off_diag_corr_sq` (mean C_lm^2).
    """
    corr = cross_correlation(z_a, z_b)  # (D, D)
    dim = corr.shape[-1]
    diag = jnp.diagonal(corr)
    off = ~jnp.eye(dim, dtype=bool)
    off_sq = jnp.where(off, corr * corr, 0.0)
    loss = jnp.sum((1.0 - diag) ** 2) + off_diagonal_weight * jnp.sum(off_sq)
    sg = jax.lax.stop_gradient
    return loss, {"diag_corr": sg(jnp.mean(diag)),
                  "off_diag_corr_sq": sg(jnp.sum(off_sq) / max(dim * (dim - 1), 1))}


def amcl_barlow_twins(
    z_a: jax.Array,
    z_b: jax.Array,
    tau_diag: jax.Array,
    tau_off: jax.Array,
    *,
    off_diagonal_weight: float,
    beta: float,
    omega_dim: float,
    eps: float = 1e-9,
    standardisation: str = "std_eps",
) -> tuple[jax.Array, Metrics]:
    """AMCL-Barlow Twins (the paper's Eq. 2.3), summed over heads.

    Per head c with cross-correlation C (d' x d'):
        sum_l (1 - C_ll / tau_l+)^2 + lambda sum_{l != m} C_lm^2 / tau_lm-
        + beta sum_l Omega(tau_l+) - beta sum_{l != m} Omega(tau_lm-).
    With C = 1, every tau = 1 and beta = 0 it is `barlow_twins_loss`.

    Degeneracy: per off-diagonal entry, lambda C^2 / tau - beta Omega(tau)
    = (lambda C^2 - beta) / tau - beta (K / 2) log tau, and lambda C^2 <= lambda = 5e-3 < beta, so
    it goes to -inf as tau -> 0: every tau- sits at the lower bound, multiplying lambda by
    1 / lower (1e5 at the default bounds) and the loss by about -beta / lower per entry. On the
    diagonal, Omega with K = d' (2048) has its minimum at tau = 2 / K, pulling tau+ to the lower
    bound and with it the invariance target C_ll = tau+ towards 0. The method therefore uses
    K = 1 (each temperature scales one scalar entry) and `configs/cifar10_amcl_barlow_twins.py`
    bounds (0.5, 2.0), where the off-diagonal reweighting stays within a factor 2.

    Args:
      z_a, z_b: (C, N, D) per-head projections of the two views, any float dtype.
      tau_diag: (C, D) temperatures of the diagonal entries.
      tau_off: (C, D, D) temperatures of the off-diagonal entries (its diagonal is ignored).
      off_diagonal_weight: lambda. beta: regulariser weight. omega_dim: K of Omega (the
        authors': the head dimension D, with beta 1e-6).
      eps, standardisation: the cross-correlation's (`cross_correlation`); the defaults are the
        authors' (std + 1e-9); the project's form passes lightly's (1e-5, "variance_eps").

    Returns:
      loss: float32 scalar. metrics: scalars `diag_corr`, `off_diag_corr_sq`; (C,)
      `tau_pos_mean/min/max` over the diagonal, `tau_neg_mean/min/max` over the off-diagonal.
    """
    corr = cross_correlation(z_a, z_b, eps, standardisation)  # (C, D, D)
    dim = corr.shape[-1]
    tau_diag = jnp.asarray(tau_diag).astype(jnp.float32)
    tau_off = jnp.asarray(tau_off).astype(jnp.float32)
    if tau_diag.shape != corr.shape[:2] or tau_off.shape != corr.shape:
        raise ValueError(f"tau_diag must be {corr.shape[:2]} and tau_off {corr.shape}, got "
                         f"{tau_diag.shape}, {tau_off.shape}")
    off = ~jnp.eye(dim, dtype=bool)
    safe_tau_off = jnp.where(off, tau_off, 1.0)  # The ignored diagonal never divides.
    diag = jnp.diagonal(corr, axis1=-2, axis2=-1)  # (C, D)
    per_head = (
        jnp.sum((1.0 - diag / tau_diag) ** 2, axis=-1)
        + off_diagonal_weight * jnp.sum(jnp.where(off, corr * corr / safe_tau_off, 0.0),
                                        axis=(-2, -1))
        + beta * jnp.sum(omega(tau_diag, omega_dim), axis=-1)
        - beta * jnp.sum(jnp.where(off, omega(safe_tau_off, omega_dim), 0.0), axis=(-2, -1))
    )
    sg = jax.lax.stop_gradient
    tau_off_sg = sg(tau_off)
    num_off = max(dim * (dim - 1), 1)
    metrics = {
        "diag_corr": sg(jnp.mean(diag)),
        "off_diag_corr_sq": sg(jnp.mean(jnp.sum(jnp.where(off, corr * corr, 0.0), (-2, -1))))
        / num_off,
        "tau_pos_mean": jnp.mean(sg(tau_diag), axis=-1),
        "tau_pos_min": jnp.min(sg(tau_diag), axis=-1),
        "tau_pos_max": jnp.max(sg(tau_diag), axis=-1),
        "tau_neg_mean": jnp.sum(jnp.where(off, tau_off_sg, 0.0), axis=(-2, -1)) / num_off,
        "tau_neg_min": jnp.min(jnp.where(off, tau_off_sg, jnp.inf), axis=(-2, -1)),
        "tau_neg_max": jnp.max(jnp.where(off, tau_off_sg, -jnp.inf), axis=(-2, -1)),
    }
    return jnp.sum(per_head), metrics
