"""The C-head MLP of every method, and Barlow Twins' entry temperatures.

- `MultiHeadMLP`: C MLP heads with independent weights and optional BatchNorm (SimCLR's and
  MoCo's projectors without it; the projectors of Barlow Twins, SimSiam and BYOL and the SimSiam /
  BYOL predictors with it, as in the base repository's lightly heads). BatchNorm statistics are
  per head, over the whole batch given (the global batch under jit). Every param and
  batch-stat leaf has a leading head axis.
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

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from amcl_jax.models.heads import bounded_temperature
from amcl_jax.models.norm import make_norm


class _MLPHead(nn.Module):
    """Dense - [BN] - ReLU ... - Dense - [BN]: (B, F) -> (B, out) float32."""

    hidden_dim: int
    out_dim: int
    num_layers: int
    batch_norm: bool
    last_batch_norm: bool
    train: bool
    dtype: Any = jnp.float32
    batch_norm_groups: int = 1
    batch_norm_group_rows: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        make = make_norm(train=self.train, groups=self.batch_norm_groups,
                         group_rows=self.batch_norm_group_rows, dtype=self.dtype)
        norm = lambda name: make(name=name)
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        x = x.astype(jnp.float32)
        for layer in range(self.num_layers - 1):
            x = dense(self.hidden_dim, use_bias=not self.batch_norm, name=f"dense_{layer}")(x)
            if self.batch_norm:
                x = norm(f"bn_{layer}")(x)
            x = nn.relu(x)
        last = self.num_layers - 1
        x = dense(self.out_dim, use_bias=not self.last_batch_norm, name=f"dense_{last}")(x)
        if self.last_batch_norm:
            x = norm(f"bn_{last}")(x)
        return x.astype(jnp.float32)


class MultiHeadMLP(nn.Module):
    """C MLP heads (independent weights and BatchNorm statistics).

    Attributes:
      num_heads: C.
      hidden_dim, out_dim, num_layers: per head (num_layers Dense layers).
      batch_norm: BatchNorm after every hidden Dense layer (then no bias there).
      last_batch_norm: BatchNorm (with scale and bias) after the output layer too.
      shared_input: True: `x` is (B, F), seen by every head (projectors); False: `x` is (C, B, F),
        head c sees x[c] (predictors on per-head projections).
      dtype: computation dtype of the Dense layers and BatchNorm outputs (bfloat16 for mixed
        precision); params, BatchNorm statistics and the output stay float32.
      batch_norm_groups, batch_norm_group_rows: global (1) or per-device BatchNorm (norm.py).

    `__call__(x, train)` -> (C, B, out_dim) float32.
    """

    num_heads: int = 1
    hidden_dim: int = 512
    out_dim: int = 128
    num_layers: int = 2
    batch_norm: bool = True
    last_batch_norm: bool = False
    shared_input: bool = True
    dtype: Any = jnp.float32
    batch_norm_groups: int = 1
    batch_norm_group_rows: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.num_heads < 1 or self.num_layers < 1:
            raise ValueError(f"num_heads and num_layers must be >= 1, got {self.num_heads}, "
                             f"{self.num_layers}")
        heads = nn.vmap(
            _MLPHead,
            variable_axes={"params": 0, "batch_stats": 0},
            split_rngs={"params": True},
            in_axes=None if self.shared_input else 0,
            out_axes=0,
            axis_size=self.num_heads,
        )(self.hidden_dim, self.out_dim, self.num_layers, self.batch_norm, self.last_batch_norm,
          train, self.dtype, self.batch_norm_groups, self.batch_norm_group_rows, name="heads")
        return heads(x)


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
