"""amcl_jax.losses.moco: AMCL-MoCo in the authors' form (both directions against the queue)
against a float64 NumPy loop reference."""

import jax
import numpy as np
import pytest
from _helpers import (
    finite_differences,
    normals,
    np_topk_terms,
    np_unit,
    pair_score_temperature,
    scalar,
)

from amcl_jax import losses


def reference_moco_topk(weights, q, k_, queue, beta, dim, k):
    """Per head the mean of q -> k and k -> q against the queue, summed over heads."""
    total = 0.0
    for head in range(q.shape[0]):
        qs, ks, bank = np_unit(q[head]), np_unit(k_[head]), np_unit(queue[head])
        forward = np.mean([np_topk_terms(weights, qs[i], ks[i], bank, beta, dim, k)
                           for i in range(len(qs))])
        backward = np.mean([np_topk_terms(weights, ks[i], qs[i], bank, beta, dim, k)
                            for i in range(len(qs))])
        total += 0.5 * (forward + backward)
    return total


def test_queue_topk_loss_and_query_gradient_match_the_numpy_loop():
    fn, weights = pair_score_temperature(num_heads=2, dim=4)
    q, k, queue = normals((2, 3, 4), 15), normals((2, 3, 4), 16), normals((2, 9, 4), 17)
    beta, dim, topk = 0.05, 4.0, 4
    call = jax.jit(lambda q, k, queue: scalar(losses.amcl_queue_contrastive(
        q, k, queue, fn, beta=beta, omega_dim=dim, negatives="topk", topk=topk)))
    np.testing.assert_allclose(call(q, k, queue),
                               reference_moco_topk(weights, q, k, queue, beta, dim, topk),
                               rtol=2e-5)
    grad_q, grad_k, grad_queue = jax.jit(jax.grad(call, argnums=(0, 1, 2)))(q, k, queue)
    coords = [(0, 0, 0), (1, 2, 3), (0, 1, 2)]
    numeric = finite_differences(
        lambda x: reference_moco_topk(weights, x, k, queue, beta, dim, topk), q, coords)
    np.testing.assert_allclose([grad_q[c] for c in coords], numeric, rtol=2e-3, atol=1e-4)
    # Keys and queue carry no gradient.
    assert not np.any(grad_k) and not np.any(grad_queue)


def test_queue_directions_and_their_defaults():
    fn, _ = pair_score_temperature(num_heads=1, dim=4)
    q, k, queue = normals((1, 4, 4), 18), normals((1, 4, 4), 19), normals((1, 12, 4), 20)
    kwargs = dict(beta=0.1, omega_dim=4.0, negatives="topk", topk=5)
    # Jitted per setting: the losses' lax.map and checkpoint dispatched op by op are slow.
    loss = jax.jit(lambda q, k, **settings: scalar(losses.amcl_queue_contrastive(
        q, k, queue, fn, **settings)), static_argnames=("beta", "omega_dim", "negatives", "topk",
                                                        "directions"))
    both = loss(q, k, **kwargs)
    forward = loss(q, k, directions="query", **kwargs)
    backward = loss(k, q, directions="query", **kwargs)
    np.testing.assert_allclose(both, 0.5 * (forward + backward), rtol=1e-6)
    # The project's forms keep one direction unless asked.
    lse = loss(q, k, beta=0.0, omega_dim=4.0, negatives="logsumexp")
    lse_one = loss(q, k, beta=0.0, omega_dim=4.0, negatives="logsumexp", directions="query")
    assert lse == lse_one
    with pytest.raises(ValueError, match="directions"):
        losses.amcl_queue_contrastive(q, k, queue, fn, directions="both", **kwargs)
