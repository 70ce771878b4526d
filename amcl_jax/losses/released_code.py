"""The loss of the authors' released `AMCLSimCLRModel`, reproduced for comparison only (it is
not the paper's loss; see `released_code_loss`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from amcl_jax.losses.common import Metrics, l2_normalize
from amcl_jax.losses.regularisers import omega


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
