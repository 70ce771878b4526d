"""Barlow Twins and AMCL-Barlow Twins (the paper's Eq. 2.3).

Projector: `projector.num_layers` Dense layers with BatchNorm and ReLU after every hidden one
(the base repository's lightly head; `configs/cifar10_barlow_twins.py`: 3 layers of 2048). Loss
on the global batch's cross-correlation C of the batch-standardised projections:
sum_l (1 - C_ll)^2 + lambda sum_{l != m} C_lm^2, lambda = `barlow_twins.off_diagonal_weight`.

With AMCL: C heads and Eq. 2.3, each head's diagonal entry l scaled by a temperature tau_l+ and
each off-diagonal entry (l, m) by tau_lm-. The temperatures come from
`models.CrossCorrelationTemperatures`: learned per-entry logits (free on the diagonal, rank
`barlow_twins.temperature_rank` on the off-diagonal), bounded by `amcl.temperature_bounds` through
a sigmoid; its docstring says why (C is a batch statistic, so there is no per-sample pair to feed
an MLP; O(C d' r) params, O(d'^2) memory).

Omega's K: 1 by default (`amcl.omega_dim = -1`): a temperature here scales one scalar entry, not a
D-dimensional unit vector, and with K = d' the regulariser's minimum tau = 2 / d' drags every
diagonal temperature, hence the invariance target C_ll = tau_l+, towards 0.

Degeneracy (`losses.amcl_barlow_twins`): the off-diagonal terms (lambda C^2 - beta) / tau -
beta (K/2) log tau go to -inf as tau -> 0 because lambda C^2 < beta, so every tau- sits at the
lower bound, scaling lambda by 1 / lower (1e5 with the default bounds (1e-5, 2)).
`configs/cifar10_amcl_barlow_twins.py` and the quickstart therefore use bounds (0.5, 2.0).
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from amcl_jax import losses, models
from amcl_jax.methods import common
from amcl_jax.methods.base import Method, MethodOutput


def temperature_module(config: ml_collections.ConfigDict) -> models.CrossCorrelationTemperatures:
    return models.CrossCorrelationTemperatures(
        num_heads=config.amcl.num_heads, rank=config.barlow_twins.temperature_rank,
        bounds=tuple(config.amcl.temperature_bounds))


def omega_dim(config: ml_collections.ConfigDict) -> float:
    """Omega's K for Eq. 2.3: 1 unless `amcl.omega_dim` is set (see the module docstring)."""
    return 1 if config.amcl.omega_dim == -1 else config.amcl.omega_dim


class BarlowTwins(Method):
    name = "barlow_twins"

    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        return common.SSLModel(
            common.build_encoder(config), common.projector(config, batch_norm=True),
            temperature_net=temperature_module(config) if config.amcl.enabled else None)

    def apply_loss(self, model, config, params, batch_stats, extra, views, rng) -> MethodOutput:
        del rng
        images = common.stack_views(views)
        (_, projections), mutated = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True,
            mutable=["batch_stats"])
        z_a, z_b = common.split_views(projections)
        weight = config.barlow_twins.off_diagonal_weight
        if config.amcl.enabled:
            tau_diag, tau_off = temperature_module(config).apply(
                {"params": params["temperature_net"]}, z_a, z_b)
            loss, metrics = losses.amcl_barlow_twins(
                z_a, z_b, tau_diag, tau_off, off_diagonal_weight=weight, beta=config.amcl.beta,
                omega_dim=omega_dim(config))
        else:
            loss, metrics = losses.barlow_twins_loss(z_a[0], z_b[0], off_diagonal_weight=weight)
        return MethodOutput(loss, metrics, mutated.get("batch_stats", batch_stats), extra)
