"""Why AMCL-MoCo's heads collapse (docs/amcl.md): the pull on a query against the push.

Write the gradient of a per-anchor loss on the (normalised) query as -a k + sum_n b_n n. When
every feature shares a common direction u (early training: positives and the top-k negatives
are about equally similar), the net force along u is (sum_n b_n - a). MoCo's InfoNCE with one
temperature has sum_n b_n = a exactly (softmax weights), so the shared direction feels no force;
AMCL's objectives do not:

- the authors' form (top-k, `query_and_key`): a = 1 / tau+, sum_n b_n = mean_k(1 / tau_k) / 2,
  as the key -> query direction pulls the query and pushes nothing (its anchor and the queue are
  keys, without gradient); at equal temperatures the shared direction is pulled at half the
  positive's weight;
- the project's form (log-sum-exp): sum_n b_n / a = tau+ / tau- (softmax-weighted), below 1 as
  soon as the negatives' temperatures exceed the positive's, which -beta Omega(tau-) favours.
"""

import jax
import jax.numpy as jnp
import numpy as np

from amcl_jax import losses

TAU = 0.1


def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _collapsed_neighbours(num_heads=1, n=4, k=16, d=8):
    """Queries spread at random; every key and queued key the same unit vector u."""
    q = jax.random.normal(jax.random.key(0), (num_heads, n, d))
    u = _unit(jax.random.normal(jax.random.key(1), (d,)))
    keys = jnp.broadcast_to(u, (num_heads, n, d))
    queue = jnp.broadcast_to(u, (num_heads, k, d))
    return q, keys, queue, u


def test_infonce_puts_no_force_on_the_shared_direction():
    q, keys, queue, _ = _collapsed_neighbours()
    grad = jax.jit(jax.grad(lambda q: losses.moco_infonce(q[0], keys[0], queue[0], TAU)[0]))(q)
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)
    # So does the project's log-sum-exp form when one temperature serves every pair.
    grad = jax.jit(jax.grad(lambda q: losses.amcl_queue_contrastive(
        q, keys, queue, losses.constant_temperature(TAU), beta=0.0, omega_dim=8.0,
        negatives="logsumexp", directions="query")[0]))(q)
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)


def test_authors_form_pulls_the_shared_direction_at_half_weight():
    """Equal temperatures (as measured: every tau at the lower bound by step 30), beta = 0:
    the authors' loss is -(q . u) / (2 tau) + const in the query, so every step pulls every
    query towards the common direction of its positive and its negatives."""
    q, keys, queue, u = _collapsed_neighbours()
    amcl = lambda q: losses.amcl_queue_contrastive(
        q, keys, queue, losses.constant_temperature(TAU), beta=0.0, omega_dim=8.0,
        negatives="topk", topk=5, directions="query_and_key")[0]
    half_pull = lambda q: -jnp.mean(jnp.sum(_unit(q) * u, axis=-1)) / (2 * TAU)
    grad_amcl = jax.jit(jax.grad(amcl))(q)  # Jitted: op by op the top-k loss is slow.
    np.testing.assert_allclose(grad_amcl, jax.grad(half_pull)(q), rtol=1e-4, atol=1e-6)
    # One gradient step raises every query's cosine with u: the heads move towards collapse.
    before = jnp.sum(_unit(q) * u, axis=-1)
    after = jnp.sum(_unit(q - 0.01 * grad_amcl) * u, axis=-1)
    assert bool(jnp.all(after > before))
    # The query direction alone is balanced; the key -> query direction is the pure pull.
    query_only = lambda q: losses.amcl_queue_contrastive(
        q, keys, queue, losses.constant_temperature(TAU), beta=0.0, omega_dim=8.0,
        negatives="topk", topk=5, directions="query")[0]
    np.testing.assert_allclose(jax.jit(jax.grad(query_only))(q), 0.0, atol=1e-5)


def test_log_sum_exp_with_hotter_negatives_favours_a_higher_shared_cosine():
    """float64: every pair at the same cosine s, tau+ for the positive, tau- for K negatives.
    d/ds [-s/tau+ + log(e^(s/tau+) + K e^(s/tau-))] = (1 - p+)(1/tau- - 1/tau+): zero at
    tau- = tau+ (InfoNCE), negative (the loss falls as everything aligns) for tau- > tau+."""
    num_negatives, tau_pos = 1024, 0.1

    def loss(s, tau_neg):
        logits = np.array([s / tau_pos] + [s / tau_neg] * num_negatives)
        top = logits.max()
        return -s / tau_pos + top + np.log(np.sum(np.exp(logits - top)))

    for s in (0.2, 0.5, 0.9):
        for tau_neg, sign in ((tau_pos, 0), (2 * tau_pos, -1), (2.0, -1)):
            p_pos = 1.0 / (1.0 + num_negatives * np.exp(s / tau_neg - s / tau_pos))
            slope = (1 - p_pos) * (1 / tau_neg - 1 / tau_pos)
            h = 1e-6
            numeric = (loss(s + h, tau_neg) - loss(s - h, tau_neg)) / (2 * h)
            np.testing.assert_allclose(numeric, slope, rtol=1e-5, atol=1e-7)
            assert np.sign(np.round(slope, 12)) == sign


def test_authors_temperature_optima_per_term():
    """float64, per term of the authors' per-anchor loss (Eq. 2.1 with Eq. 5), tau in
    [1e-5, 2]: the positive's (beta - s+)/tau + beta (D/2) log tau is least at the lower bound
    whenever s+ > beta; a negative's s_k/(k tau) - beta (log tau + 1/tau) has the derivative
    (beta (1 - tau) - s_k/k) / tau^2, least at the upper bound whenever s_k > k beta, and its
    derivative in s_k is 1/(k tau) > 0 at every tau (the negatives' term never favours a
    higher cosine)."""
    beta, dim, topk, lower, upper = 1e-4, 64, 100, 1e-5, 2.0
    grid = np.geomspace(lower, upper, 20001)
    positive = lambda s, tau: (beta - s) / tau + beta * (dim / 2) * np.log(tau)
    negative = lambda s, tau: s / (topk * tau) - beta * (np.log(tau) + 1 / tau)
    for s in (0.05, 0.5, 0.99):
        assert grid[np.argmin(positive(s, grid))] == lower
    for s in (0.02, 0.3, 0.9):  # Above k beta = 0.01: the top-k cosines of a spread queue.
        assert grid[np.argmin(negative(s, grid))] == upper
    for s in (-0.5, 0.0, 0.005):
        assert grid[np.argmin(negative(s, grid))] == lower
    # At the optimum the push on a negative is 1/(k tau_max) = 0.005, the pull 1/tau_min = 1e5.
    assert 1 / (topk * upper) / (1 / lower) < 1e-7
