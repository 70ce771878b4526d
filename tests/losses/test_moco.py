"""amcl_jax.losses.moco: MoCo's InfoNCE, and AMCL-MoCo with max and log-sum-exp negatives and in
the authors' form (both directions against the queue), against float64 NumPy loop references."""

import jax
import numpy as np
import pytest
from _helpers import (
    finite_differences,
    jit_call,
    normals,
    np_omega,
    np_tau,
    np_topk_terms,
    np_unit,
    pair_score_temperature,
    randn,
    scalar,
)

from amcl_jax import losses

C, N, D, K = 2, 3, 4, 5
BETA, OMEGA_DIM = 0.3, 4.0


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


# ---------------------------------------------------------------------------------------------
# MoCo's InfoNCE, and AMCL-MoCo's max and log-sum-exp negatives
# ---------------------------------------------------------------------------------------------
def ref_moco(q, k, queue, temperature):
    total = 0.0
    for i in range(len(q)):
        u = np_unit(q[i])
        logits = [u @ np_unit(k[i]) / temperature] + [u @ np_unit(x) / temperature
                                                      for x in queue]
        total += np.log(np.sum(np.exp(logits))) - logits[0]
    return total / len(q)


def test_moco_infonce_matches_loop():
    q, k, queue = randn(0, N, D), randn(1, N, D), randn(2, K, D)
    loss, metrics = jit_call(losses.moco_infonce, q, k, queue, 0.1)
    np.testing.assert_allclose(loss, ref_moco(np.asarray(q), np.asarray(k), np.asarray(queue),
                                              0.1), rtol=1e-5)
    assert set(metrics) == {"pos_sim", "neg_sim", "hard_neg_sim"}


def ref_amcl_queue(q, k, queue, tau_np, negatives, infonce):
    total = 0.0
    for c in range(q.shape[0]):
        for i in range(q.shape[1]):
            u, pos = np_unit(q[c, i]), np_unit(k[c, i])
            bank = [np_unit(x) for x in queue[c]]
            s_pos, tau_pos = u @ pos, np_tau(tau_np, c, u, pos)
            cos = np.array([u @ x for x in bank])
            taus = np.array([np_tau(tau_np, c, u, x) for x in bank])
            if negatives == "max":
                n_star = int(np.argmax(cos))
                s_max, tau_max = cos[n_star], taus[n_star]
                if infonce and s_pos >= s_max:
                    s_max, tau_max = s_pos, tau_pos
                term = -s_pos / tau_pos + s_max / tau_max - BETA * np_omega(tau_max, OMEGA_DIM)
            else:
                logits = np.concatenate([[s_pos / tau_pos], cos / taus])
                weights = np.exp(cos / taus) / np.sum(np.exp(cos / taus))
                term = (-s_pos / tau_pos + np.log(np.sum(np.exp(logits)))
                        - BETA * np.sum(weights * np_omega(taus, OMEGA_DIM)))
            total += term + BETA * np_omega(tau_pos, OMEGA_DIM)
    return total / q.shape[1]


@pytest.mark.parametrize("negatives,infonce",
                         [("max", False), ("max", True), ("logsumexp", False)])
def test_amcl_queue_contrastive_matches_loop(tau_setup, negatives, infonce):
    tau_fn, tau_np = tau_setup
    q, k, queue = randn(3, C, N, D), randn(4, C, N, D), randn(5, C, K, D)
    k = k.at[0, 0].set(q[0, 0])  # One positive certainly beats every negative (Eq. 2.4 branch).
    loss, metrics = jit_call(
        losses.amcl_queue_contrastive, q, k, queue, tau_fn, beta=BETA, omega_dim=OMEGA_DIM,
        negatives=negatives, infonce=infonce, chunk_size=2)  # 2 does not divide N = 3: padding.
    expected = ref_amcl_queue(*(np.asarray(x, np.float64) for x in (q, k, queue)), tau_np,
                              negatives, infonce)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    assert metrics["tau_pos_mean"].shape == (C,)


def test_amcl_moco_reduces_to_moco():
    q, k, queue = randn(6, 1, N, D), randn(7, 1, N, D), randn(8, 1, K, D)
    loss, _ = jit_call(losses.amcl_queue_contrastive, q, k, queue,
                       losses.constant_temperature(0.1), beta=0.0, omega_dim=D,
                       negatives="logsumexp")
    expected, _ = jit_call(losses.moco_infonce, q[0], k[0], queue[0], 0.1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
