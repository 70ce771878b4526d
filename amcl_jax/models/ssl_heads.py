"""Heads of the non-SimCLR methods: BatchNorm MLP heads and Barlow Twins' entry temperatures.

- `MultiHeadMLP`: C MLP heads with independent weights and optional BatchNorm (the projectors of
  Barlow Twins, SimSiam and BYOL and the SimSiam / BYOL predictors, as in the base repository's
  lightly heads). BatchNorm statistics are per head, over the whole batch given (the global batch
  under jit). Every param and batch-stat leaf has a leading head axis.
- `CrossCorrelationTemperatures`: the temperatures of AMCL-Barlow Twins (Eq. 2.3), one for each
  diagonal and each off-diagonal entry of each head's d' x d' cross-correlation.

Why learned per-entry logits, factorised: the cross-correlation is a statistic of the whole batch,
so there is no per-sample pair for the temperature MLP of Eqs. 2.1/2.2 to look at; a temperature
can only depend on which entry (l, m) it scales. The diagonal gets one free logit per feature
(C x d'). Free off-diagonal logits would be C x d'^2 parameters (12.6 M for 3 heads of 2048, more
than ResNet-18), so they are low-rank: logit_lm = <a_l, b_m> + bias with a, b (d', r), rank r
(`barlow_twins.temperature_rank`, 16): O(C d' r) parameters, and the (C, d', d') temperature grid
is O(d'^2) memory, the same as the cross-correlation it scales. a and b are separate because C is
not symmetric (view a's feature l against view b's feature m). Bounded like the other temperatures:
tau = lower + (upper - lower) * sigmoid(logit), float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
