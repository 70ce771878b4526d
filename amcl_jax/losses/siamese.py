"""Losses without negatives between two branches: SimSiam's (and BYOL's) symmetric negative
cosine and AMCL-SimSiam (Eq. 2.2)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from amcl_jax.losses.common import Metrics, l2_normalize
from amcl_jax.losses.regularisers import omega
from amcl_jax.losses.temperatures import TemperatureFn, _tau_metrics, _temperatures


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
    p_a: jax.Array, p_b: jax.Array, z_a: jax.Array, z_b: jax.Array,
    temperature_fn: TemperatureFn | Callable[[jax.Array, jax.Array], jax.Array],
    *, beta: float, omega_dim: float,
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
