"""Test helpers shared by test_losses.py and test_methods.py: a small per-head temperature MLP
and float64 NumPy references of its pieces (test modules import these, never each other)."""

import jax
import jax.numpy as jnp
import numpy as np

TAU_LOWER, TAU_UPPER = 0.1, 1.0
HIDDEN = 5


# ---------------------------------------------------------------------------------------------
# A small per-head temperature MLP: tau = lower + (upper - lower) * sigmoid(MLP([u; v])).
# ---------------------------------------------------------------------------------------------
def make_mlp_params(key, num_heads, dim, hidden=HIDDEN):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "w1": jax.random.normal(k1, (num_heads, 2 * dim, hidden)) / np.sqrt(2 * dim),
        "b1": 0.1 * jax.random.normal(k2, (num_heads, hidden)),
        "w2": jax.random.normal(k3, (num_heads, hidden)),
        "b2": 0.1 * jax.random.normal(k4, (num_heads,)),
    }


def _bounded(out):
    return TAU_LOWER + (TAU_UPPER - TAU_LOWER) * jax.nn.sigmoid(out)


class MLPTemperature:
    """temperature_fn with pair_grid (first layer split into the u and v halves)."""

    def __init__(self, params):
        self.params = params

    def __call__(self, u, v):
        p = self.params
        pair = jnp.concatenate([u, v], axis=-1)  # (C, M, 2D)
        hidden = jax.nn.relu(jnp.einsum("cme,ceh->cmh", pair, p["w1"]) + p["b1"][:, None])
        return _bounded(jnp.einsum("cmh,ch->cm", hidden, p["w2"]) + p["b2"][:, None])

    def pair_grid(self, u, v):
        p = self.params
        dim = u.shape[-1]
        from_u = jnp.einsum("cad,cdh->cah", u, p["w1"][:, :dim])
        from_v = jnp.einsum("cbd,cdh->cbh", v, p["w1"][:, dim:])
        hidden = jax.nn.relu(from_u[:, :, None] + from_v[:, None] + p["b1"][:, None, None])
        return _bounded(jnp.einsum("cabh,ch->cab", hidden, p["w2"]) + p["b2"][:, None, None])


class MLPTemperatureNoGrid:
    """The same temperature function without pair_grid (forces the tiled fallback)."""

    def __init__(self, params):
        self.mlp = MLPTemperature(params)

    def __call__(self, u, v):
        return self.mlp(u, v)


# ---------------------------------------------------------------------------------------------
# Float64 NumPy loop references.
# ---------------------------------------------------------------------------------------------
def np_params(params):
    return {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}


def np_unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x)


def np_tau(params, head, u, v):
    pair = np.concatenate([u, v])
    hidden = np.maximum(pair @ params["w1"][head] + params["b1"][head], 0.0)
    out = hidden @ params["w2"][head] + params["b2"][head]
    return TAU_LOWER + (TAU_UPPER - TAU_LOWER) / (1.0 + np.exp(-out))


def np_omega(tau, dim):
    return dim / 2.0 * np.log(tau) + 1.0 / tau
