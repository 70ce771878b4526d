"""The authors' AMCL v2.0 form against float64 NumPy loop references written from their equations.

Eq. 3 temperature map, Eq. 5 top-k negatives (SimCLR and the MoCo queue, both directions),
SimSiam's Eq. 2.2 with the shared map, Barlow Twins' channel-vector map and Eq. 2.3; the forms'
settings, clipping, and the identities that tie the forms together.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from amcl_jax import forms, losses, methods, models, optim
from amcl_jax.config import ConfigError, get_default_config, get_field, validate_config

BOUNDS = (1e-5, 2.0)


# --------------------------------------------------------------------------------------------
# NumPy references (float64, one pair at a time)
# --------------------------------------------------------------------------------------------
def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _phi(weights, x):
    """Eq. 3's phi on one vector: Dense - ReLU - Dense."""
    w1, b1, w2, b2 = weights
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def _tau(weights, u, v, bounds=BOUNDS):
    """Eq. 3: lower + (upper - lower) sigmoid(-<phi(u), phi(v)>) for one pair."""
    score = float(_phi(weights, u) @ _phi(weights, v))
    return bounds[0] + (bounds[1] - bounds[0]) / (1.0 + np.exp(score))


def _omega(tau, dim):
    return dim / 2.0 * np.log(tau) + 1.0 / tau


def _anchor_terms(weights, anchor, positive, negatives, beta, dim, k):
    """Eq. 2.1 with Eq. 5 for one anchor: negatives (K, D), the k most similar kept."""
    s_pos = anchor @ positive
    tau_pos = _tau(weights, anchor, positive)
    cosines = negatives @ anchor
    chosen = np.argsort(-cosines, kind="stable")[:k]
    taus = [_tau(weights, anchor, negatives[j]) for j in chosen]
    term = -s_pos / tau_pos + np.mean([cosines[j] / t for j, t in zip(chosen, taus, strict=True)])
    return term + beta * _omega(tau_pos, dim) - beta * sum(np.log(t) + 1.0 / t for t in taus)


def reference_simclr_topk(weights, z_a, z_b, beta, dim, k):
    """(C, N, D) views -> the authors' SimCLR loss: mean over 2N anchors, sum over heads."""
    total = 0.0
    for head in range(z_a.shape[0]):
        views = _unit(np.concatenate([z_a[head], z_b[head]]))
        n = z_a.shape[1]
        terms = []
        for i in range(2 * n):
            positive = (i + n) % (2 * n)
            others = [j for j in range(2 * n) if j not in (i, positive)]
            terms.append(_anchor_terms(weights, views[i], views[positive], views[others],
                                       beta, dim, min(k, 2 * n - 2)))
        total += np.mean(terms)
    return total


def reference_moco_topk(weights, q, k_, queue, beta, dim, k):
    """Per head the mean of q -> k and k -> q against the queue, summed over heads."""
    total = 0.0
    for head in range(q.shape[0]):
        qs, ks, bank = _unit(q[head]), _unit(k_[head]), _unit(queue[head])
        forward = np.mean([_anchor_terms(weights, qs[i], ks[i], bank, beta, dim, k)
                           for i in range(len(qs))])
        backward = np.mean([_anchor_terms(weights, ks[i], qs[i], bank, beta, dim, k)
                            for i in range(len(qs))])
        total += 0.5 * (forward + backward)
    return total


def reference_simsiam(weights, p_a, p_b, z_a, z_b, beta, dim):
    total = 0.0
    for head in range(p_a.shape[0]):
        terms = []
        for i in range(p_a.shape[1]):
            pa, pb, za, zb = (_unit(x[head, i]) for x in (p_a, p_b, z_a, z_b))
            tau_plus, tau_tilde = _tau(weights, pa, zb), _tau(weights, pb, za)
            terms.append(-(pa @ zb) / (2 * tau_plus) - (pb @ za) / (2 * tau_tilde)
                         + beta * _omega(tau_plus, dim) + beta * _omega(tau_tilde, dim))
        total += np.mean(terms)
    return total


def reference_channel_temperatures(weights, z_a, z_b, bounds=BOUNDS):
    """tau[c, l, m] from the channel vectors z_a[c, :, l], z_b[c, :, m]."""
    heads, _, dim = z_a.shape
    tau = np.zeros((heads, dim, dim))
    for c, row, col in itertools.product(range(heads), range(dim), range(dim)):
        tau[c, row, col] = _tau(weights, z_a[c, :, row], z_b[c, :, col], bounds)
    return tau


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
                total += (1 - corr[row, row] / t) ** 2 + beta * _omega(t, dim)
            else:
                total += lam * corr[row, col] ** 2 / t - beta * _omega(t, dim)
    return total


def _finite_difference(fn, x, coords, eps=1e-6):
    """Central differences of a float64 scalar function at a few coordinates of x."""
    grads = []
    for coord in coords:
        plus, minus = np.array(x, np.float64), np.array(x, np.float64)
        plus[coord] += eps
        minus[coord] -= eps
        grads.append((fn(plus) - fn(minus)) / (2 * eps))
    return np.array(grads)


# --------------------------------------------------------------------------------------------
# Fixtures: a pair-score module and its weights as NumPy arrays
# --------------------------------------------------------------------------------------------
def _pair_score(num_heads, dim, hidden=6, seed=0):
    module = models.PairScoreTemperature(num_heads=num_heads, hidden_dim=hidden, bounds=BOUNDS)
    z = jnp.zeros((num_heads, 2, dim))
    params = module.init(jax.random.key(seed), z, z)["params"]
    # Larger weights than the default init, so temperatures spread over the bounds.
    params = jax.tree.map(lambda p: 3.0 * p + 0.1, params)
    phi = params["phi"]
    weights = tuple(np.asarray(a, np.float64) for a in (
        phi["dense_0"]["kernel"], phi["dense_0"]["bias"],
        phi["dense_1"]["kernel"], phi["dense_1"]["bias"]))
    return models.BoundTemperature(module, params), weights


def _random(shape, seed):
    return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float32)


def _value(result):
    return result[0] if isinstance(result, tuple) else result


# --------------------------------------------------------------------------------------------
# The temperature map
# --------------------------------------------------------------------------------------------
def test_pair_score_grid_and_gathered_equal_per_pair_evaluation():
    fn, weights = _pair_score(num_heads=2, dim=5)
    u, v = _unit(_random((2, 4, 5), 1)), _unit(_random((2, 7, 5), 2))
    grid = np.asarray(fn.pair_grid(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)))
    expected = np.array([[[_tau(weights, u[c, a], v[c, b]) for b in range(7)] for a in range(4)]
                         for c in range(2)])
    np.testing.assert_allclose(grid, expected, rtol=1e-5)
    index = np.array(jax.random.randint(jax.random.key(3), (2, 4, 3), 0, 7))
    gathered = fn.gathered(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), index)
    np.testing.assert_allclose(gathered, np.take_along_axis(expected, index, axis=-1), rtol=1e-5)
    pairs = fn(jnp.asarray(u, jnp.float32), jnp.asarray(v[:, :4], jnp.float32))
    np.testing.assert_allclose(pairs, np.diagonal(expected[:, :, :4], axis1=1, axis2=2),
                               rtol=1e-5)
    # Symmetric in (u, v); a higher score gives a lower temperature, inside the bounds.
    np.testing.assert_allclose(fn.pair_grid(jnp.asarray(v, jnp.float32),
                                            jnp.asarray(u, jnp.float32)),
                               np.swapaxes(expected, 1, 2), rtol=1e-5)
    assert BOUNDS[0] <= grid.min() and grid.max() <= BOUNDS[1]


def test_pair_score_is_one_network_for_all_heads_unless_asked_otherwise():
    z = jnp.zeros((3, 2, 4))
    shared = models.PairScoreTemperature(num_heads=3, hidden_dim=5).init(jax.random.key(0), z, z)
    per_head = models.PairScoreTemperature(num_heads=3, hidden_dim=5, shared=False).init(
        jax.random.key(0), z, z)
    assert shared["params"]["phi"]["dense_0"]["kernel"].shape == (4, 5)
    assert per_head["params"]["phi"]["dense_0"]["kernel"].shape == (3, 4, 5)


# --------------------------------------------------------------------------------------------
# SimCLR: Eq. 2.1 with Eq. 5
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 100])
def test_topk_simclr_loss_and_gradient_match_the_numpy_loop(k):
    fn, weights = _pair_score(num_heads=2, dim=4)
    z_a, z_b = _random((2, 4, 4), 5), _random((2, 4, 4), 6)
    beta, dim = 0.05, 4.0
    loss = _value(losses.amcl_contrastive(z_a, z_b, fn, beta=beta, omega_dim=dim,
                                          negatives="topk", topk=k))
    expected = reference_simclr_topk(weights, z_a, z_b, beta, dim, k)
    np.testing.assert_allclose(loss, expected, rtol=2e-5)

    grad = jax.grad(lambda za: _value(losses.amcl_contrastive(
        za, z_b, fn, beta=beta, omega_dim=dim, negatives="topk", topk=k)))(z_a)
    coords = [(0, 0, 0), (0, 2, 1), (1, 1, 3), (1, 3, 2)]
    numeric = _finite_difference(
        lambda za: reference_simclr_topk(weights, za, z_b, beta, dim, k), z_a, coords)
    np.testing.assert_allclose([grad[c] for c in coords], numeric, rtol=2e-3, atol=1e-4)


def test_topk_accepts_a_plain_temperature_function():
    """Without `gathered` the loss gathers the pairs itself: same value as the module path."""
    fn, weights = _pair_score(num_heads=2, dim=4)
    plain = lambda u, v: fn(u, v)  # Only __call__: the generic path.
    z_a, z_b = _random((2, 5, 4), 7), _random((2, 5, 4), 8)
    kwargs = dict(beta=0.1, omega_dim=4.0, negatives="topk", topk=3)
    np.testing.assert_allclose(_value(losses.amcl_contrastive(z_a, z_b, plain, **kwargs)),
                               _value(losses.amcl_contrastive(z_a, z_b, fn, **kwargs)), rtol=1e-6)
    np.testing.assert_allclose(_value(losses.amcl_contrastive(z_a, z_b, plain, **kwargs)),
                               reference_simclr_topk(weights, z_a, z_b, 0.1, 4.0, 3), rtol=2e-5)


def test_topk_with_k_1_and_beta_0_is_the_hard_max():
    fn, _ = _pair_score(num_heads=3, dim=6)
    z_a, z_b = _random((3, 8, 6), 9), _random((3, 8, 6), 10)
    topk = _value(losses.amcl_contrastive(z_a, z_b, fn, beta=0.0, omega_dim=6.0,
                                          negatives="topk", topk=1))
    hard = _value(losses.amcl_contrastive(z_a, z_b, fn, beta=0.0, omega_dim=6.0, negatives="max"))
    np.testing.assert_allclose(topk, hard, rtol=1e-6)
    # With every negative kept and a constant tau, the negative term is the mean cosine / tau.
    constant = losses.constant_temperature(0.5)
    everything = _value(losses.amcl_contrastive(z_a[:1], z_b[:1], constant, beta=0.0,
                                                omega_dim=6.0, negatives="topk", topk=10_000))
    z = _unit(np.concatenate([z_a[0], z_b[0]]))
    cos = z @ z.T
    n = 8
    per_anchor = [(-cos[i, (i + n) % (2 * n)]
                   + np.mean([cos[i, j] for j in range(2 * n) if j not in (i, (i + n) % (2 * n))]))
                  / 0.5 for i in range(2 * n)]
    np.testing.assert_allclose(everything, np.mean(per_anchor), rtol=1e-5)


def test_topk_chooses_without_gradient_and_rejects_bad_k():
    fn, _ = _pair_score(num_heads=1, dim=3)
    z_a, z_b = _random((1, 3, 3), 11), _random((1, 3, 3), 12)
    with pytest.raises(ValueError, match="topk"):
        losses.amcl_contrastive(z_a, z_b, fn, beta=0.1, omega_dim=3.0, negatives="topk", topk=0)
    grad = jax.grad(lambda za: _value(losses.amcl_contrastive(
        za, z_b, fn, beta=0.1, omega_dim=3.0, negatives="topk", topk=2)))(z_a)
    assert np.all(np.isfinite(grad))


def test_the_temperature_network_gets_its_gradient_through_both_sides():
    fn, _ = _pair_score(num_heads=2, dim=4)
    z_a, z_b = _random((2, 6, 4), 13), _random((2, 6, 4), 14)

    def loss(params):
        bound = models.BoundTemperature(fn.module, params)
        return _value(losses.amcl_contrastive(z_a, z_b, bound, beta=1e-4, omega_dim=4.0,
                                              negatives="topk", topk=3))

    grads = jax.grad(loss)(fn.params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------------------------
# MoCo: both directions against the queue
# --------------------------------------------------------------------------------------------
def test_queue_topk_loss_and_query_gradient_match_the_numpy_loop():
    fn, weights = _pair_score(num_heads=2, dim=4)
    q, k, queue = _random((2, 3, 4), 15), _random((2, 3, 4), 16), _random((2, 9, 4), 17)
    beta, dim, topk = 0.05, 4.0, 4
    call = lambda q, k, queue: _value(losses.amcl_queue_contrastive(
        q, k, queue, fn, beta=beta, omega_dim=dim, negatives="topk", topk=topk))
    np.testing.assert_allclose(call(q, k, queue),
                               reference_moco_topk(weights, q, k, queue, beta, dim, topk),
                               rtol=2e-5)
    grad_q, grad_k, grad_queue = jax.grad(call, argnums=(0, 1, 2))(q, k, queue)
    coords = [(0, 0, 0), (1, 2, 3), (0, 1, 2)]
    numeric = _finite_difference(
        lambda x: reference_moco_topk(weights, x, k, queue, beta, dim, topk), q, coords)
    np.testing.assert_allclose([grad_q[c] for c in coords], numeric, rtol=2e-3, atol=1e-4)
    # Keys and queue carry no gradient.
    assert not np.any(grad_k) and not np.any(grad_queue)


def test_queue_directions_and_their_defaults():
    fn, _ = _pair_score(num_heads=1, dim=4)
    q, k, queue = _random((1, 4, 4), 18), _random((1, 4, 4), 19), _random((1, 12, 4), 20)
    kwargs = dict(beta=0.1, omega_dim=4.0, negatives="topk", topk=5)
    both = _value(losses.amcl_queue_contrastive(q, k, queue, fn, **kwargs))
    forward = _value(losses.amcl_queue_contrastive(q, k, queue, fn, directions="query", **kwargs))
    backward = _value(losses.amcl_queue_contrastive(k, q, queue, fn, directions="query",
                                                    **kwargs))
    np.testing.assert_allclose(both, 0.5 * (forward + backward), rtol=1e-6)
    # The project's forms keep one direction unless asked.
    lse = _value(losses.amcl_queue_contrastive(q, k, queue, fn, beta=0.0, omega_dim=4.0,
                                               negatives="logsumexp"))
    lse_one = _value(losses.amcl_queue_contrastive(q, k, queue, fn, beta=0.0, omega_dim=4.0,
                                                   negatives="logsumexp", directions="query"))
    assert lse == lse_one
    with pytest.raises(ValueError, match="directions"):
        losses.amcl_queue_contrastive(q, k, queue, fn, directions="both", **kwargs)


# --------------------------------------------------------------------------------------------
# SimSiam and Barlow Twins
# --------------------------------------------------------------------------------------------
def test_simsiam_with_the_pair_score_map_matches_the_numpy_loop():
    fn, weights = _pair_score(num_heads=2, dim=5)
    p_a, p_b, z_a, z_b = (_random((2, 4, 5), seed) for seed in (21, 22, 23, 24))
    loss = _value(losses.amcl_simsiam(p_a, p_b, z_a, z_b, fn, beta=1e-2, omega_dim=5.0))
    np.testing.assert_allclose(loss, reference_simsiam(weights, p_a, p_b, z_a, z_b, 1e-2, 5.0),
                               rtol=2e-5)


def _channel_map(num_heads, batch, hidden=5):
    module = models.ChannelTemperatures(num_heads=num_heads, batch_size=batch, hidden_dim=hidden)
    params = module.init(jax.random.key(0), jnp.zeros((num_heads, 2, 3)),
                         jnp.zeros((num_heads, 2, 3)))["params"]
    params = jax.tree.map(lambda p: 2.0 * p + 0.05, params)
    weights = tuple(np.asarray(params[name], np.float64) for name in (
        "dense_0_kernel", "dense_0_bias", "dense_1_kernel", "dense_1_bias"))
    return module, params, weights


def test_channel_map_temperatures_match_the_numpy_loop():
    module, params, weights = _channel_map(num_heads=2, batch=6)
    z_a, z_b = _random((2, 6, 4), 25), _random((2, 6, 4), 26)
    tau_diag, tau_off = module.apply({"params": params}, z_a, z_b)
    expected = reference_channel_temperatures(weights, z_a, z_b)
    np.testing.assert_allclose(tau_off, expected, rtol=1e-5)
    np.testing.assert_allclose(tau_diag, np.diagonal(expected, axis1=1, axis2=2), rtol=1e-5)
    # phi's size is the batch: another batch size is refused with the field named.
    with pytest.raises(ValueError, match="batch_size=6"):
        module.apply({"params": params}, z_a[:, :4], z_b[:, :4])


def test_barlow_twins_with_the_channel_map_matches_the_numpy_loop():
    module, params, weights = _channel_map(num_heads=2, batch=8)
    z_a, z_b = _random((2, 8, 4), 27), _random((2, 8, 4), 28)
    tau_diag, tau_off = module.apply({"params": params}, z_a, z_b)
    loss = _value(losses.amcl_barlow_twins(z_a, z_b, tau_diag, tau_off, off_diagonal_weight=5e-3,
                                           beta=1e-2, omega_dim=4.0))
    expected = reference_barlow_twins(z_a, z_b, reference_channel_temperatures(weights, z_a, z_b),
                                      5e-3, 1e-2, 4.0)
    np.testing.assert_allclose(loss, expected, rtol=2e-5)

    def through_the_map(za):
        diag, off = module.apply({"params": params}, za, z_b)
        return _value(losses.amcl_barlow_twins(za, z_b, diag, off, off_diagonal_weight=5e-3,
                                               beta=1e-2, omega_dim=4.0))

    grad = jax.grad(through_the_map)(z_a)
    coords = [(0, 0, 0), (1, 5, 2), (0, 7, 3)]
    numeric = _finite_difference(lambda za: reference_barlow_twins(
        za, z_b, reference_channel_temperatures(weights, za, z_b), 5e-3, 1e-2, 4.0),
        z_a, coords)
    np.testing.assert_allclose([grad[c] for c in coords], numeric, rtol=2e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Forms, config and optimizer
# --------------------------------------------------------------------------------------------
def _resolved(config, field):
    """`field` as a run resolves it."""
    return get_field(forms.resolve(config), field)


def test_each_form_fills_its_settings_and_each_field_overrides_it_alone():
    config = get_default_config()
    assert forms.form(config) == "project"  # The default, by measurement (docs/amcl.md).
    assert _resolved(config, "amcl.negatives") == "logsumexp"
    assert _resolved(config, "amcl.temperature_net") == "concat_mlp"
    config.amcl.form = "authors"
    assert _resolved(config, "amcl.negatives") == "topk"
    assert _resolved(config, "amcl.temperature_net") == "pair_score"
    assert _resolved(config, "amcl.beta") == 1e-4
    assert _resolved(config, "amcl.omega_dim") == config.projector.out_dim
    assert _resolved(config, "optimizer.grad_clip_norm") == 1.0
    config.method = "barlow_twins"
    assert _resolved(config, "amcl.beta") == 1e-6
    assert _resolved(config, "barlow_twins.temperatures") == "channel_map"
    config.amcl.form = "project"
    assert _resolved(config, "amcl.beta") == 0.1
    assert _resolved(config, "amcl.temperature_bounds") == (0.5, 2.0)
    assert _resolved(config, "amcl.omega_dim") == 1
    assert _resolved(config, "optimizer.grad_clip_norm") == 0.0
    config.amcl.beta = 0.3  # One field set: the rest of the form stays.
    assert _resolved(config, "amcl.beta") == 0.3
    assert _resolved(config, "amcl.negatives") == "logsumexp"
    config.amcl.enabled = False  # Baselines are not clipped unless asked.
    config.amcl.form = "authors"
    assert _resolved(config, "optimizer.grad_clip_norm") == 0.0


def test_an_old_workdir_config_resolves_to_what_it_ran():
    """config.json files written before the forms hold explicit values and no amcl.form."""
    config = get_default_config()
    del config.amcl["form"]
    config.method = "barlow_twins"
    config.amcl.omega_dim = -1  # The old spelling of "Omega's K by the method's rule".
    assert _resolved(config, "amcl.omega_dim") == 1
    assert forms.form(config) == "project"


@pytest.mark.parametrize("field,value,match", [
    ("amcl.form", "paper", "amcl.form"),
    ("amcl.negatives", "softmax", "amcl.negatives"),
    ("amcl.temperature_net", "mlp", "amcl.temperature_net"),
    ("amcl.topk", 0, "amcl.topk"),
    ("amcl.beta", -1.0, "amcl.beta"),
    ("optimizer.grad_clip_norm", -1.0, "optimizer.grad_clip_norm"),
    ("barlow_twins.temperatures", "free", "barlow_twins.temperatures"),
    ("moco.directions", "both", "moco.directions"),
])
def test_form_fields_are_validated_by_name(field, value, match):
    config = get_default_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_moco_queue_needs_only_the_keys_of_one_view_in_the_authors_form():
    config = get_default_config()
    config.amcl.form = "authors"
    config.method = "moco"
    config.batch_size = 64
    config.moco.queue_size = 64
    validate_config(config)
    config.amcl.form = "project"
    with pytest.raises(ConfigError, match="moco.queue_size"):
        validate_config(config)


def test_clipping_scales_the_loss_gradient_before_weight_decay():
    config = get_default_config()
    config.amcl.form = "authors"  # Clipping at 1.0 comes with it.
    config.optimizer.learning_rate = 1.0
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.5
    config.optimizer.schedule = "constant"
    params = {"w": jnp.full((4,), 2.0)}
    grads = {"w": jnp.full((4,), 3.0)}  # Norm 6: clipped to 1.
    tx, _ = optim.build_optimizer(forms.resolve(config), total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -(3.0 / 6.0 + 0.5 * 2.0), rtol=1e-6)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(0.5),
                            optax.sgd(1.0))
    expected, _ = reference.update(grads, reference.init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
    config.optimizer.grad_clip_norm = 0.0
    tx, _ = optim.build_optimizer(config, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -(3.0 + 0.5 * 2.0), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Methods in the authors' form: a step's loss through the real model
# --------------------------------------------------------------------------------------------
AMCL_METHODS = [method.name for method in methods.registered() if method.supports_amcl]


def _tiny(method, **overrides):
    return tiny_config(**{"method": method, "amcl.form": "authors", "model.width": 0.0625,
                          "predictor.hidden_dim": 8, "moco.queue_size": 16, **overrides})


def _loss_and_grads(config):
    """One step's loss through the real model: (initial variables, loss, output, gradient)."""
    validate_config(config)
    config = forms.resolve(config)
    impl = methods.get_method(config.method)
    model = impl.build_model(config)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)), train=False)
    extra = impl.init_extra(config, variables, jax.random.key(1))
    views = jax.random.normal(jax.random.key(2), (2, 8, 8, 8, 3))

    def loss_fn(params):
        out = impl.apply_loss(model, config, params, variables["batch_stats"], extra, views,
                              jax.random.key(3))
        return out.loss, out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return variables, loss, out, grads


@pytest.mark.parametrize("method", AMCL_METHODS)
def test_every_method_computes_a_finite_loss_in_the_authors_form(method):
    _, loss, out, grads = _loss_and_grads(_tiny(method))
    assert np.isfinite(loss)
    temperature_grads = jax.tree.leaves(grads["temperature_net"])
    assert temperature_grads and all(np.all(np.isfinite(g)) for g in temperature_grads)
    assert np.all(np.asarray(out.metrics["tau_pos_min"]) >= BOUNDS[0])
    if method == "moco":  # The authors' MoCo enqueues the N keys of the second view.
        assert int(out.extra["queue_ptr"]) == 8


def test_each_recipe_names_the_form_measured_best_for_its_method():
    """docs/amcl.md: the project's form by default; MoCo's recipe takes the authors' form."""
    from amcl_jax import recipes

    for method in AMCL_METHODS:
        config = recipes.method_config(method, True)
        validate_config(config)
        assert forms.form(config) == ("authors" if method == "moco" else "project"), method


@pytest.mark.parametrize("method", AMCL_METHODS)
def test_a_baseline_is_the_same_run_in_either_form(method):
    """With AMCL off, amcl.form changes nothing: same parameters, loss, gradient, extra state and
    optimizer update (so a baseline run resumes under either spelling of the form)."""
    results = []
    for form in forms.FORMS:
        config = _tiny(method, **{"amcl.enabled": False, "amcl.form": form})
        variables, loss, out, grads = _loss_and_grads(config)
        grads = jax.tree.map(lambda g: g * 1e3, grads)  # Large enough that clipping would show.
        tx, _ = optim.build_optimizer(forms.resolve(config), total_steps=10)
        updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
        results.append((variables["params"], loss, grads, out.extra, updates))
    assert "temperature_net" not in results[0][0]
    for left, right in zip(results[0], results[1], strict=True):
        jax.tree.map(np.testing.assert_array_equal, left, right)
