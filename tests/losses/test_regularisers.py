"""amcl_jax.losses.regularisers: Omega(tau) in closed form."""

import jax.numpy as jnp
import numpy as np

from amcl_jax import losses


def test_omega_closed_form():
    tau = np.array([1e-3, 0.1, 0.5, 1.0, 2.0], dtype=np.float32)
    got = losses.omega(jnp.asarray(tau), 128)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), 64.0 * np.log(tau) + 1.0 / tau, rtol=1e-6)
