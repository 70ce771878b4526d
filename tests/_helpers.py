"""Test helpers shared by the loss, method, model and authors'-form tests: a small per-head
temperature MLP, the authors' pair-score and channel temperature maps, random inputs, jitted
calls and model initialisation, and float64 NumPy references of their pieces (test modules import
these, never each other)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from amcl_jax import models

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


def np_tau(params, head, u, v):
    pair = np.concatenate([u, v])
    hidden = np.maximum(pair @ params["w1"][head] + params["b1"][head], 0.0)
    out = hidden @ params["w2"][head] + params["b2"][head]
    return TAU_LOWER + (TAU_UPPER - TAU_LOWER) / (1.0 + np.exp(-out))


def np_omega(tau, dim):
    return dim / 2.0 * np.log(tau) + 1.0 / tau


def np_unit(x):
    """x / |x| in float64 along the last axis."""
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The authors' v2.0 form: Eq. 3's pair-score map, one pair at a time in float64.
# ---------------------------------------------------------------------------------------------
PAIR_SCORE_BOUNDS = (1e-5, 2.0)


def np_phi(weights, x):
    """Eq. 3's phi on one vector: Dense - ReLU - Dense."""
    w1, b1, w2, b2 = weights
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def np_pair_tau(weights, u, v, bounds=PAIR_SCORE_BOUNDS):
    """Eq. 3: lower + (upper - lower) sigmoid(-<phi(u), phi(v)>) for one pair."""
    score = float(np_phi(weights, u) @ np_phi(weights, v))
    return bounds[0] + (bounds[1] - bounds[0]) / (1.0 + np.exp(score))


def np_topk_terms(weights, anchor, positive, negatives, beta, dim, k):
    """Eq. 2.1 with Eq. 5 for one anchor: negatives (K, D), the k most similar kept."""
    s_pos = anchor @ positive
    tau_pos = np_pair_tau(weights, anchor, positive)
    cosines = negatives @ anchor
    chosen = np.argsort(-cosines, kind="stable")[:k]
    taus = [np_pair_tau(weights, anchor, negatives[j]) for j in chosen]
    term = -s_pos / tau_pos + np.mean([cosines[j] / t for j, t in zip(chosen, taus, strict=True)])
    return term + beta * np_omega(tau_pos, dim) - beta * sum(np.log(t) + 1.0 / t for t in taus)


def reference_channel_temperatures(weights, z_a, z_b, bounds=PAIR_SCORE_BOUNDS):
    """tau[c, l, m] from the channel vectors z_a[c, :, l], z_b[c, :, m]."""
    heads, _, dim = z_a.shape
    tau = np.zeros((heads, dim, dim))
    for c, row, col in itertools.product(range(heads), range(dim), range(dim)):
        tau[c, row, col] = np_pair_tau(weights, z_a[c, :, row], z_b[c, :, col], bounds)
    return tau


def finite_differences(fn, x, coords, eps=1e-6):
    """Central differences of a float64 scalar function at a few coordinates of x."""
    grads = []
    for coord in coords:
        plus, minus = np.array(x, np.float64), np.array(x, np.float64)
        plus[coord] += eps
        minus[coord] -= eps
        grads.append((fn(plus) - fn(minus)) / (2 * eps))
    return np.array(grads)


# ---------------------------------------------------------------------------------------------
# Inputs, and the authors' temperature maps with their weights as NumPy arrays.
# ---------------------------------------------------------------------------------------------
def random_views(seed, num_heads, n, dim, dtype=jnp.float32):
    """Two (C, N, D) views of one batch, the second a noisy copy of the first."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    z_a = jax.random.normal(k1, (num_heads, n, dim))
    # Correlated second view so positives are closer than negatives on average.
    z_b = z_a + 0.7 * jax.random.normal(k2, (num_heads, n, dim))
    return z_a.astype(dtype), z_b.astype(dtype)


def normals(shape, seed):
    """Standard normal float32 samples of `shape` (a NumPy array)."""
    return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float32)


def scalar(result):
    """The loss of a `(loss, metrics)` result, or the result itself."""
    return result[0] if isinstance(result, tuple) else result


def pair_score_temperature(num_heads, dim, hidden=6, seed=0):
    """Eq. 3's pair-score map as a bound temperature_fn, and its phi weights for `np_pair_tau`."""
    module = models.PairScoreTemperature(num_heads=num_heads, hidden_dim=hidden,
                                         bounds=PAIR_SCORE_BOUNDS)
    z = jnp.zeros((num_heads, 2, dim))
    params = module.init(jax.random.key(seed), z, z)["params"]
    # Larger weights than the default init, so temperatures spread over the bounds.
    params = jax.tree.map(lambda p: 3.0 * p + 0.1, params)
    phi = params["phi"]
    weights = tuple(np.asarray(a, np.float64) for a in (
        phi["dense_0"]["kernel"], phi["dense_0"]["bias"],
        phi["dense_1"]["kernel"], phi["dense_1"]["bias"]))
    return models.BoundTemperature(module, params), weights


def channel_map(num_heads, batch, hidden=5):
    """Barlow Twins' channel-vector map: (module, params, its weights for `np_pair_tau`)."""
    module = models.ChannelTemperatures(num_heads=num_heads, batch_size=batch, hidden_dim=hidden)
    params = module.init(jax.random.key(0), jnp.zeros((num_heads, 2, 3)),
                         jnp.zeros((num_heads, 2, 3)))["params"]
    params = jax.tree.map(lambda p: 2.0 * p + 0.05, params)
    weights = tuple(np.asarray(params[name], np.float64) for name in (
        "dense_0_kernel", "dense_0_bias", "dense_1_kernel", "dense_1_bias"))
    return module, params, weights


# ---------------------------------------------------------------------------------------------
# Jitted calls and model initialisation (one compile beats op-by-op dispatch).
# ---------------------------------------------------------------------------------------------
def jit_call(fn, *args, **kwargs):
    """fn(*args, **kwargs) under one jit (one compile beats op-by-op dispatch); the array
    arguments are traced, the others (temperature functions, floats) closed over."""
    is_array = [isinstance(a, jax.Array) for a in args]
    arrays = [a for a, flag in zip(args, is_array, strict=True) if flag]

    def call(*traced):
        it = iter(traced)
        return fn(*[next(it) if flag else a for a, flag in zip(args, is_array, strict=True)],
                  **kwargs)

    return jax.jit(call)(*arrays)


def randn(seed, *shape):
    """Standard normal float32 samples of `shape` (a JAX array, so `jit_call` traces it)."""
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def jit_init(model, x):
    """Variables of `model` for input `x`; jitted (one compile beats op-by-op dispatch)."""
    return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)


def init_shapes(model, x):
    """The shapes and dtypes of `model`'s variables for input `x` (nothing is computed)."""
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
