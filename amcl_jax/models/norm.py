"""BatchNorm over the global batch (the default) or per device (`model.batch_norm_groups`).

Under `jax.jit` on a globally sharded batch, `nn.BatchNorm(axis_name=None)` takes its statistics
over the whole global batch: synchronized BatchNorm by construction. Some recipes want the
statistics of each device's shard instead (PyTorch DDP without SyncBatchNorm, the setting most
published ResNet SSL numbers were trained with). `BatchNorm` here does that deterministically and
independently of the actual device count: the rows of the (V * B) batch a model sees (V views
of B rows, stacked by `sharding.stack_views`) are split into `num_groups` groups the way a batch
sharded over `num_groups` devices is, i.e. group g holds the rows [g * B / G, (g + 1) * B / G) of
every view v, and each group is normalised with its own mean and variance. With G = the number of
devices this is exactly per-device BatchNorm; the same program on one device gives the same
numbers. The running statistics move towards the mean over groups of the group statistics (each
device would otherwise keep its own, diverging, copy).

The variables are named like `flax.linen.BatchNorm`'s (params `scale`, `bias`; batch_stats
`mean`, `var`) and the class is called `BatchNorm`, so the parameter tree (auto-named
`BatchNorm_<i>`) and checkpoints are the same whichever mode trained them. `make_norm` returns
`flax.linen.BatchNorm` itself for one group.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from amcl_jax import sharding


class BatchNorm(nn.Module):
    """BatchNorm with statistics per group of rows (see the module docstring).

    Attributes:
      use_running_average: inference mode (running statistics, no grouping).
      num_groups: G >= 1.
      group_rows: B / G, the rows of one group inside each view block of B rows.
      momentum, epsilon, dtype: as `flax.linen.BatchNorm`.

    `__call__(x)`: x (N, ..., F) with N a multiple of G * group_rows in training mode.
    """

    use_running_average: bool
    num_groups: int
    group_rows: int
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
            y = (x.astype(jnp.float32) - mean) * (scale * jax.lax.rsqrt(var + self.epsilon))
            return (y + bias).astype(self.dtype)

        rows, groups = x.shape[0], self.num_groups
        block = groups * self.group_rows
        if self.group_rows < 1 or rows % block:
            raise ValueError(
                f"model.batch_norm_groups={groups}: the {rows} rows given are not whole views of "
                f"{block} rows ({groups} groups of {self.group_rows})")
        # The rows arrive stacked device-major (`sharding.stack_views`): back to views first,
        # (N, ..., F) -> (V, B, ..., F) -> (V, G, B / G, ..., F): group g is axis 1 = g.
        num_views = rows // block
        by_view = sharding.unstack_views(x.astype(jnp.float32), num_views, axis=0)
        grouped = by_view.reshape((num_views, groups, self.group_rows) + x.shape[1:])
        axes = (0,) + tuple(range(2, grouped.ndim - 1))
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        # Flax's fast variance, E[x^2] - E[x]^2 clipped at 0, per group.
        var = jnp.maximum(jnp.mean(jnp.square(grouped), axis=axes, keepdims=True)
                          - jnp.square(mean), 0.0)
        y = (grouped - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        if not self.is_initializing():
            group_mean = mean.reshape(groups, features).mean(axis=0)
            group_var = var.reshape(groups, features).mean(axis=0)
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * group_mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * group_var
        y = y.reshape((num_views, block) + x.shape[1:])
        return sharding.stack_views(y, num_views=None).astype(self.dtype)


def make_norm(*, train: bool, groups: int = 1, group_rows: int = 0, dtype: Any = jnp.float32,
              momentum: float = 0.9, epsilon: float = 1e-5):
    """A BatchNorm constructor (takes `name=`): global statistics for `groups` = 1 (Flax's own
    `nn.BatchNorm`), per group of rows for `groups` > 1."""
    if groups < 1:
        raise ValueError(f"model.batch_norm_groups must resolve to >= 1 groups, got {groups}")
    if groups == 1:
        return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum,
                                 epsilon=epsilon, dtype=dtype, axis_name=None)
    return functools.partial(BatchNorm, use_running_average=not train, num_groups=groups,
                             group_rows=group_rows, momentum=momentum, epsilon=epsilon,
                             dtype=dtype)
