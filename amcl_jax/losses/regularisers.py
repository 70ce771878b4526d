"""The temperature regulariser Omega(tau), which the AMCL losses (Eqs. 2.1-2.4) add with weight
beta for the temperatures of positive pairs and subtract for those of negatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
