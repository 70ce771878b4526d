"""The registry of pretraining methods.

A method knows how to build its Flax model from the config, which extra state it carries in the
train state (a MoCo queue, EMA parameters...), and how to compute its loss from a batch of views.
Its loss itself is a pure function in `amcl_jax.losses`.
"""

from __future__ import annotations

from amcl_jax.methods.barlow_twins import BarlowTwins
from amcl_jax.methods.base import Method, MethodOutput
from amcl_jax.methods.byol import BYOL
from amcl_jax.methods.moco import MoCo
from amcl_jax.methods.simclr import SimCLR
from amcl_jax.methods.simsiam import SimSiam

_REGISTRY: dict[str, type[Method]] = {
    method.name: method for method in (SimCLR, MoCo, SimSiam, BarlowTwins, BYOL)
}


def available() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"config.method={name!r}: allowed values are {', '.join(available())}")
    return _REGISTRY[name]()


__all__ = ["Method", "MethodOutput", "available", "get_method"]
