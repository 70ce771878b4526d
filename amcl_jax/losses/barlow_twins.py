"""Barlow Twins: the cross-correlation of batch-standardised features, its loss, and
AMCL-Barlow Twins (Eq. 2.3) with a temperature per correlation entry."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from amcl_jax.losses.common import Metrics
from amcl_jax.losses.regularisers import omega

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
