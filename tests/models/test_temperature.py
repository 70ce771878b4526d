"""amcl_jax.models.temperature: the temperature network (`TemperatureNet`) and its bound form
(`BoundTemperature`): shapes, bounds, the pair grid and its hand-written gradient, a NumPy
reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from amcl_jax.models import BoundTemperature, TemperatureNet

C, M, D, HIDDEN = 3, 5, 4, 8


def _uv(key=0, rows_u=M, rows_v=M):
    ku, kv = jax.random.split(jax.random.key(key))
    return (jax.random.normal(ku, (C, rows_u, D)), jax.random.normal(kv, (C, rows_v, D)))


def _temperature(shared=False, bounds=(1e-5, 2.0)):
    net = TemperatureNet(num_heads=C, hidden_dim=HIDDEN, bounds=bounds, shared=shared)
    u, v = _uv()
    return net, jax.jit(net.init)(jax.random.key(2), u, v)["params"]


@pytest.mark.parametrize("shared", [False, True])
def test_temperature_shape_bounds_and_pair_grid(shared):
    net, params = _temperature(shared, bounds=(0.05, 1.0))
    u, v = _uv(3, rows_u=4, rows_v=6)

    @jax.jit
    def evaluate(temperature, u, v):
        # Every (a, b) pair through __call__: rows of u repeated, rows of v tiled.
        pairs = temperature(jnp.repeat(u, 6, axis=1), jnp.tile(v, (1, 4, 1)))
        return temperature(u, v[:, :4]), temperature.pair_grid(u, v), pairs

    tau, grid, pairs = evaluate(BoundTemperature(net, params), u, v)
    assert tau.shape == (C, 4)
    assert tau.dtype == jnp.float32
    assert np.all(tau > 0.05) and np.all(tau < 1.0)
    assert grid.shape == (C, 4, 6)
    np.testing.assert_allclose(grid, pairs.reshape(C, 4, 6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_pair_grid_gradient_equals_autodiff_of_the_per_pair_network(shared):
    """pair_grid's hand-written gradient (relu_pair_logits) = plain autodiff through __call__ on
    every (a, b) pair, for the params and both inputs."""
    net, params = _temperature(shared)
    u, v = _uv(7, rows_u=4, rows_v=6)
    weights = jax.random.normal(jax.random.key(8), (C, 4, 6))

    def via_grid(params, u, v):
        return jnp.sum(weights * jnp.log(BoundTemperature(net, params).pair_grid(u, v)))

    def via_pairs(params, u, v):
        tau = BoundTemperature(net, params)(jnp.repeat(u, 6, axis=1), jnp.tile(v, (1, 4, 1)))
        return jnp.sum(weights * jnp.log(tau.reshape(C, 4, 6)))

    got = jax.jit(jax.grad(via_grid, argnums=(0, 1, 2)))(params, u, v)
    want = jax.jit(jax.grad(via_pairs, argnums=(0, 1, 2)))(params, u, v)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-4, atol=1e-6)


def test_temperature_param_shapes_shared_vs_per_head():
    _, per_head = _temperature(shared=False)
    _, shared = _temperature(shared=True)
    assert per_head["mlp"]["first"]["kernel"].shape == (C, 2 * D, HIDDEN)
    assert per_head["mlp"]["out"]["kernel"].shape == (C, HIDDEN, 1)
    assert shared["mlp"]["first"]["kernel"].shape == (2 * D, HIDDEN)
    assert shared["mlp"]["out"]["kernel"].shape == (HIDDEN, 1)
    first = per_head["mlp"]["first"]["kernel"]
    assert not np.allclose(first[0], first[1])


@pytest.mark.parametrize("shared", [False, True])
def test_temperature_matches_numpy_reference(shared):
    net, params = _temperature(shared)
    u, v = _uv(4)
    tau = jax.jit(net.apply)({"params": params}, u, v)
    p = jax.tree.map(np.asarray, params["mlp"])
    for c in range(C):
        pick = (lambda x: x) if shared else (lambda x, c=c: x[c])
        w1, b1 = pick(p["first"]["kernel"]), pick(p["first"]["bias"])
        w2, b2 = pick(p["out"]["kernel"]), pick(p["out"]["bias"])
        pair = np.concatenate([np.asarray(u[c]), np.asarray(v[c])], axis=-1)  # (M, 2D)
        logits = (np.maximum(pair @ w1 + b1, 0) @ w2 + b2)[:, 0]
        expected = 1e-5 + (2.0 - 1e-5) / (1 + np.exp(-logits))
        np.testing.assert_allclose(tau[c], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_temperature_saturated_gradient_is_finite(scale):
    net, params = _temperature()
    params["mlp"]["out"]["kernel"] = jnp.full_like(params["mlp"]["out"]["kernel"], scale)
    params["mlp"]["first"]["bias"] = jnp.full_like(params["mlp"]["first"]["bias"], 10.0)
    u, v = _uv(5)

    def loss(params, u, v):
        tau = BoundTemperature(net, params)(u, v)
        return jnp.sum(1.0 / tau + jnp.log(tau)) + jnp.sum(
            BoundTemperature(net, params).pair_grid(u, v))

    tau = jax.jit(net.apply)({"params": params}, u, v)
    np.testing.assert_allclose(tau, 2.0 if scale > 0 else 1e-5, rtol=1e-4)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, u, v)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))


def test_temperature_rejects_bad_bounds_and_shapes():
    u, v = _uv()
    for bounds in [(0.0, 1.0), (1.0, 0.5), (-1.0, 1.0)]:
        with pytest.raises(ValueError, match="temperature_bounds"):
            jax.eval_shape(TemperatureNet(num_heads=C, bounds=bounds).init, jax.random.key(0),
                           u, v)
    with pytest.raises(ValueError, match="C=3"):
        jax.eval_shape(TemperatureNet(num_heads=C).init, jax.random.key(0), u[:2], v[:2])


def test_bound_temperature_under_lax_map_checkpoint_and_jit():
    net, params = _temperature()
    u, v = _uv(6, rows_u=4, rows_v=6)

    @jax.jit
    def chunked_grid(temperature, u, v):
        chunks = u.reshape(C, 2, 2, D).transpose(1, 0, 2, 3)  # two chunks of 2 rows
        out = lax.map(jax.checkpoint(lambda chunk: temperature.pair_grid(chunk, v)), chunks)
        return out.transpose(1, 0, 2, 3).reshape(C, 4, 6)

    temperature = BoundTemperature(net, params)
    whole_grid = jax.jit(lambda temperature, u, v: temperature.pair_grid(u, v))
    np.testing.assert_allclose(chunked_grid(temperature, u, v), whole_grid(temperature, u, v),
                               rtol=1e-5, atol=1e-6)
