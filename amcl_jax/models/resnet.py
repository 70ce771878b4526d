"""ResNet encoders (He et al. 2016) returning globally average-pooled features.

Two stems: "cifar" (3x3 conv, stride 1, no max-pool; the standard choice for 32x32 images and
the one used by the AMCL code) and "imagenet" (7x7 conv stride 2 + 3x3 max-pool stride 2).
Convolutions use PyTorch-style symmetric padding (k // 2 on each side). BatchNorm statistics are
taken over the whole array given (`axis_name=None`): under `jax.jit` on a globally sharded batch
that is the global batch, i.e. synchronized BatchNorm for free; `batch_norm_groups` > 1 takes them
per device instead (`models/norm.py`).

`cpu_fusion_barriers` (training on the CPU backend only) stores each block's activations once
instead of letting XLA:CPU recompute them inside the backward pass (`platform/cpu.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from amcl_jax.models.norm import make_norm
from amcl_jax.platform import cpu

ModuleDef = Any

STEMS = ("cifar", "imagenet")


def _barrier(x: jax.Array, keep: jax.Array | None) -> jax.Array:
    return x if keep is None else cpu.fusion_barrier(x, keep)


class _ResidualBlock(nn.Module):
    """What BasicBlock and Bottleneck share: their fields, and the end of the block (the shortcut,
    a strided 1x1 projection where the shape changes, added to the residual branch)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    expansion = 1

    def _join(self, shortcut: jax.Array, y: jax.Array, keep: jax.Array | None) -> jax.Array:
        """relu(shortcut + y), `shortcut` projected to y's shape (`conv_proj`, `norm_proj`)."""
        if shortcut.shape != y.shape:
            shortcut = self.conv(self.filters * self.expansion, (1, 1), self.strides,
                                 padding="VALID", name="conv_proj")(shortcut)
            shortcut = self.norm(name="norm_proj")(shortcut)
        return _barrier(nn.relu(shortcut + y), keep)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut; expansion 1.

    x: (B, H, W, Cin) -> (B, H / stride, W / stride, filters).
    """

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """`keep`: given, a `cpu.fusion_barrier` with it on the activations convolutions read."""
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)))(x)
        y = _barrier(nn.relu(self.norm()(y)), keep)
        y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)))(y)
        return self._join(residual, self.norm()(y), keep)


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (strided) -> 1x1 convs; expansion 4.

    x: (B, H, W, Cin) -> (B, H / stride, W / stride, 4 * filters).
    """

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """`keep`: as BasicBlock's."""
        residual = x
        y = self.conv(self.filters, (1, 1), padding="VALID")(x)
        y = _barrier(nn.relu(self.norm()(y)), keep)
        y = self.conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)))(y)
        y = _barrier(nn.relu(self.norm()(y)), keep)
        y = self.conv(self.filters * self.expansion, (1, 1), padding="VALID")(y)
        return self._join(residual, self.norm()(y), keep)


def base_channels(width: float) -> int:
    """Channels of the stem and first stage: round(64 * width), at least 1."""
    return max(1, round(64 * width))


class ResNet(nn.Module):
    """ResNet backbone without classifier.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block_cls: `BasicBlock` or `Bottleneck`.
      width: multiplier on the base channel count 64 (rounded, at least 1).
      stem: "cifar" or "imagenet" (see module docstring).
      dtype: computation dtype (e.g. jnp.bfloat16); params are always float32.
      batch_norm_groups, batch_norm_group_rows: BatchNorm statistics over the whole batch (1 group,
        the default) or per group of rows, i.e. per device (`models/norm.py`).
      remat: recompute each block's activations in the backward pass instead of keeping
        them (`jax.checkpoint` via `nn.remat`): about one more forward pass of compute for a
        fraction of the activation memory; the same parameter names and numbers.
      cpu_fusion_barriers: when training on the CPU backend, a `cpu.fusion_barrier` on the
        stem's and every block's activations (same values; a 1.17x faster ResNet-18 step on 2
        cores, `bench/results/fusion_barriers_cpu.json`). Never on other backends.

    `__call__(x, train)`: x (B, H, W, 3) -> (B, F) float32 pooled features,
    F = `ResNet.num_features` = base * 2^(stages - 1) * expansion (base * 8 * expansion for the
    four-stage ResNets).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    width: float = 1.0
    stem: str = "cifar"
    dtype: Any = jnp.float32
    batch_norm_groups: int = 1
    batch_norm_group_rows: int = 0
    cpu_fusion_barriers: bool = True
    remat: bool = False

    @property
    def num_features(self) -> int:
        return (base_channels(self.width) * 2 ** (len(self.stage_sizes) - 1)
                * self.block_cls.expansion)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.stem not in STEMS:
            raise ValueError(f"model.stem must be one of {STEMS}, got {self.stem!r}")
        base = base_channels(self.width)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = make_norm(train=train, groups=self.batch_norm_groups,
                         group_rows=self.batch_norm_group_rows, dtype=self.dtype)
        if self.stem == "cifar":
            stem = conv(base, (3, 3), padding=((1, 1), (1, 1)), name="conv_init")
        else:
            stem = conv(base, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv_init")
        x = nn.relu(norm(name="bn_init")(stem(x)))
        keep = None  # Only a training step has the backward pass the barriers are for.
        if self.cpu_fusion_barriers and train:
            # From a (replicated) parameter: no communication on a sharded batch.
            keep = cpu.fusion_barrier_predicate(stem.variables["params"]["kernel"])
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = _barrier(x, keep)

        block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
        index = 0
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                # Named as Flax names the plain blocks, so checkpoints move across `remat`.
                x = block_cls(base * 2**stage, conv=conv, norm=norm, strides=strides,
                              name=f"{self.block_cls.__name__}_{index}")(x, keep)
                index += 1
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
# For tests only, as flax's examples/imagenet keeps `_ResNet1`: ResNet-18's stem, blocks (an
# identity and a projection shortcut) and BatchNorm in two one-block stages. Its training step
# compiles in about a third of ResNet-18's time at the tests' tiny size.
ResNetTest = functools.partial(ResNet, stage_sizes=(1, 1), block_cls=BasicBlock)

_EXPANSION = {"resnet18": 1, "resnet34": 1, "resnet50": 4}


def feature_dim(name: str, width: float = 1.0) -> int:
    """Pooled feature size F of ResNet `name` ("resnet18" / "resnet34" / "resnet50")."""
    if name not in _EXPANSION:
        raise ValueError(f"model.name must be one of {tuple(_EXPANSION)}, got {name!r}")
    return base_channels(width) * 8 * _EXPANSION[name]
