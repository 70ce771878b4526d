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

NEGATIVES_CHOICES = ("max", "logsumexp")
DEFAULT_CHUNK_SIZE = 256


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


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Casts to float32 and L2-normalises the last axis."""
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
    z = _l2_normalize(jnp.concatenate([z_a, z_b], axis=0))  # (2N, D)
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


def _amcl_max(
    z: jax.Array, temperature_fn: TemperatureFn, beta: float, omega_dim: float
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
    # One call on the 2 * 2N pairs per head (positive, hardest negative): O(N) evaluations.
    tau = _temperatures(
        temperature_fn,
        jnp.concatenate([z, z], axis=1),
        jnp.concatenate([z_pos, z_hard], axis=1),
    )
    tau_pos, tau_hard = tau[:, :num_views], tau[:, num_views:]

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
    negatives: str = "max",
    chunk_size: int | None = None,
) -> tuple[jax.Array, Metrics]:
    """AMCL loss for SimCLR / MoCo-style methods (the paper's Eq. 2.1), summed over heads.

    Views are stacked per head as z = concat([z_a, z_b], axis=1), shape (C, 2N, D); anchor i's
    positive is view (i + N) mod 2N and its negatives are the other 2N - 2 views. With s = cosine
    similarity and tau = temperature_fn(anchor, candidate), the per-anchor loss is:

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
      negatives: "max" or "logsumexp".
      chunk_size: anchors per chunk for "logsumexp" (default min(2N, 256)); need not divide 2N.

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
    z = _l2_normalize(jnp.concatenate([z_a, z_b], axis=1))  # (C, 2N, D) float32
    if negatives == "max":
        return _amcl_max(z, temperature_fn, beta, omega_dim)
    return _amcl_logsumexp(z, temperature_fn, beta, omega_dim, chunk_size)


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
    cos = jnp.sum(_l2_normalize(z_a) * _l2_normalize(z_b), axis=-1)  # (C, N)
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
