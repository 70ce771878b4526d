"""amcl_jax.losses.vicreg: VICReg's loss against a float64 NumPy loop of the paper's equations
(Eq. 1, 3, 5, 6) and its gradient against finite differences of that loop (the method:
tests/methods/test_vicreg.py). No peer library's VICReg loss is a dependency to compare with
(torch is, but it has none)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import finite_differences, normals, scalar

from amcl_jax import losses

WEIGHTS = {"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0}


def reference_terms(z_a, z_b, gamma=1.0, eps=1e-4):
    """s(Z, Z'), v(Z) + v(Z'), c(Z) + c(Z') one number at a time, in float64."""
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    num, dim = z_a.shape
    invariance = sum((z_a[i, j] - z_b[i, j]) ** 2
                     for i, j in itertools.product(range(num), range(dim))) / (num * dim)
    variance = covariance = 0.0
    for z in (z_a, z_b):
        means = [sum(z[i, j] for i in range(num)) / num for j in range(dim)]
        for j in range(dim):  # Eq. 1: the hinge on each dimension's standard deviation.
            var = sum((z[i, j] - means[j]) ** 2 for i in range(num)) / (num - 1)
            variance += max(0.0, gamma - np.sqrt(var + eps)) / dim
        for j, k in itertools.product(range(dim), repeat=2):  # Eq. 3: off-diagonal pairs.
            if j != k:
                cov = sum((z[i, j] - means[j]) * (z[i, k] - means[k])
                          for i in range(num)) / (num - 1)
                covariance += cov ** 2 / dim
    return invariance, variance, covariance


def reference_loss(z_a, z_b, invariance_weight, variance_weight, covariance_weight):
    """Eq. 6: lambda s + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]."""
    invariance, variance, covariance = reference_terms(z_a, z_b)
    return (invariance_weight * invariance + variance_weight * variance
            + covariance_weight * covariance)


def _views(num, dim, seed):
    """Two correlated (N, D) views, each dimension at its own scale so the variance hinge is
    active on some dimensions and not on others (none within 1e-2 of the kink)."""
    scales = np.linspace(0.3, 1.8, dim, dtype=np.float32)
    z_a = normals((num, dim), seed) * scales
    z_b = z_a + 0.5 * normals((num, dim), seed + 1) * scales
    for z in (z_a, z_b):
        std = np.sqrt(np.var(np.asarray(z, np.float64), axis=0, ddof=1) + 1e-4)
        assert np.all(np.abs(std - 1.0) > 1e-2), std  # Finite differences stay off the kink.
        assert np.any(std < 1.0) and np.any(std > 1.0), std
    return z_a, z_b


@pytest.mark.parametrize("num,dim,seed", [(8, 4, 0), (13, 7, 10)])
def test_vicreg_loss_and_terms_match_the_numpy_loop(num, dim, seed):
    z_a, z_b = _views(num, dim, seed)
    loss, metrics = jax.jit(lambda a, b: losses.vicreg_loss(a, b, **WEIGHTS))(z_a, z_b)
    invariance, variance, covariance = reference_terms(z_a, z_b)
    np.testing.assert_allclose(loss, reference_loss(z_a, z_b, **WEIGHTS), rtol=1e-5)
    np.testing.assert_allclose(
        [metrics["invariance"], metrics["variance"], metrics["covariance"]],
        [invariance, variance, covariance], rtol=1e-5)
    # Other weights weigh the same terms.
    other = {"invariance_weight": 1.0, "variance_weight": 0.5, "covariance_weight": 3.0}
    np.testing.assert_allclose(scalar(losses.vicreg_loss(z_a, z_b, **other)),
                               reference_loss(z_a, z_b, **other), rtol=1e-5)


@pytest.mark.parametrize("num,dim,seed", [(8, 4, 0), (13, 7, 10)])
def test_vicreg_gradient_matches_finite_differences_of_the_loop(num, dim, seed):
    z_a, z_b = _views(num, dim, seed)
    grad_a, grad_b = jax.jit(jax.grad(lambda a, b: scalar(losses.vicreg_loss(a, b, **WEIGHTS)),
                                      argnums=(0, 1)))(z_a, z_b)
    coords = [(0, 0), (num - 1, dim - 1), (num // 2, 1), (3, dim // 2)]
    numeric_a = finite_differences(lambda za: reference_loss(za, z_b, **WEIGHTS), z_a, coords)
    numeric_b = finite_differences(lambda zb: reference_loss(z_a, zb, **WEIGHTS), z_b, coords)
    np.testing.assert_allclose([grad_a[c] for c in coords], numeric_a, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose([grad_b[c] for c in coords], numeric_b, rtol=2e-3, atol=1e-4)


def test_vicreg_is_float32_under_bfloat16_and_refuses_other_shapes():
    z_a, z_b = _views(8, 4, 0)
    loss, metrics = losses.vicreg_loss(jnp.asarray(z_a, jnp.bfloat16),
                                       jnp.asarray(z_b, jnp.bfloat16), **WEIGHTS)
    assert loss.dtype == jnp.float32 and all(m.dtype == jnp.float32 for m in metrics.values())
    with pytest.raises(ValueError, match="N >= 2"):
        losses.vicreg_loss(z_a[:1], z_b[:1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        losses.vicreg_loss(z_a[None], z_b[None])
