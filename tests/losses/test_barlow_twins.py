"""amcl_jax.losses.barlow_twins: AMCL-Barlow Twins (Eq. 2.3) with the channel map against a
float64 NumPy loop reference."""

import itertools

import jax
import numpy as np
from _helpers import (
    channel_map,
    finite_differences,
    normals,
    np_omega,
    reference_channel_temperatures,
    scalar,
)

from amcl_jax import losses


def reference_barlow_twins(z_a, z_b, tau, lam, beta, dim):
    """Eq. 2.3 with the authors' standardisation (z - mean) / (unbiased std + 1e-9)."""
    total = 0.0
    for head in range(z_a.shape[0]):
        standard = [(z - z.mean(0)) / (z.std(0, ddof=1) + 1e-9)
                    for z in (np.asarray(z_a[head], np.float64), np.asarray(z_b[head], np.float64))]
        corr = standard[0].T @ standard[1] / z_a.shape[1]
        for row, col in itertools.product(range(corr.shape[0]), repeat=2):
            t = tau[head, row, col]
            if row == col:
                total += (1 - corr[row, row] / t) ** 2 + beta * np_omega(t, dim)
            else:
                total += lam * corr[row, col] ** 2 / t - beta * np_omega(t, dim)
    return total


def test_barlow_twins_with_the_channel_map_matches_the_numpy_loop():
    module, params, weights = channel_map(num_heads=2, batch=8)
    z_a, z_b = normals((2, 8, 4), 27), normals((2, 8, 4), 28)

    def through_the_map(za):
        diag, off = module.apply({"params": params}, za, z_b)
        return scalar(losses.amcl_barlow_twins(za, z_b, diag, off, off_diagonal_weight=5e-3,
                                               beta=1e-2, omega_dim=4.0))

    # Jitted: the map and the loss dispatched op by op are slow.
    loss = jax.jit(through_the_map)(z_a)
    expected = reference_barlow_twins(z_a, z_b, reference_channel_temperatures(weights, z_a, z_b),
                                      5e-3, 1e-2, 4.0)
    np.testing.assert_allclose(loss, expected, rtol=2e-5)

    grad = jax.jit(jax.grad(through_the_map))(z_a)
    coords = [(0, 0, 0), (1, 5, 2), (0, 7, 3)]
    numeric = finite_differences(lambda za: reference_barlow_twins(
        za, z_b, reference_channel_temperatures(weights, za, z_b), 5e-3, 1e-2, 4.0),
        z_a, coords)
    np.testing.assert_allclose([grad[c] for c in coords], numeric, rtol=2e-3, atol=1e-4)
