"""The registry of pretraining methods.

A method declares its settings (config sections and their checks, its values of the AMCL forms'
fields, its scaled-down sizes: `base.Method`), builds its Flax model from the config, says which
extra state it carries in the train state (a MoCo queue, EMA parameters...), and computes its loss
from a batch of views. Its loss itself is a pure function in `amcl_jax.losses`. Adding a method:
its module here and one entry in `_REGISTRY`.
"""

from __future__ import annotations

from amcl_jax.methods.barlow_twins import BarlowTwins
from amcl_jax.methods.base import Method, MethodOutput
from amcl_jax.methods.byol import BYOL
from amcl_jax.methods.moco import MoCo
from amcl_jax.methods.simclr import SimCLR
from amcl_jax.methods.simsiam import SimSiam
from amcl_jax.methods.vicreg import VICReg

# In the order of their sections in the default config.
_REGISTRY: dict[str, type[Method]] = {
    method.name: method for method in (SimCLR, MoCo, BarlowTwins, BYOL, SimSiam, VICReg)
}


def available() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def registered() -> tuple[Method, ...]:
    """Every registered method, in registry order."""
    return tuple(method() for method in _REGISTRY.values())


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"config.method={name!r}: allowed values are {', '.join(available())}")
    return _REGISTRY[name]()


__all__ = ["Method", "MethodOutput", "available", "get_method", "registered"]
