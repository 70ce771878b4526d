"""VICReg (Bardes, Ponce and LeCun, ICLR 2022): variance, invariance and covariance terms on the
two branches' embeddings, no negatives and no AMCL form (the paper gives no equation for it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from amcl_jax.losses.common import Metrics


def _variance_and_covariance(z: jax.Array, gamma: float, eps: float) -> tuple[jax.Array,
                                                                                jax.Array]:
    """Eq. 1 and Eq. 3 of one branch: v(Z), c(Z) as float32 scalars; z: (N, D) float32."""
    num, dim = z.shape
    centred = z - jnp.mean(z, axis=0, keepdims=True)
    cov = centred.T @ centred / (num - 1)  # (D, D), unbiased.
    std = jnp.sqrt(jnp.diagonal(cov) + eps)  # S(z^j, eps) of Eq. 1.
    variance = jnp.mean(jax.nn.relu(gamma - std))
    off = ~jnp.eye(dim, dtype=bool)
    covariance = jnp.sum(jnp.where(off, cov * cov, 0.0)) / dim
    return variance, covariance


def vicreg_loss(
    z_a: jax.Array,
    z_b: jax.Array,
    *,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[jax.Array, Metrics]:
    """VICReg's loss, the paper's Eq. 6: lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')].

    - invariance s: the mean squared error over the N rows and D dimensions (the paper's
      Algorithm 1 and official code, `F.mse_loss`; Eq. 5 writes the per-row sum over D, and
      the weights 25 / 25 / 1 are the code's, for this mean);
    - variance v (Eq. 1): the mean over the D dimensions of relu(gamma - sqrt(Var(z^j) + eps)),
      Var unbiased (N - 1), gamma 1, eps 1e-4;
    - covariance c (Eq. 3): the sum of the squared off-diagonal entries of the unbiased
      covariance matrix, divided by D.

    v and c are summed over the two branches, as in Eq. 6 and the paper's Algorithm 1 (and
    solo-learn's loss); the official repository's code averages the two variance terms
    (`/ 2`), which halves mu.

    Statistics are over the whole (N, D) arrays: under jit they are the global batch, sharded
    over the devices, and XLA inserts the cross-device reductions (no explicit collectives).

    Args:
      z_a, z_b: (N, D) projections of the two views, any float dtype (float32 inside), N >= 2.
      invariance_weight, variance_weight, covariance_weight: lambda, mu, nu.
      gamma: the target standard deviation. eps: added to the variance under the square root.

    Returns:
      loss: float32 scalar. metrics: the unweighted terms as float32 scalars, `invariance`
      s(Z, Z'), `variance` v(Z) + v(Z'), `covariance` c(Z) + c(Z').
    """
    if z_a.ndim != 2 or z_a.shape != z_b.shape or z_a.shape[0] < 2:
        raise ValueError(f"z_a and z_b must both be (N, D) with N >= 2, got {z_a.shape}, "
                         f"{z_b.shape}")
    z_a, z_b = z_a.astype(jnp.float32), z_b.astype(jnp.float32)
    invariance = jnp.mean((z_a - z_b) ** 2)
    variance_a, covariance_a = _variance_and_covariance(z_a, gamma, eps)
    variance_b, covariance_b = _variance_and_covariance(z_b, gamma, eps)
    variance = variance_a + variance_b
    covariance = covariance_a + covariance_b
    loss = (invariance_weight * invariance + variance_weight * variance
            + covariance_weight * covariance)
    sg = jax.lax.stop_gradient
    return loss, {"invariance": sg(invariance), "variance": sg(variance),
                  "covariance": sg(covariance)}
