"""Vision Transformers (Dosovitskiy et al. 2021) returning one pooled feature per image.

ViT-S/B/L as in the paper's backbone study, pre-LayerNorm blocks, no dropout (self-supervised
pretraining), learned position embeddings, a final LayerNorm. Details:

- Patch size: `patch_size=0` (the registry's choice) picks it from the input: 16 for inputs of at
  least 224 pixels (ImageNet-style, 14 x 14 tokens at 224), otherwise side // 8 (4 at 32 x 32,
  2 at 16 x 16: an 8 x 8 token grid, as CIFAR ViTs use). The patch embedding is a reshape plus a
  Dense layer, which is exactly a stride-p p x p convolution, and fast on every backend.
- Feature: `pooling="cls"` (the class token after the final LayerNorm, the ViT/DINO/MoCo v3
  choice) or `"mean"` (mean of the patch tokens after the final LayerNorm, no class token).
- Width: `width` scales the head dimension 64 (rounded, at least 1); the number of heads and the
  depth are those of the named size, so `width=1` is the published model and tests can run
  `width=0.125` with the real depth. The MLP is 4x the hidden size.
- Blocks run under `nn.scan` (parameters stacked on a leading depth axis), so compile time does
  not grow with depth.

`__call__(x, train)`: x (B, H, W, 3) -> (B, F) float32, F = heads * round(64 * width).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# name -> (depth, heads); hidden = heads * 64 at width 1 (S 384, B 768, L 1024).
VIT_SIZES = {"s": (12, 6), "b": (12, 12), "l": (24, 16)}
POOLINGS = ("cls", "mean")


def vit_feature_dim(size: str, width: float = 1.0) -> int:
    """F of ViT `size` ("s" / "b" / "l") at `width`: heads * round(64 * width)."""
    _, heads = VIT_SIZES[size]
    return heads * max(1, round(64 * width))


def auto_patch_size(side: int) -> int:
    """16 for inputs of at least 224 pixels, else side // 8 (at least 1)."""
    return 16 if side >= 224 else max(1, side // 8)


class _Block(nn.Module):
    """Pre-LN transformer block; tokens (B, T, hidden) -> (B, T, hidden). Scanned, so (x, None)."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        hidden = x.shape[-1]
        y = nn.LayerNorm(dtype=self.dtype, name="norm_attention")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, deterministic=True, name="attention")(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="norm_mlp")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(y))
        y = nn.Dense(hidden, dtype=self.dtype, name="mlp_out")(y)
        return x + y, None


class ViT(nn.Module):
    """ViT backbone without classifier.

    Attributes:
      size: "s", "b" or "l".
      width: multiplier on the head dimension 64 (see module docstring).
      pooling: "cls" or "mean".
      patch_size: 0 = from the input size (see `auto_patch_size`), else the patch side.
      dtype: computation dtype; params are float32 and the output is float32.
      stem, batch_norm_groups, batch_norm_group_rows: accepted for the encoder registry's
        common signature and ignored (a ViT has no BatchNorm).
    """

    size: str = "s"
    width: float = 1.0
    pooling: str = "cls"
    patch_size: int = 0
    dtype: Any = jnp.float32
    stem: str = "cifar"
    batch_norm_groups: int = 1
    batch_norm_group_rows: int = 0
    remat: bool = False  # Recompute each block's activations in the backward pass.

    @property
    def num_features(self) -> int:
        return vit_feature_dim(self.size, self.width)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train  # No dropout nor BatchNorm.
        if self.size not in VIT_SIZES or self.pooling not in POOLINGS:
            raise ValueError(f"ViT size must be one of {tuple(VIT_SIZES)} and pooling one of "
                             f"{POOLINGS}, got {self.size!r}, {self.pooling!r}")
        depth, heads = VIT_SIZES[self.size]
        hidden = self.num_features
        batch, height, width, channels = x.shape
        patch = self.patch_size or auto_patch_size(min(height, width))
        if height % patch or width % patch:
            raise ValueError(f"ViT: image size {height}x{width} is not a multiple of the patch "
                             f"size {patch}")
        rows, cols = height // patch, width // patch
        patches = x.reshape(batch, rows, patch, cols, patch, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(
            batch, rows * cols, patch * patch * channels)
        tokens = nn.Dense(hidden, dtype=self.dtype, name="patch_embedding")(patches)
        if self.pooling == "cls":
            cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, hidden), jnp.float32)
            tokens = jnp.concatenate(
                [jnp.broadcast_to(cls, (batch, 1, hidden)).astype(tokens.dtype), tokens], axis=1)
        position = self.param("position_embedding", nn.initializers.normal(stddev=0.02),
                              (1, tokens.shape[1], hidden), jnp.float32)
        tokens = tokens + position.astype(tokens.dtype)

        blocks = nn.scan(
            nn.remat(_Block) if self.remat else _Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=depth,
        )(num_heads=heads, mlp_dim=4 * hidden, dtype=self.dtype, name="blocks")
        tokens, _ = blocks(tokens, None)
        tokens = nn.LayerNorm(dtype=self.dtype, name="norm_final")(tokens)
        pooled = tokens[:, 0] if self.pooling == "cls" else jnp.mean(tokens, axis=1)
        return pooled.astype(jnp.float32)


ViTS = functools.partial(ViT, size="s")
ViTB = functools.partial(ViT, size="b")
ViTL = functools.partial(ViT, size="l")
