"""amcl_jax.losses.released_code: the authors' released loss against a float64 NumPy loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from _helpers import np_unit, random_views

from amcl_jax import losses


def ref_released(z_a, z_b, temperatures, beta):
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    temperatures = np.asarray(temperatures, np.float64)
    num_heads, n, _ = z_a.shape
    total = 0.0
    for c in range(num_heads):
        cos = [np_unit(z_a[c, b]) @ np_unit(z_b[c, b]) for b in range(n)]
        head = 0.0
        for a in range(n):
            for b in range(n):
                scaled = cos[b] / temperatures[c, a]
                head += -np.log(np.exp(scaled) / (np.exp(scaled) + np.exp(-scaled)))
        reg = np.mean([n / 2 * np.log(t) + 1 / t for t in temperatures[c]])
        total += head / (n * n) + beta * reg
    return total


def test_released_code_loss_matches_reference():
    num_heads, n, dim = 3, 5, 4
    z_a, z_b = random_views(12, num_heads, n, dim)
    temperatures = jax.random.uniform(
        jax.random.PRNGKey(13), (num_heads, n), minval=0.1, maxval=2.0
    )
    released = jax.jit(functools.partial(losses.released_code_loss, beta=0.1))
    loss, metrics = released(z_a, z_b, temperatures)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_released(z_a, z_b, temperatures, 0.1), rtol=1e-5)
    np.testing.assert_allclose(metrics["tau_mean"], np.mean(temperatures, axis=1), rtol=1e-6)
    low, _ = released(z_a.astype(jnp.bfloat16), z_b.astype(jnp.bfloat16), temperatures)
    assert low.dtype == jnp.float32
