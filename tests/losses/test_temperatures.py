"""amcl_jax.losses.temperatures: the constant temperature."""

import jax.numpy as jnp
import numpy as np

from amcl_jax import losses


def test_constant_temperature_shapes():
    tau_fn = losses.constant_temperature(0.5)
    u, v = jnp.zeros((2, 3, 4)), jnp.zeros((2, 5, 4))
    assert tau_fn(u, u).shape == (2, 3)
    grid = tau_fn.pair_grid(u, v)
    assert grid.shape == (2, 3, 5) and grid.dtype == jnp.float32
    np.testing.assert_array_equal(grid, 0.5)
