"""The C-head MLP of every method: its projectors and SimSiam's and BYOL's predictors.

`MultiHeadMLP`: C MLP heads with independent weights and optional BatchNorm (SimCLR's and MoCo's
projectors without it; the projectors of Barlow Twins, SimSiam and BYOL and the SimSiam / BYOL
predictors with it, as in the base repository's lightly heads). BatchNorm statistics are per
head, over the whole batch given (the global batch under jit). Every param and batch-stat leaf has
a leading head axis.
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
