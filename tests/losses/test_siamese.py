"""amcl_jax.losses.siamese: AMCL-SimSiam (Eq. 2.2) with the pair-score map against a float64
NumPy loop reference."""

import numpy as np
from _helpers import normals, np_omega, np_pair_tau, np_unit, pair_score_temperature, scalar

from amcl_jax import losses


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
