"""What every pretraining method provides to the trainer."""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections


class MethodOutput(NamedTuple):
    """The result of one forward pass and loss evaluation, inside jit."""

    loss: jax.Array  # () float32.
    metrics: dict[str, jax.Array]  # Scalars or per-head (C,) arrays, float32.
    batch_stats: Any  # Updated BatchNorm statistics.
    extra: Any  # Updated method state (queue, EMA params...); {} when the method has none.


class Method(abc.ABC):
    """A contrastive / self-supervised method: model, extra state and loss."""

    name: str
    supports_amcl: bool = True  # False: amcl.enabled=True is refused at start-up (BYOL).

    @abc.abstractmethod
    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        """The Flax model; `model.apply(v, x, train, method="features")` gives encoder features."""

    def init_extra(self, config: ml_collections.ConfigDict, variables: dict, rng: jax.Array):
        """Extra state kept in the train state and checkpointed (empty by default)."""
        del config, variables, rng
        return {}

    @abc.abstractmethod
    def apply_loss(self, model: nn.Module, config: ml_collections.ConfigDict, params,
                   batch_stats, extra, views: jax.Array, rng: jax.Array) -> MethodOutput:
        """views: (V, B, H, W, 3) float32 global batch. Returns the loss to minimise."""

    def update_extra(self, config, params, extra, step, total_steps):
        """Called after the optimizer update (EMA targets...). Identity by default.

        `step` is the update's 0-based index (traced), `total_steps` the run's length (a Python
        int, resolved from `total_steps` or `num_epochs`), for schedules such as BYOL's ramp.
        """
        del config, params, step, total_steps
        return extra
