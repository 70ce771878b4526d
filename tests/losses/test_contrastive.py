"""amcl_jax.losses.contrastive: NT-Xent and AMCL-SimCLR (the max, log-sum-exp and the authors'
top-k negatives) against independent float64 NumPy loop references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import (
    MLPTemperature,
    MLPTemperatureNoGrid,
    finite_differences,
    jit_call,
    make_mlp_params,
    normals,
    np_omega,
    np_params,
    np_tau,
    np_topk_terms,
    np_unit,
    pair_score_temperature,
    randn,
    random_views,
    scalar,
)
from jax.flatten_util import ravel_pytree

from amcl_jax import losses, models

C, N, D = 2, 3, 4
BETA, OMEGA_DIM = 0.3, 4.0


# ---------------------------------------------------------------------------------------------
# Float64 NumPy loop references of the losses.
# ---------------------------------------------------------------------------------------------
def np_views(z_a, z_b):
    """(C, N, D) x2 -> list over heads of lists of 2N unit vectors."""
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    return [[np_unit(x) for x in list(z_a[c]) + list(z_b[c])] for c in range(z_a.shape[0])]


def ref_nt_xent(z_a, z_b, temperature):
    views = np_views(z_a[None], z_b[None])[0]
    two_n = len(views)
    total = 0.0
    for i in range(two_n):
        pos = (i + two_n // 2) % two_n
        denom = sum(np.exp(views[i] @ views[j] / temperature) for j in range(two_n) if j != i)
        total += -np.log(np.exp(views[i] @ views[pos] / temperature) / denom)
    return total / two_n


def ref_amcl(z_a, z_b, tau_fn, beta, omega_dim, negatives, tau_pos_fn=None):
    """tau_fn(head, u, v) -> float (tau_pos_fn, if given, for the positive pairs).
    Returns (loss, metrics)."""
    tau_pos_fn = tau_pos_fn or tau_fn
    heads = np_views(z_a, z_b)
    loss = 0.0
    pos_sims, hard_sims, neg_sims = [], [], []
    tau_pos_mean, tau_neg_mean = [], []
    for c, views in enumerate(heads):
        two_n = len(views)
        head_total = 0.0
        tau_pos_list, tau_neg_list = [], []
        for i in range(two_n):
            pos = (i + two_n // 2) % two_n
            negs = [j for j in range(two_n) if j not in (i, pos)]
            s_pos = views[i] @ views[pos]
            tau_pos = tau_pos_fn(c, views[i], views[pos])
            neg_cos = np.array([views[i] @ views[j] for j in negs])
            pos_sims.append(s_pos)
            neg_sims.extend(neg_cos)
            hard_sims.append(neg_cos.max())
            tau_pos_list.append(tau_pos)
            if negatives == "max":
                hard = negs[int(np.argmax(neg_cos))]
                tau_hard = tau_fn(c, views[i], views[hard])
                s_hard = views[i] @ views[hard]
                head_total += (
                    -s_pos / tau_pos
                    + s_hard / tau_hard
                    + beta * np_omega(tau_pos, omega_dim)
                    - beta * np_omega(tau_hard, omega_dim)
                )
                tau_neg_list.append(tau_hard)
            else:
                others = [j for j in range(two_n) if j != i]
                logits = {j: (views[i] @ views[j])
                          / (tau_pos if j == pos else tau_fn(c, views[i], views[j]))
                          for j in others}
                lse = np.log(sum(np.exp(logits[j]) for j in others))
                neg_exp = np.array([np.exp(logits[j]) for j in negs])
                weights = neg_exp / neg_exp.sum()
                neg_taus = np.array([tau_fn(c, views[i], views[j]) for j in negs])
                head_total += (
                    -logits[pos]
                    + lse
                    + beta * np_omega(tau_pos, omega_dim)
                    - beta * np.sum(weights * np_omega(neg_taus, omega_dim))
                )
                tau_neg_list.append(np.sum(weights * neg_taus))
        loss += head_total / two_n
        tau_pos_mean.append(np.mean(tau_pos_list))
        tau_neg_mean.append(np.mean(tau_neg_list))
    metrics = {
        "pos_sim": np.mean(pos_sims),
        "neg_sim": np.mean(neg_sims),
        "hard_neg_sim": np.mean(hard_sims),
        "tau_pos_mean": np.array(tau_pos_mean),
        "tau_neg_mean": np.array(tau_neg_mean),
    }
    return loss, metrics


def reference_simclr_topk(weights, z_a, z_b, beta, dim, k):
    """(C, N, D) views -> the authors' SimCLR loss: mean over 2N anchors, sum over heads."""
    total = 0.0
    for head in range(z_a.shape[0]):
        views = np_unit(np.concatenate([z_a[head], z_b[head]]))
        n = z_a.shape[1]
        terms = []
        for i in range(2 * n):
            positive = (i + n) % (2 * n)
            others = [j for j in range(2 * n) if j not in (i, positive)]
            terms.append(np_topk_terms(weights, views[i], views[positive], views[others],
                                       beta, dim, min(k, 2 * n - 2)))
        total += np.mean(terms)
    return total


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------
@functools.partial(
    jax.jit, static_argnames=("beta", "omega_dim", "negatives", "chunk_size", "with_grid")
)
def mlp_loss(z_a, z_b, params, *, beta, omega_dim, negatives, chunk_size=None, with_grid=True):
    tau_fn = MLPTemperature(params) if with_grid else MLPTemperatureNoGrid(params)
    return losses.amcl_contrastive(
        z_a, z_b, tau_fn, beta=beta, omega_dim=omega_dim, negatives=negatives,
        chunk_size=chunk_size,
    )


@functools.partial(
    jax.jit, static_argnames=("beta", "omega_dim", "negatives", "chunk_size", "with_grid")
)
def loss_and_grads(z_a, z_b, params, *, with_grid=True, **kwargs):
    """Loss and its gradients w.r.t. (z_a, z_b, params), one compilation per configuration."""
    tau_cls = MLPTemperature if with_grid else MLPTemperatureNoGrid
    fn = lambda za, zb, p: losses.amcl_contrastive(za, zb, tau_cls(p), **kwargs)[0]
    return jax.value_and_grad(fn, argnums=(0, 1, 2))(z_a, z_b, params)


def assert_trees_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# NT-Xent, and AMCL with the hard max or the log-sum-exp.
# ---------------------------------------------------------------------------------------------
def test_nt_xent_matches_reference_and_is_scale_invariant():
    z_a, z_b = random_views(0, 1, 6, 5)
    nt_xent = jax.jit(losses.nt_xent, static_argnums=2)
    loss, metrics = nt_xent(z_a[0], z_b[0], 0.5)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, ref_nt_xent(z_a[0], z_b[0], 0.5), rtol=1e-5)
    _, ref_metrics = ref_amcl(
        z_a, z_b, lambda c, u, v: 0.5, beta=0.0, omega_dim=5, negatives="max"
    )
    np.testing.assert_allclose(metrics["pos_sim"], ref_metrics["pos_sim"], rtol=1e-5)
    np.testing.assert_allclose(metrics["neg_sim"], ref_metrics["neg_sim"], rtol=1e-5, atol=1e-6)
    scaled, _ = nt_xent(3.7 * z_a[0], 0.2 * z_b[0], 0.5)
    np.testing.assert_allclose(scaled, loss, rtol=1e-5)


@pytest.mark.parametrize("negatives", ["max", "logsumexp"])
@pytest.mark.parametrize("num_heads,beta", [(1, 0.0), (3, 0.1)])
def test_amcl_matches_reference(negatives, num_heads, beta):
    n, dim, omega_dim = 5, 4, 7.0
    z_a, z_b = random_views(1, num_heads, n, dim)
    params = make_mlp_params(jax.random.PRNGKey(2), num_heads, dim)
    ref_params = np_params(params)
    ref_loss, ref_metrics = ref_amcl(
        z_a, z_b, functools.partial(np_tau, ref_params), beta, omega_dim, negatives
    )
    # max mode never evaluates the pair grid; logsumexp is checked with and without it.
    for with_grid in (True, False) if negatives == "logsumexp" else (True,):
        loss, metrics = mlp_loss(
            z_a, z_b, params, beta=beta, omega_dim=omega_dim, negatives=negatives,
            chunk_size=3, with_grid=with_grid,
        )
        assert loss.dtype == jnp.float32 and loss.shape == ()
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
        for key, value in ref_metrics.items():
            np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        for key in ("tau_pos", "tau_neg"):
            assert metrics[f"{key}_mean"].shape == (num_heads,)
            assert np.all(metrics[f"{key}_min"] <= metrics[f"{key}_mean"] + 1e-6)
            assert np.all(metrics[f"{key}_mean"] <= metrics[f"{key}_max"] + 1e-6)


@pytest.mark.parametrize("negatives", ["max", "logsumexp"])
@pytest.mark.parametrize("adaptive", ["positive", "negative"])
def test_amcl_with_one_adaptive_side_matches_reference(negatives, adaptive):
    """The temperature ablation: the network for tau+ only (or tau- only), a constant for the
    other side; against the NumPy loop with the same split."""
    num_heads, n, dim, beta, omega_dim = 2, 5, 4, 0.1, 4.0
    z_a, z_b = random_views(11, num_heads, n, dim)
    params = make_mlp_params(jax.random.PRNGKey(12), num_heads, dim)
    net, ref_net = MLPTemperature(params), functools.partial(np_tau, np_params(params))
    const, ref_const = losses.constant_temperature(0.4), lambda c, u, v: 0.4
    if adaptive == "positive":
        fns, ref_fns = (const, net), (ref_const, ref_net)
    else:
        fns, ref_fns = (net, const), (ref_net, ref_const)
    loss, metrics = jax.jit(lambda za, zb: losses.amcl_contrastive(
        za, zb, fns[0], positive_temperature_fn=fns[1], beta=beta, omega_dim=omega_dim,
        negatives=negatives, chunk_size=3))(z_a, z_b)
    ref_loss, ref_metrics = ref_amcl(z_a, z_b, ref_fns[0], beta, omega_dim, negatives,
                                     tau_pos_fn=ref_fns[1])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for key in ("tau_pos_mean", "tau_neg_mean"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
    constant_side = "tau_neg_mean" if adaptive == "positive" else "tau_pos_mean"
    np.testing.assert_allclose(metrics[constant_side], [0.4] * num_heads, rtol=1e-6)


def test_logsumexp_with_constant_tau_is_nt_xent():
    z_a, z_b = random_views(3, 1, 7, 6)
    expected, _ = jax.jit(losses.nt_xent, static_argnums=2)(z_a[0], z_b[0], 0.3)
    amcl = lambda za, zb: losses.amcl_contrastive(
        za, zb, losses.constant_temperature(0.3), beta=0.0, omega_dim=6,
        negatives="logsumexp", chunk_size=4,
    )
    got, metrics = jax.jit(amcl)(z_a, z_b)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["tau_pos_mean"], [0.3], rtol=1e-6)
    np.testing.assert_allclose(metrics["tau_neg_max"], [0.3], rtol=1e-6)


def test_logsumexp_grid_fallback_and_chunking_agree():
    z_a, z_b = random_views(4, 3, 5, 4)
    params = make_mlp_params(jax.random.PRNGKey(5), 3, 4)
    kwargs = dict(beta=0.1, omega_dim=4.0, negatives="logsumexp")
    base_loss, base_grads = loss_and_grads(z_a, z_b, params, **kwargs)
    # 2N = 10: chunk 4 does not divide it (padded last chunk); fallback without pair_grid.
    for chunk_size, with_grid in [(4, True), (None, False)]:
        loss, grads = loss_and_grads(
            z_a, z_b, params, chunk_size=chunk_size, with_grid=with_grid, **kwargs
        )
        np.testing.assert_allclose(loss, base_loss, rtol=1e-6, atol=1e-6)
        assert_trees_close(grads, base_grads, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("negatives", ["max", "logsumexp"])
def test_gradients_match_finite_differences(negatives):
    z_a, z_b = random_views(6, 2, 4, 3)
    params = make_mlp_params(jax.random.PRNGKey(7), 2, 3)
    kwargs = dict(beta=0.1, omega_dim=3.0, negatives=negatives, chunk_size=3)
    _, grads = loss_and_grads(z_a, z_b, params, **kwargs)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf))

    # Directional derivatives along random directions, central differences (float32 loss).
    primals = (z_a, z_b, params)
    flat, unravel = ravel_pytree(primals)
    flat_grad, _ = ravel_pytree(grads)
    fn = lambda x: loss_and_grads(*unravel(x), **kwargs)[0]
    eps = 3e-3
    for seed in range(3):
        direction = jax.random.normal(jax.random.PRNGKey(100 + seed), flat.shape)
        direction = direction / jnp.linalg.norm(direction)
        numeric = (fn(flat + eps * direction) - fn(flat - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(flat_grad @ direction, numeric, rtol=2e-2, atol=2e-3)


def test_max_mode_evaluates_two_pairs_per_anchor():
    num_heads, n, dim = 3, 6, 4
    z_a, z_b = random_views(8, num_heads, n, dim)
    params = make_mlp_params(jax.random.PRNGKey(9), num_heads, dim)
    seen = []

    class Counting(MLPTemperature):
        def __call__(self, u, v):
            seen.append(u.shape)
            return super().__call__(u, v)

        def pair_grid(self, u, v):
            raise AssertionError("max mode must not evaluate the pair grid")

    loss_fn = lambda za, zb: losses.amcl_contrastive(
        za, zb, Counting(params), beta=0.1, omega_dim=dim, negatives="max"
    )[0]
    jax.jit(jax.grad(loss_fn))(z_a, z_b)
    assert seen and all(shape[0] == num_heads for shape in seen)
    assert sum(shape[1] for shape in seen) == 2 * (2 * n)


def test_bfloat16_inputs_give_float32_loss():
    z_a, z_b = random_views(10, 3, 5, 8)
    params = make_mlp_params(jax.random.PRNGKey(11), 3, 8)
    for negatives in ("max", "logsumexp"):
        kwargs = dict(beta=0.1, omega_dim=8.0, negatives=negatives)
        low, _ = mlp_loss(z_a.astype(jnp.bfloat16), z_b.astype(jnp.bfloat16), params, **kwargs)
        assert low.dtype == jnp.float32
        rounded, _ = mlp_loss(
            z_a.astype(jnp.bfloat16).astype(jnp.float32),
            z_b.astype(jnp.bfloat16).astype(jnp.float32),
            params,
            **kwargs,
        )
        full, _ = mlp_loss(z_a, z_b, params, **kwargs)
        np.testing.assert_allclose(low, rounded, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(low, full, rtol=2e-2, atol=2e-2)


def test_invalid_negatives_raises():
    z_a, z_b = random_views(14, 1, 3, 4)
    with pytest.raises(ValueError, match="negatives"):
        losses.amcl_contrastive(
            z_a, z_b, losses.constant_temperature(0.5), beta=0.1, omega_dim=4, negatives="mean"
        )


# ---------------------------------------------------------------------------------------------
# The authors' form: Eq. 2.1 with Eq. 5's top-k negatives and the pair-score map.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 100])
def test_topk_simclr_loss_and_gradient_match_the_numpy_loop(k):
    fn, weights = pair_score_temperature(num_heads=2, dim=4)
    z_a, z_b = normals((2, 4, 4), 5), normals((2, 4, 4), 6)
    beta, dim = 0.05, 4.0
    loss_of = lambda za: scalar(losses.amcl_contrastive(za, z_b, fn, beta=beta, omega_dim=dim,
                                                        negatives="topk", topk=k))
    loss = jax.jit(loss_of)(z_a)
    expected = reference_simclr_topk(weights, z_a, z_b, beta, dim, k)
    np.testing.assert_allclose(loss, expected, rtol=2e-5)

    grad = jax.jit(jax.grad(loss_of))(z_a)
    coords = [(0, 0, 0), (0, 2, 1), (1, 1, 3), (1, 3, 2)]
    numeric = finite_differences(
        lambda za: reference_simclr_topk(weights, za, z_b, beta, dim, k), z_a, coords)
    np.testing.assert_allclose([grad[c] for c in coords], numeric, rtol=2e-3, atol=1e-4)


def test_topk_accepts_a_plain_temperature_function():
    """Without `gathered` the loss gathers the pairs itself: same value as the module path."""
    fn, weights = pair_score_temperature(num_heads=2, dim=4)
    plain = lambda u, v: fn(u, v)  # Only __call__: the generic path.
    z_a, z_b = normals((2, 5, 4), 7), normals((2, 5, 4), 8)
    kwargs = dict(beta=0.1, omega_dim=4.0, negatives="topk", topk=3)
    loss = lambda tau_fn: jax.jit(lambda za, zb: scalar(losses.amcl_contrastive(
        za, zb, tau_fn, **kwargs)))(z_a, z_b)
    generic = loss(plain)
    np.testing.assert_allclose(generic, loss(fn), rtol=1e-6)
    np.testing.assert_allclose(generic, reference_simclr_topk(weights, z_a, z_b, 0.1, 4.0, 3),
                               rtol=2e-5)


def test_topk_with_k_1_and_beta_0_is_the_hard_max():
    fn, _ = pair_score_temperature(num_heads=3, dim=6)
    z_a, z_b = normals((3, 8, 6), 9), normals((3, 8, 6), 10)
    # Jitted per setting: the losses dispatched op by op are slow.
    loss = jax.jit(lambda za, zb, tau_fn, **kwargs: scalar(losses.amcl_contrastive(
        za, zb, tau_fn, beta=0.0, omega_dim=6.0, **kwargs)),
        static_argnames=("tau_fn", "negatives", "topk"))
    topk = loss(z_a, z_b, fn, negatives="topk", topk=1)
    hard = loss(z_a, z_b, fn, negatives="max")
    np.testing.assert_allclose(topk, hard, rtol=1e-6)
    # With every negative kept and a constant tau, the negative term is the mean cosine / tau.
    constant = losses.constant_temperature(0.5)
    everything = loss(z_a[:1], z_b[:1], constant, negatives="topk", topk=10_000)
    z = np_unit(np.concatenate([z_a[0], z_b[0]]))
    cos = z @ z.T
    n = 8
    per_anchor = [(-cos[i, (i + n) % (2 * n)]
                   + np.mean([cos[i, j] for j in range(2 * n) if j not in (i, (i + n) % (2 * n))]))
                  / 0.5 for i in range(2 * n)]
    np.testing.assert_allclose(everything, np.mean(per_anchor), rtol=1e-5)


def test_topk_chooses_without_gradient_and_rejects_bad_k():
    fn, _ = pair_score_temperature(num_heads=1, dim=3)
    z_a, z_b = normals((1, 3, 3), 11), normals((1, 3, 3), 12)
    with pytest.raises(ValueError, match="topk"):
        losses.amcl_contrastive(z_a, z_b, fn, beta=0.1, omega_dim=3.0, negatives="topk", topk=0)
    grad = jax.jit(jax.grad(lambda za: scalar(losses.amcl_contrastive(
        za, z_b, fn, beta=0.1, omega_dim=3.0, negatives="topk", topk=2))))(z_a)
    assert np.all(np.isfinite(grad))


def test_the_temperature_network_gets_its_gradient_through_both_sides():
    fn, _ = pair_score_temperature(num_heads=2, dim=4)
    z_a, z_b = normals((2, 6, 4), 13), normals((2, 6, 4), 14)

    def loss(params):
        bound = models.BoundTemperature(fn.module, params)
        return scalar(losses.amcl_contrastive(z_a, z_b, bound, beta=1e-4, omega_dim=4.0,
                                              negatives="topk", topk=3))

    grads = jax.jit(jax.grad(loss))(fn.params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------------------------
# The likelihood form: temperatures fit by each pair's Gaussian likelihood, the contrast at
# fixed temperatures.
# ---------------------------------------------------------------------------------------------
def ref_likelihood_terms(z_a, z_b, tau_fn, omega_dim, *, row=False, fixed_taus=None,
                         fixed_cos=None):
    """Float64 loop: (contrast, fit), each a mean over the 2N anchors summed over heads.

    contrast = -s+/tau+ + log sum_{j != i} exp(s_ij / tau_ij); fit = nll(tau+, s+) + mean over
    negatives of nll(tau_ij, s_ij), nll(tau, s) = (1 - s) / tau + (K / 2) log tau. `row`: every
    tau_ij of anchor i is its positive's tau+, and the fit is nll(tau+, s+) alone. Given
    `fixed_taus` (head, i, j) -> tau the contrast uses them; given `fixed_cos` the fit does."""
    contrast_total, fit_total = 0.0, 0.0
    for c, views in enumerate(np_views(z_a, z_b)):
        two_n = len(views)
        contrast, fit = 0.0, 0.0
        for i in range(two_n):
            pos = (i + two_n // 2) % two_n
            others = [j for j in range(two_n) if j != i]
            negs = [j for j in others if j != pos]
            cos = {j: views[i] @ views[j] for j in others}
            tau = {j: tau_fn(c, views[i], views[pos if row else j]) for j in others}
            contrast_tau = fixed_taus[c, i] if fixed_taus is not None else tau
            fit_cos = fixed_cos[c, i] if fixed_cos is not None else cos
            logits = {j: cos[j] / contrast_tau[j] for j in others}
            contrast += -logits[pos] + np.log(sum(np.exp(logits[j]) for j in others))
            nll = {j: (1 - fit_cos[j]) / tau[j] + omega_dim / 2 * np.log(tau[j]) for j in others}
            fit += nll[pos] + (0.0 if row else np.mean([nll[j] for j in negs]))
        contrast_total += contrast / two_n
        fit_total += fit / two_n
    return contrast_total, fit_total


@pytest.mark.parametrize("objective", ["likelihood", "row_likelihood"])
def test_likelihood_objective_matches_the_loop_and_each_side_learns_from_its_own_term(objective):
    num_heads, n, dim, beta, omega_dim = 2, 4, 3, 0.7, 3.0
    row = objective == "row_likelihood"
    z_a, z_b = random_views(11, num_heads, n, dim)
    params = make_mlp_params(jax.random.PRNGKey(12), num_heads, dim)
    kwargs = dict(beta=beta, omega_dim=omega_dim, negatives="logsumexp", chunk_size=3,
                  temperature_objective=objective)
    tau_fn = functools.partial(np_tau, np_params(params))

    contrast, fit = ref_likelihood_terms(z_a, z_b, tau_fn, omega_dim, row=row)
    for tau_cls in (MLPTemperature, MLPTemperatureNoGrid):
        loss, _ = losses.amcl_contrastive(z_a, z_b, tau_cls(params), **kwargs)
        np.testing.assert_allclose(loss, contrast + beta * fit, rtol=1e-5, atol=1e-5)

    grad_fn = jax.jit(jax.grad(
        lambda za, zb, p: losses.amcl_contrastive(za, zb, MLPTemperature(p), **kwargs)[0],
        argnums=(0, 1, 2)))
    grad_a, grad_b, grad_params = grad_fn(z_a, z_b, params)

    # The features: the gradient of the contrast alone, at the temperatures of the given views.
    views = np_views(z_a, z_b)
    partner = lambda i, j: (i + n) % (2 * n) if row else j
    taus = np.array([[[tau_fn(c, views[c][i], views[c][partner(i, j)]) if j != i else 1.0
                       for j in range(2 * n)] for i in range(2 * n)] for c in range(num_heads)])
    both = np.concatenate([np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)], axis=1)
    contrast_of = lambda x: ref_likelihood_terms(x[:, :n], x[:, n:], tau_fn, omega_dim, row=row,
                                                 fixed_taus=taus)[0]
    coords = [(0, 0, 0), (1, 2, 1), (0, 5, 2), (1, 7, 0), (0, 3, 1)]
    numeric = finite_differences(contrast_of, both, coords)
    analytic = np.concatenate([np.asarray(grad_a), np.asarray(grad_b)], axis=1)
    np.testing.assert_allclose([analytic[c] for c in coords], numeric, rtol=1e-3, atol=1e-5)

    # The temperature network: beta times the gradient of the fit alone, at the given cosines.
    cosines = np.array([[[views[c][i] @ views[c][j] for j in range(2 * n)]
                         for i in range(2 * n)] for c in range(num_heads)])
    flat, unravel = ravel_pytree(params)
    fit_of = lambda x: ref_likelihood_terms(
        z_a, z_b, functools.partial(np_tau, np_params(unravel(jnp.asarray(x, jnp.float32)))),
        omega_dim, row=row, fixed_cos=cosines)[1]
    flat_grad, _ = ravel_pytree(grad_params)
    picked = [(i,) for i in range(0, flat.size, max(1, flat.size // 6))]
    numeric = finite_differences(fit_of, np.asarray(flat, np.float64), picked, eps=1e-3)
    np.testing.assert_allclose(np.asarray(flat_grad)[[p[0] for p in picked]], beta * numeric,
                               rtol=2e-2, atol=2e-4)


def test_likelihood_fit_has_its_minimum_inside_the_bounds_at_2_1_minus_s_over_k():
    # One pair's nll(tau, s) = Omega_K(tau) - s / tau, minimised over a fine grid of tau.
    for s, k in ((0.7, 64.0), (0.0, 64.0), (-0.5, 8.0), (0.9, 1.0)):
        grid = np.geomspace(1e-4, 10.0, 200_001)
        nll = np.asarray(losses.omega(grid, k)) - s / grid
        np.testing.assert_allclose(grid[np.argmin(nll)], 2 * (1 - s) / k, rtol=1e-3)


def test_likelihood_objective_needs_the_log_sum_exp():
    z_a, z_b = random_views(0, 1, 3, 2)
    with pytest.raises(ValueError, match="needs negatives='logsumexp'"):
        losses.amcl_contrastive(z_a, z_b, losses.constant_temperature(0.5), beta=1.0,
                                omega_dim=2.0, negatives="max",
                                temperature_objective="likelihood")


# ---------------------------------------------------------------------------------------------
# Eq. 2.4's InfoNCE form with the hardest candidate (amcl_infonce_max)
# ---------------------------------------------------------------------------------------------
def test_amcl_infonce_max_matches_loop_and_is_bounded(tau_setup):
    tau_fn, tau_np = tau_setup
    z_a, z_b = randn(9, C, N, D), randn(10, C, N, D)
    z_b = z_b.at[1, 2].set(z_a[1, 2])
    loss, _ = jit_call(losses.amcl_infonce_max, z_a, z_b, tau_fn, beta=BETA, omega_dim=OMEGA_DIM)
    a, b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    total = 0.0
    for c in range(C):
        views = [np_unit(x) for x in list(a[c]) + list(b[c])]
        for i in range(2 * N):
            pos = (i + N) % (2 * N)
            cands = [j for j in range(2 * N) if j != i]  # Negatives and the positive.
            sims = [views[i] @ views[j] for j in cands]
            best = max(range(len(cands)), key=lambda idx: (sims[idx], cands[idx] == pos))
            j = cands[best]
            tau_pos, tau_max = (np_tau(tau_np, c, views[i], views[x]) for x in (pos, j))
            total += (-views[i] @ views[pos] / tau_pos + sims[best] / tau_max
                      + BETA * np_omega(tau_pos, OMEGA_DIM) - BETA * np_omega(tau_max, OMEGA_DIM))
    np.testing.assert_allclose(loss, total / (2 * N), rtol=1e-4)
    # Identical views: the positive wins every max, so the loss is 0 even at a tiny temperature.
    zero, _ = jit_call(losses.amcl_infonce_max, z_a, z_a, losses.constant_temperature(1e-5),
                       beta=BETA, omega_dim=OMEGA_DIM)
    np.testing.assert_allclose(zero, 0.0, atol=1e-6)
