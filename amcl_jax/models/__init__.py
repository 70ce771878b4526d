"""Encoders (`resnet`, `vit`), the projector (`projector`), the temperature networks
(`temperature`) and the model they make (`ssl_model`); `build_encoder` looks encoders up."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from amcl_jax.models.norm import BatchNorm, make_norm
from amcl_jax.models.projector import MultiHeadMLP
from amcl_jax.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNetTest,
    feature_dim,
)
from amcl_jax.models.ssl_model import SSLModel
from amcl_jax.models.temperature import (
    BoundTemperature,
    ChannelTemperatures,
    CrossCorrelationTemperatures,
    PairScoreTemperature,
    TemperatureNet,
    bounded_temperature,
)
from amcl_jax.models.vit import ViT, vit_feature_dim

# name -> (constructor taking width/stem/dtype, feature size as a function of width).
# Add new encoders (e.g. "vit_s") here.
ENCODERS: dict[str, tuple[Callable[..., nn.Module], Callable[[float], int]]] = {
    "resnet18": (ResNet18, lambda width: feature_dim("resnet18", width)),
    "resnet34": (ResNet34, lambda width: feature_dim("resnet34", width)),
    "resnet50": (ResNet50, lambda width: feature_dim("resnet50", width)),
    # The paper's wide ResNet-50s: 2x / 4x the configured width (model.width=1 gives the paper's).
    "resnet50w2": (lambda width, **kw: ResNet50(width=2 * width, **kw),
                   lambda width: feature_dim("resnet50", 2 * width)),
    "resnet50w4": (lambda width, **kw: ResNet50(width=4 * width, **kw),
                   lambda width: feature_dim("resnet50", 4 * width)),
    # ViTs (models/vit.py): patch size from the input (4 at 32x32, 16 at 224x224); "vit_<size>"
    # takes the class token as the feature, "vit_<size>_mean" the mean of the patch tokens.
    **{
        f"vit_{size}{suffix}": (
            functools.partial(ViT, size=size, pooling=pooling),
            functools.partial(vit_feature_dim, size),
        )
        for size in ("s", "b", "l")
        for suffix, pooling in (("", "cls"), ("_mean", "mean"))
    },
    # Names starting with "_" are for tests (a user is not offered them): the subprocess runs of
    # tests/ train this one, ResNet-18's blocks in two one-block stages.
    "_resnet_test": (ResNetTest, lambda width: ResNetTest(width=width).num_features),
}


def encoder_names() -> tuple[str, ...]:
    """The `model.name` values a user is offered: ENCODERS without the names for tests."""
    return tuple(name for name in ENCODERS if not name.startswith("_"))


def _lookup(name: str) -> tuple[Callable[..., nn.Module], Callable[[float], int]]:
    if name not in ENCODERS:
        raise ValueError(f"model.name must be one of {encoder_names()}, got {name!r}")
    return ENCODERS[name]


def build_encoder(name: str, *, width: float, stem: str, dtype: Any,
                  batch_norm_groups: int = 1, batch_norm_group_rows: int = 0,
                  cpu_fusion_barriers: bool = True, remat: bool = False) -> nn.Module:
    """The encoder `name`; `__call__(x (B, H, W, 3), train) -> (B, F)` float32 features.

    `cpu_fusion_barriers`: as `ResNet`'s (ResNets only; the ViTs have no BatchNorm chains for
    XLA:CPU to recompute).

    `batch_norm_groups` > 1: per-device BatchNorm statistics (`models/norm.py`); encoders
    registered without these two attributes only support the default (global statistics).
    """
    constructor, _ = _lookup(name)
    options = {}
    if batch_norm_groups != 1:
        options = {"batch_norm_groups": batch_norm_groups,
                   "batch_norm_group_rows": batch_norm_group_rows}
    if not cpu_fusion_barriers and name.startswith("resnet"):
        options["cpu_fusion_barriers"] = False
    if remat:  # Every block's activations recomputed in the backward pass.
        options["remat"] = True
    return constructor(width=width, stem=stem, dtype=dtype, **options)


def encoder_feature_dim(name: str, width: float) -> int:
    """F, the feature size `build_encoder(name, width=width, ...)` returns."""
    _, dim = _lookup(name)
    return dim(width)


__all__ = [
    "BatchNorm",
    "ENCODERS",
    "encoder_names",
    "BasicBlock",
    "Bottleneck",
    "BoundTemperature",
    "ChannelTemperatures",
    "CrossCorrelationTemperatures",
    "MultiHeadMLP",
    "PairScoreTemperature",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNetTest",
    "SSLModel",
    "TemperatureNet",
    "ViT",
    "bounded_temperature",
    "build_encoder",
    "encoder_feature_dim",
    "feature_dim",
    "make_norm",
]
