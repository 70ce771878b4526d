"""amcl_jax.losses.siamese: SimSiam's and BYOL's symmetric negative cosine, and AMCL-SimSiam
(Eq. 2.2) with a per-head temperature MLP and with the pair-score map, against float64 NumPy loop
references."""

import jax
import numpy as np
from _helpers import (
    jit_call,
    normals,
    np_omega,
    np_pair_tau,
    np_tau,
    np_unit,
    pair_score_temperature,
    randn,
    scalar,
)

from amcl_jax import losses

C, N, D = 2, 3, 4
BETA, OMEGA_DIM = 0.3, 4.0


def reference_simsiam(weights, p_a, p_b, z_a, z_b, beta, dim):
    total = 0.0
    for head in range(p_a.shape[0]):
        terms = []
        for i in range(p_a.shape[1]):
            pa, pb, za, zb = (np_unit(x[head, i]) for x in (p_a, p_b, z_a, z_b))
            tau_plus, tau_tilde = np_pair_tau(weights, pa, zb), np_pair_tau(weights, pb, za)
            terms.append(-(pa @ zb) / (2 * tau_plus) - (pb @ za) / (2 * tau_tilde)
                         + beta * np_omega(tau_plus, dim) + beta * np_omega(tau_tilde, dim))
        total += np.mean(terms)
    return total


def test_simsiam_with_the_pair_score_map_matches_the_numpy_loop():
    fn, weights = pair_score_temperature(num_heads=2, dim=5)
    p_a, p_b, z_a, z_b = (normals((2, 4, 5), seed) for seed in (21, 22, 23, 24))
    loss = scalar(losses.amcl_simsiam(p_a, p_b, z_a, z_b, fn, beta=1e-2, omega_dim=5.0))
    np.testing.assert_allclose(loss, reference_simsiam(weights, p_a, p_b, z_a, z_b, 1e-2, 5.0),
                               rtol=2e-5)


# ---------------------------------------------------------------------------------------------
# The symmetric negative cosine, and AMCL-SimSiam with a per-head temperature MLP
# ---------------------------------------------------------------------------------------------
def test_symmetric_negative_cosine_matches_loop_and_stops_gradient():
    p_a, p_b, z_a, z_b = (randn(s, N, D) for s in (11, 12, 13, 14))
    loss, _ = jit_call(losses.symmetric_negative_cosine, p_a, p_b, z_a, z_b)
    cos = lambda x, y: np_unit(x) @ np_unit(y)
    ref = -np.mean([0.5 * (cos(p_a[i], z_b[i]) + cos(p_b[i], z_a[i])) for i in range(N)])
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    grads = jax.grad(lambda z: losses.symmetric_negative_cosine(p_a, p_b, z, z_b)[0])(z_a)
    np.testing.assert_array_equal(grads, 0.0)


def test_amcl_simsiam_matches_loop_and_reduces(tau_setup):
    tau_fn, tau_np = tau_setup
    p_a, p_b, z_a, z_b = (randn(s, C, N, D) for s in (15, 16, 17, 18))
    loss, metrics = jit_call(losses.amcl_simsiam, p_a, p_b, z_a, z_b, tau_fn, beta=BETA,
                             omega_dim=OMEGA_DIM)
    total = 0.0
    for c in range(C):
        for i in range(N):
            pa, pb, za, zb = (np_unit(np.asarray(x[c, i], np.float64))
                              for x in (p_a, p_b, z_a, z_b))
            t_plus, t_tilde = np_tau(tau_np, c, pa, zb), np_tau(tau_np, c, pb, za)
            total += (-(pa @ zb) / (2 * t_plus) - (pb @ za) / (2 * t_tilde)
                      + BETA * np_omega(t_plus, OMEGA_DIM) + BETA * np_omega(t_tilde, OMEGA_DIM))
    np.testing.assert_allclose(loss, total / N, rtol=1e-4)
    assert metrics["tau_pos_mean"].shape == (C,)
    one, _ = jit_call(losses.amcl_simsiam, p_a[:1], p_b[:1], z_a[:1], z_b[:1],
                      losses.constant_temperature(1.0), beta=0.0, omega_dim=D)
    base, _ = jit_call(losses.symmetric_negative_cosine, p_a[0], p_b[0], z_a[0], z_b[0])
    np.testing.assert_allclose(one, base, rtol=1e-5)
