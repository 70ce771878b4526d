"""amcl_jax.losses.barlow_twins: Barlow Twins, and AMCL-Barlow Twins (Eq. 2.3) with given
temperatures and with the channel map, against float64 NumPy loop references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from _helpers import (
    channel_map,
    finite_differences,
    jit_call,
    normals,
    np_omega,
    randn,
    reference_channel_temperatures,
    scalar,
)

from amcl_jax import losses

C, N, D = 2, 3, 4
BETA = 0.3


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


# ---------------------------------------------------------------------------------------------
# Barlow Twins, and AMCL-Barlow Twins with given temperatures
# ---------------------------------------------------------------------------------------------
def ref_corr(z_a, z_b, eps=1e-5):
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    num, dim = z_a.shape
    std = lambda z, col: np.sqrt(sum((z[n, col] - z[:, col].mean()) ** 2 for n in range(num))
                                 / (num - 1) + eps)
    corr = np.zeros((dim, dim))
    for row in range(dim):
        for m in range(dim):
            corr[row, m] = sum((z_a[n, row] - z_a[:, row].mean()) / std(z_a, row)
                               * (z_b[n, m] - z_b[:, m].mean()) / std(z_b, m)
                               for n in range(num)) / num
    return corr


def test_barlow_twins_matches_loop():
    z_a, z_b = randn(19, N + 2, D), randn(20, N + 2, D)
    loss, _ = jit_call(losses.barlow_twins_loss, z_a, z_b, off_diagonal_weight=0.2)
    corr = ref_corr(z_a, z_b)
    ref = sum((1 - corr[row, row]) ** 2 for row in range(D)) + 0.2 * sum(
        corr[row, m] ** 2 for row in range(D) for m in range(D) if row != m)
    np.testing.assert_allclose(loss, ref, rtol=1e-4)


def test_amcl_barlow_twins_matches_loop_and_reduces():
    z_a, z_b = randn(21, C, N + 2, D), randn(22, C, N + 2, D)
    tau_diag = 0.5 + jax.nn.sigmoid(randn(23, C, D))
    tau_off = 0.5 + jax.nn.sigmoid(randn(24, C, D, D))
    loss, metrics = jit_call(losses.amcl_barlow_twins, z_a, z_b, tau_diag, tau_off,
                             off_diagonal_weight=0.2, beta=BETA, omega_dim=1.0)
    td, to = np.asarray(tau_diag, np.float64), np.asarray(tau_off, np.float64)
    total = 0.0
    for c in range(C):
        corr = ref_corr(z_a[c], z_b[c])
        for row in range(D):
            total += (1 - corr[row, row] / td[c, row]) ** 2 + BETA * np_omega(td[c, row], 1.0)
            for m in range(D):
                if m != row:
                    tau = to[c, row, m]
                    total += 0.2 * corr[row, m] ** 2 / tau - BETA * np_omega(tau, 1.0)
    np.testing.assert_allclose(loss, total, rtol=1e-4)
    assert metrics["tau_neg_mean"].shape == (C,)
    one, _ = jit_call(losses.amcl_barlow_twins, z_a[:1], z_b[:1], jnp.ones((1, D)),
                      jnp.ones((1, D, D)), off_diagonal_weight=0.2, beta=0.0, omega_dim=1.0)
    base, _ = jit_call(losses.barlow_twins_loss, z_a[0], z_b[0], off_diagonal_weight=0.2)
    np.testing.assert_allclose(one, base, rtol=1e-5)
