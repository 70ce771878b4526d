"""What the loss modules share: the `Metrics` type of the statistics they return and
`l2_normalize`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Casts to float32 and L2-normalises the last axis (norms below `eps` count as `eps`).

    The project's one L2 normalisation: losses, the MoCo queue, kNN and the linear probe."""
    x = x.astype(jnp.float32)
    sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))
