"""AMCL's temperature networks (the C projection heads are `projector.MultiHeadMLP`).

- `TemperatureNet` (the project's form): maps a pair of head features (u, v) to a bounded
  temperature tau = lower + (upper - lower) * sigmoid(MLP([u; v])), the MLP being 2D -> hidden
  -> 1 with its first layer split (W [u; v] = W_u u + W_v v) so a pair grid never builds an
  (A, B, 2D) tensor.
  One MLP per head (the released code) or one shared by all heads (the paper's figure).
- `PairScoreTemperature`: the authors' Eq. 3 map, tau = lower + (upper - lower)
  sigmoid(-<phi(u), phi(v)>) with phi an MLP D -> hidden -> D on each feature, shared by heads.
- `BoundTemperature`: params bound to a temperature module as a pure function, the
  `temperature_fn` the losses take.
- `ChannelTemperatures` (the authors' form): the temperatures of AMCL-Barlow Twins (Eq. 2.3) from
  the Eq. 3 pair-score map on the channel vectors (each feature's values over the global batch).
- `CrossCorrelationTemperatures` (the project's form): the temperatures of AMCL-Barlow Twins, one
  learned logit for each diagonal and (low-rank) each off-diagonal entry of each head's d' x d'
  cross-correlation.

Why the project's form learns per-entry logits, factorised: the cross-correlation is a statistic of
the whole batch, so there is no per-sample pair for the temperature MLP of Eqs. 2.1/2.2 to look at;
a temperature can only depend on which entry (l, m) it scales. The diagonal gets one free logit per
feature (C x d'). Free off-diagonal logits would be C x d'^2 parameters (12.6 M for 3 heads of
2048, more than ResNet-18), so they are low-rank: logit_lm = <a_l, b_m> + bias with a, b (d', r),
rank r (`barlow_twins.temperature_rank`, 16): O(C d' r) parameters, and the (C, d', d') temperature
grid is O(d'^2) memory, the same as the cross-correlation it scales. a and b are separate because C
is not symmetric (view a's feature l against view b's feature m). Bounded like the other
temperatures: tau = lower + (upper - lower) * sigmoid(logit), float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class _SplitFirstLayer(nn.Module):
    """First temperature-MLP layer on [u; v] with its kernel (2D, hidden) split into W_u, W_v.

    The kernel is initialised as one Dense on the concatenation (lecun-normal, fan-in 2D).
    `grid=False`: u, v (..., M, D) -> W_u u + W_v v + b: (..., M, hidden).
    `grid=True`:  u (..., A, D), v (..., B, D) -> (W_u u + b, W_v v), (..., A, hidden) and
    (..., B, hidden): the two halves of every (row of u, row of v) pair's pre-activation.
    """

    hidden_dim: int

    @nn.compact
    def __call__(self, u: jax.Array, v: jax.Array, grid: bool
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        dim = u.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2 * dim, self.hidden_dim),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.hidden_dim,), jnp.float32)
        hu = u @ kernel[:dim] + bias
        hv = v @ kernel[dim:]
        if grid:
            return hu, hv
        return hu + hv


@jax.custom_vjp
def relu_pair_logits(hu: jax.Array, hv: jax.Array, w: jax.Array) -> jax.Array:
    """sum_h w[h] relu(hu[..., a, h] + hv[..., b, h]): hu (..., A, H), hv (..., B, H), w (H,).

    Returns (..., A, B). The temperature MLP's hidden layer and read-out over a grid of pairs,
    with a hand-written gradient: autodiff of the same expression reduces (A, B, H) tensors over
    their outer axis; the two fused masked reductions of the backward pass make the AMCL
    log-sum-exp loss + gradient 2.75x faster on CPU at 512 views (`bench/loss_speed.py`), at a
    slightly lower peak memory.
    """
    return jnp.einsum("...abh,h->...ab", nn.relu(hu[..., :, None, :] + hv[..., None, :, :]), w)


def _relu_pair_logits_fwd(hu, hv, w):
    return relu_pair_logits(hu, hv, w), (hu, hv, w)


def _relu_pair_logits_bwd(residuals, g):
    hu, hv, w = residuals
    # With m_abh = [hu_ah + hv_bh > 0]: s_ah = sum_b m g_ab, t_bh = sum_a m g_ab, and then
    # d/dhu = w s, d/dhv = w t, d/dw = sum_a hu s + sum_b hv t (as relu(x) = m x). Each sum is one
    # reduction over a middle axis with H innermost, which XLA fuses with the mask: no (A, B, H)
    # tensor is stored (the t side builds the grid as (B, A, H)).
    s = jnp.sum(jnp.where(hu[..., :, None, :] + hv[..., None, :, :] > 0, g[..., None], 0),
                axis=-2)
    t = jnp.sum(jnp.where(hv[..., :, None, :] + hu[..., None, :, :] > 0,
                          jnp.swapaxes(g, -1, -2)[..., None], 0), axis=-2)
    batch_axes = tuple(range(hu.ndim - 1))
    g_w = jnp.sum(hu * s, axis=batch_axes) + jnp.sum(hv * t, axis=batch_axes)
    return s * w, t * w, g_w


relu_pair_logits.defvjp(_relu_pair_logits_fwd, _relu_pair_logits_bwd)


class _Readout(nn.Module):
    """The MLP's last layer, hidden -> 1: the params of `nn.Dense(1)` (same names, shapes and
    initialisers, so the same values), applied per pair or over a grid of pairs."""

    hidden_dim: int

    def setup(self) -> None:
        self.kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.hidden_dim, 1),
                                 jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros_init(), (1,), jnp.float32)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """hidden (..., H) -> (...)."""
        return (hidden @ self.kernel)[..., 0] + self.bias[0]

    def grid(self, hu: jax.Array, hv: jax.Array) -> jax.Array:
        """hu (..., A, H), hv (..., B, H) -> read-out of relu(hu_a + hv_b): (..., A, B)."""
        return relu_pair_logits(hu, hv, self.kernel[:, 0]) + self.bias[0]


class _TemperatureMLP(nn.Module):
    """Pre-sigmoid temperature logits; works on any leading batch dims (float32 in and out)."""

    hidden_dim: int

    def setup(self) -> None:
        self.first = _SplitFirstLayer(self.hidden_dim)
        self.out = _Readout(self.hidden_dim)

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u, v: (..., M, D) -> (..., M)."""
        return self.out(nn.relu(self.first(u, v, grid=False)))

    def pair_grid(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u: (..., A, D), v: (..., B, D) -> (..., A, B)."""
        return self.out.grid(*self.first(u, v, grid=True))


class TemperatureNet(nn.Module):
    """Bounded per-pair temperatures from a pair of head features.

    tau = lower + (upper - lower) * sigmoid(w2 . relu(W_u u + W_v v + b1) + b2), all in float32.

    Attributes:
      num_heads: C (the leading axis of u and v).
      hidden_dim: hidden width of the MLP.
      bounds: (lower, upper), 0 < lower < upper.
      shared: True: one MLP for all heads (params without a head axis); False: one MLP per head
        (`nn.vmap` over axis 0 of u and v, every param leaf is (C, ...)).

    `__call__(u, v)`: u, v (C, M, D) -> (C, M): tau for each pair (u[c, m], v[c, m]).
    `pair_grid(u, v)`: u (C, A, D), v (C, B, D) -> (C, A, B): tau for (u[c, a], v[c, b]).
    It builds a (C, A, B, hidden) activation, so the caller chunks A.
    """

    num_heads: int = 3
    hidden_dim: int = 128
    bounds: tuple[float, float] = (1e-5, 2.0)
    shared: bool = False

    def setup(self) -> None:
        lower, upper = self.bounds
        if not 0 < lower < upper:
            raise ValueError(
                f"amcl.temperature_bounds must satisfy 0 < lower < upper, got {self.bounds}")
        if self.shared:
            self.mlp = _TemperatureMLP(self.hidden_dim)
        else:
            self.mlp = nn.vmap(
                _TemperatureMLP,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=0,
                out_axes=0,
                axis_size=self.num_heads,
                methods=["__call__", "pair_grid"],
            )(self.hidden_dim)

    def _to_tau(self, logits: jax.Array) -> jax.Array:
        lower, upper = self.bounds
        return lower + (upper - lower) * jax.nn.sigmoid(logits)

    def _check(self, u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        if u.ndim != 3 or v.ndim != 3 or not u.shape[0] == v.shape[0] == self.num_heads:
            raise ValueError(
                f"TemperatureNet expects u, v of shape (C={self.num_heads}, M, D), got "
                f"{u.shape} and {v.shape}")
        return u.astype(jnp.float32), v.astype(jnp.float32)

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u, v: (C, M, D) -> tau (C, M) float32."""
        u, v = self._check(u, v)
        return self._to_tau(self.mlp(u, v))

    def pair_grid(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u: (C, A, D), v: (C, B, D) -> tau (C, A, B) float32."""
        u, v = self._check(u, v)
        return self._to_tau(self.mlp.pair_grid(u, v))


class _Phi(nn.Module):
    """Eq. 3's feature map: Dense(hidden) - ReLU - Dense(D), float32. (..., D) -> (..., D)."""

    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = nn.relu(nn.Dense(self.hidden_dim, name="dense_0")(x))
        return nn.Dense(x.shape[-1], name="dense_1")(hidden)


def bounded_temperature(score: jax.Array, bounds: tuple[float, float]) -> jax.Array:
    """Eq. 3's map from a pair score to a temperature: lower + (upper - lower) sigmoid(-score).

    A higher score (phi features more aligned) gives a lower temperature. float32.
    """
    lower, upper = bounds
    if not 0 < lower < upper:
        raise ValueError(
            f"amcl.temperature_bounds must satisfy 0 < lower < upper, got {tuple(bounds)}")
    return lower + (upper - lower) * jax.nn.sigmoid(-score.astype(jnp.float32))


class PairScoreTemperature(nn.Module):
    """The authors' temperature map (the paper's Eq. 3, their v2.0 code).

    phi is an MLP D -> hidden -> D (Dense, ReLU, Dense) applied to each L2-normalised head
    feature on its own; a pair (u, v) scores r = <phi(u), phi(v)> and gets
    tau = lower + (upper - lower) * sigmoid(-r), symmetric in (u, v). Because the score is a dot
    product of per-feature embeddings, a grid of pairs is one matmul of phi features: no
    (A, B, hidden) or (A, B, 2D) tensor is ever built.

    Attributes:
      num_heads: C (the leading axis of u and v).
      hidden_dim: phi's hidden width (128 in the authors' commands).
      bounds: (lower, upper), 0 < lower < upper.
      shared: True (the authors'): one phi for every head; False: one per head (`nn.vmap` over
        the head axis, every param leaf (C, ...)).

    `features(x)`: x (C, M, D) -> phi(x) (C, M, D) float32.
    `__call__(u, v)`: u, v (C, M, D) -> tau (C, M) of the pairs (u[c, m], v[c, m]).
    `pair_grid(u, v)`: u (C, A, D), v (C, B, D) -> tau (C, A, B).
    `gathered(u, v, index)`: index (C, A, k) int -> tau (C, A, k) of the pairs
      (u[c, a], v[c, index[c, a, j]]).
    """

    num_heads: int = 3
    hidden_dim: int = 128
    bounds: tuple[float, float] = (1e-5, 2.0)
    shared: bool = True

    def setup(self) -> None:
        if self.shared:
            self.phi = _Phi(self.hidden_dim)
        else:
            self.phi = nn.vmap(_Phi, variable_axes={"params": 0}, split_rngs={"params": True},
                               in_axes=0, out_axes=0, axis_size=self.num_heads)(self.hidden_dim)

    def features(self, x: jax.Array) -> jax.Array:
        """x (C, M, D) -> phi(x) (C, M, D) float32."""
        if x.ndim != 3 or x.shape[0] != self.num_heads:
            raise ValueError(f"PairScoreTemperature expects (C={self.num_heads}, M, D) features, "
                             f"got {x.shape}")
        return self.phi(x.astype(jnp.float32))

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u, v: (C, M, D) -> tau (C, M) float32."""
        score = jnp.sum(self.features(u) * self.features(v), axis=-1)
        return bounded_temperature(score, self.bounds)

    def pair_grid(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u: (C, A, D), v: (C, B, D) -> tau (C, A, B) float32: one matmul of phi features."""
        score = jnp.einsum("cad,cbd->cab", self.features(u), self.features(v))
        return bounded_temperature(score, self.bounds)

    def gathered(self, u: jax.Array, v: jax.Array, index: jax.Array) -> jax.Array:
        """u (C, A, D), v (C, B, D), index (C, A, k) -> tau (C, A, k) float32.

        The k scores per row are taken from the (C, A, B) score matmul: it is the size of the
        cosine grid the caller ranked to choose `index`, and on accelerators one dense matmul
        beats gathering (C, A, k, D) features; sigmoid and bounds run on the k chosen only.
        """
        score = jnp.einsum("cad,cbd->cab", self.features(u), self.features(v))
        return bounded_temperature(jnp.take_along_axis(score, index, axis=-1), self.bounds)


@jax.tree_util.register_pytree_node_class
class BoundTemperature:
    """A temperature module (`TemperatureNet`, `PairScoreTemperature`) with its params, as a pure
    function (the losses' `temperature_fn`).

    Each call is `module.apply({"params": params}, ...)`, so it is safe inside `jax.lax.map`,
    `jax.checkpoint` and `jax.grad` with respect to `params`. It is a pytree (params are the
    leaves), so it can also be passed through `jax.jit` as an argument.
    """

    def __init__(self, module: nn.Module, params: Any) -> None:
        self.module = module
        self.params = params

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u, v: (C, M, D) -> tau (C, M) float32."""
        return self.module.apply({"params": self.params}, u, v)

    def pair_grid(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u: (C, A, D), v: (C, B, D) -> tau (C, A, B) float32."""
        return self.module.apply({"params": self.params}, u, v, method="pair_grid")

    @property
    def gathered(self) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None:
        """`gathered(u, v, index)` when the module has one (else None: the losses then gather the
        pairs themselves and call the function on them)."""
        if not hasattr(self.module, "gathered"):
            return None
        return lambda u, v, index: self.module.apply({"params": self.params}, u, v, index,
                                                     method="gathered")

    def tree_flatten(self) -> tuple[tuple[Any], nn.Module]:
        return (self.params,), self.module

    @classmethod
    def tree_unflatten(cls, module: nn.Module, children: tuple[Any]) -> BoundTemperature:
        return cls(module, children[0])


class CrossCorrelationTemperatures(nn.Module):
    """Bounded temperatures of every entry of each head's d' x d' cross-correlation.

    Attributes:
      num_heads: C.
      rank: r of the off-diagonal logits <a_l, b_m> + bias.
      bounds: (lower, upper), 0 < lower < upper.

    `__call__(z_a, z_b)`: z_a, z_b (C, N, d') (only their shape is used: the temperatures depend on
    the entry, not on the samples) -> (tau_diag (C, d'), tau_off (C, d', d')) float32; the diagonal
    of tau_off is not used by the loss. At initialisation every logit is about 0 (tau near the
    middle of the bounds).
    """

    num_heads: int = 3
    rank: int = 16
    bounds: tuple[float, float] = (0.5, 2.0)

    @nn.compact
    def __call__(self, z_a: jax.Array, z_b: jax.Array) -> tuple[jax.Array, jax.Array]:
        lower, upper = self.bounds
        if not 0 < lower < upper:
            raise ValueError(
                f"amcl.temperature_bounds must satisfy 0 < lower < upper, got {self.bounds}")
        if z_a.ndim != 3 or z_a.shape[0] != self.num_heads or z_a.shape[-1] != z_b.shape[-1]:
            raise ValueError(f"expected z_a, z_b of shape (C={self.num_heads}, N, d'), got "
                             f"{z_a.shape} and {z_b.shape}")
        dim = z_a.shape[-1]
        heads = self.num_heads
        factor_init = nn.initializers.normal(stddev=0.1 / self.rank ** 0.5)
        diag_logits = self.param("diag_logits", nn.initializers.zeros_init(), (heads, dim),
                                 jnp.float32)
        left = self.param("off_left", factor_init, (heads, dim, self.rank), jnp.float32)
        right = self.param("off_right", factor_init, (heads, dim, self.rank), jnp.float32)
        bias = self.param("off_bias", nn.initializers.zeros_init(), (heads,), jnp.float32)
        off_logits = jnp.einsum("clr,cmr->clm", left, right) + bias[:, None, None]
        to_tau = lambda logits: lower + (upper - lower) * jax.nn.sigmoid(logits)
        return to_tau(diag_logits), to_tau(off_logits)


class ChannelTemperatures(nn.Module):
    """The authors' Barlow Twins temperatures: Eq. 3's pair-score map on channel vectors.

    For head c, x_l = z_a[c, :, l] is channel l of the first view's raw projections over the
    global batch (a vector of length N), y_m likewise for the second view. phi: N -> hidden -> N
    (Dense, ReLU, Dense), one for all heads, maps each channel vector; the entry (l, m) gets
    tau_lm = lower + (upper - lower) * sigmoid(-<phi(x_l), phi(y_m)>). The diagonal gives tau+,
    the rest tau-. phi's input size is the batch, so `batch_size` is fixed (checked).

    Attributes:
      num_heads: C.
      batch_size: N, the global batch (phi's input and output size).
      hidden_dim: phi's hidden width (128 in the authors' commands).
      bounds: (lower, upper), 0 < lower < upper.

    `__call__(z_a, z_b)`: (C, N, D) each -> (tau_diag (C, D), tau_off (C, D, D)) float32; the
    diagonal of tau_off is not used by the loss.
    """

    num_heads: int = 3
    batch_size: int = 512
    hidden_dim: int = 128
    bounds: tuple[float, float] = (1e-5, 2.0)

    @nn.compact
    def __call__(self, z_a: jax.Array, z_b: jax.Array) -> tuple[jax.Array, jax.Array]:
        # phi's params have the batch size in their shapes, so they are declared from the
        # attribute (Dense's initialisers), not from the input: a model initialised on a small
        # dummy batch gets the right ones.
        dense = lambda name, fan_in, fan_out: (
            self.param(f"{name}_kernel", nn.initializers.lecun_normal(), (fan_in, fan_out),
                       jnp.float32),
            self.param(f"{name}_bias", nn.initializers.zeros_init(), (fan_out,), jnp.float32))
        kernel_in, bias_in = dense("dense_0", self.batch_size, self.hidden_dim)
        kernel_out, bias_out = dense("dense_1", self.hidden_dim, self.batch_size)
        expected = (self.num_heads, self.batch_size)
        if z_a.ndim != 3 or z_a.shape[:2] != expected or z_b.shape != z_a.shape:
            if self.is_initializing() and z_a.ndim == 3:  # Params made; nothing to compute.
                dim = z_a.shape[-1]
                return (jnp.ones((self.num_heads, dim), jnp.float32),
                        jnp.ones((self.num_heads, dim, dim), jnp.float32))
            raise ValueError(
                f"the Barlow Twins channel temperature map is built for batch_size="
                f"{self.batch_size} and {self.num_heads} heads: expected z_a, z_b of shape "
                f"(C, N, D) = {expected + (z_a.shape[-1],)}, got {z_a.shape} and {z_b.shape}")

        def phi(z):  # (C, N, D) -> channel vectors (C, D, N) -> (C, D, N)
            channels = jnp.swapaxes(z.astype(jnp.float32), 1, 2)
            return nn.relu(channels @ kernel_in + bias_in) @ kernel_out + bias_out

        score = jnp.einsum("cln,cmn->clm", phi(z_a), phi(z_b))  # (C, D, D)
        tau = bounded_temperature(score, self.bounds)
        return jnp.diagonal(tau, axis1=-2, axis2=-1), tau
