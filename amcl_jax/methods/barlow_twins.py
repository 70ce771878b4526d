"""Barlow Twins and AMCL-Barlow Twins (the paper's Eq. 2.3).

Projector: `projector.num_layers` Dense layers with BatchNorm and ReLU after every hidden one
(the base repository's lightly head; `configs/cifar10_barlow_twins.py`: 3 layers of 2048). Loss
on the global batch's cross-correlation C of the batch-standardised projections:
sum_l (1 - C_ll)^2 + lambda sum_{l != m} C_lm^2, lambda = `barlow_twins.off_diagonal_weight`.

With AMCL: C heads and Eq. 2.3, each head's diagonal entry l scaled by a temperature tau_l+ and
each off-diagonal entry (l, m) by tau_lm-, plus beta sum Omega(tau+) - beta sum Omega(tau-).
`barlow_twins.temperatures`:

- "channel_map" (the authors' form): `models.ChannelTemperatures`, the Eq. 3 pair-score map on
  the channel vectors (each feature's values over the global batch, phi N -> hidden -> N, shared
  by heads), so `batch_size` is fixed by the network; Omega's K = D (2048), beta 1e-6, bounds
  (1e-5, 2.0), the cross-correlation standardised by (std + 1e-9).
- "low_rank" (the project's form): `models.CrossCorrelationTemperatures`, learned per-entry
  logits (free on the diagonal, rank `barlow_twins.temperature_rank` off it; its docstring says
  why); Omega's K = 1, beta 0.1, bounds (0.5, 2.0).

Degeneracy (`losses.amcl_barlow_twins`): the off-diagonal terms (lambda C^2 - beta K/2 ...) go to
-inf as tau -> 0 whenever lambda C^2 < beta, so tau- sits at the lower bound, scaling lambda by
1 / lower; with the authors' beta 1e-6 this needs C_lm^2 < 2e-4, a weak pull, and the diagonal's
Omega with K = 2048 has its minimum at tau = 2 / K. The project's form bounds tau in (0.5, 2.0).
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from amcl_jax import losses, models
from amcl_jax.fields import fail, one_of
from amcl_jax.methods import common
from amcl_jax.methods.base import Method, MethodOutput

TEMPERATURES = ("channel_map", "low_rank")


def temperature_module(config: ml_collections.ConfigDict) -> nn.Module:
    """`barlow_twins.temperatures`: "channel_map" (the authors') or "low_rank" (the project's)."""
    bounds = tuple(config.amcl.temperature_bounds)
    kind = config.barlow_twins.temperatures
    if kind == "channel_map":
        return models.ChannelTemperatures(
            num_heads=config.amcl.num_heads, batch_size=config.batch_size,
            hidden_dim=config.amcl.temperature_hidden_dim, bounds=bounds)
    if kind == "low_rank":
        return models.CrossCorrelationTemperatures(
            num_heads=config.amcl.num_heads, rank=config.barlow_twins.temperature_rank,
            bounds=bounds)
    raise ValueError(f"config.barlow_twins.temperatures={kind!r} is invalid: allowed values are "
                     "'channel_map', 'low_rank'")


class BarlowTwins(Method):
    name = "barlow_twins"
    # Omega's K: D (the authors', the form's) or 1 (the project's); the degenerate Eq. 2.3 is
    # bounded in the project's form (module docstring).
    form_values = {
        "authors": {"amcl.beta": 1e-6, "barlow_twins.temperatures": "channel_map"},
        "project": {"amcl.temperature_bounds": (0.5, 2.0), "amcl.omega_dim": 1,
                    "barlow_twins.temperatures": "low_rank"},
    }
    scaled_sizes = {"quickstart": {"projector.hidden_dim": 256, "projector.out_dim": 256}}

    @staticmethod
    def config_sections() -> dict[str, ml_collections.ConfigDict]:
        barlow_twins = ml_collections.ConfigDict()
        barlow_twins.off_diagonal_weight = 5e-3  # lambda.
        # AMCL's temperatures: "channel_map" (authors: the Eq. 3 map on the channel vectors, phi
        # N -> hidden -> N, so batch_size is fixed by it) or "low_rank" (project: learned
        # per-entry logits, rank barlow_twins.temperature_rank off the diagonal).
        barlow_twins.temperatures = ml_collections.config_dict.placeholder(str)
        barlow_twins.temperature_rank = 16
        return {"barlow_twins": barlow_twins}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        one_of(config, "barlow_twins.temperatures", TEMPERATURES)
        if config.barlow_twins.off_diagonal_weight < 0:
            fail("barlow_twins.off_diagonal_weight", config.barlow_twins.off_diagonal_weight,
                 "must be >= 0")
        if config.barlow_twins.temperature_rank < 1:
            fail("barlow_twins.temperature_rank", config.barlow_twins.temperature_rank,
                 "must be >= 1")

    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        return common.ssl_model(config, batch_norm=True, temperature=temperature_module)

    def apply_loss(self, model, config, params, batch_stats, extra, views, rng) -> MethodOutput:
        del rng
        projections, batch_stats = common.apply_to_views(model, params, batch_stats, views)
        z_a, z_b = projections[:, 0], projections[:, 1]  # (C, N, D) each
        weight = config.barlow_twins.off_diagonal_weight
        if config.amcl.enabled:
            tau_diag, tau_off = temperature_module(config).apply(
                {"params": params["temperature_net"]}, z_a, z_b)
            # The authors' cross-correlation divides by (std + 1e-9); lightly's by
            # sqrt(var + 1e-5), which the baseline and the project's form keep.
            eps, standardisation = ((1e-9, "std_eps") if config.amcl.form == "authors"
                                    else (1e-5, "variance_eps"))
            loss, metrics = losses.amcl_barlow_twins(
                z_a, z_b, tau_diag, tau_off, off_diagonal_weight=weight,
                beta=config.amcl.beta, omega_dim=config.amcl.omega_dim, eps=eps,
                standardisation=standardisation)
        else:
            loss, metrics = losses.barlow_twins_loss(z_a[0], z_b[0], off_diagonal_weight=weight)
        return MethodOutput(loss, metrics, batch_stats, extra)
