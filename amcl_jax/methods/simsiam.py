"""SimSiam and AMCL-SimSiam (the paper's Eq. 2.2).

Projector: `projector.num_layers` Dense layers, BatchNorm after each (the output's too), as the
base repository's lightly SimSiam head; predictor Linear(D, `predictor.hidden_dim`) - BN - ReLU -
Linear(D). Loss: -(cos(p_a, [z_b]) + cos(p_b, [z_a])) / 2 with stop-gradient [.].

With AMCL every head c has its own projector and predictor, and Eq. 2.2 reads (per image)
    -cos(p_a^c, [z_b^c]) / (2 tau+) - cos(p_b^c, [z_a^c]) / (2 tau~) + beta Omega(tau+)
    + beta Omega(tau~),
the table's z_i^c being head c's prediction and h its projection of the other view (the
stop-gradient target), tau+ = tau(p_a^c, z_b^c), tau~ = tau(p_b^c, z_a^c) on the normalised
features: the Eq. 3 pair-score map in the authors' form (beta 1e-4, bounds (1e-5, 2.0)), the
[u; v] MLP in the project's (beta 0.1, bounds (0.5, 2.0)).

Degeneracy (see `losses.amcl_simsiam`): each term is (beta - s/2)/tau + beta (K/2) log tau, which
is unbounded below as tau -> 0 once the cosine s exceeds 2 beta, so every temperature goes to the
lower bound and the gradient on s is multiplied by 1 / (2 lower) (5e4 at 1e-5). The project's
form therefore bounds tau in (0.5, 2.0), where the reweighting stays within [0.25, 1] of the base
loss; the authors' form keeps (1e-5, 2.0) and relies on gradient-norm clipping (1.0).
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from amcl_jax import losses, models
from amcl_jax.fields import positive_integer
from amcl_jax.methods import common
from amcl_jax.methods.base import Method, MethodOutput
from amcl_jax.methods.simclr import temperature_module


class SimSiam(Method):
    name = "simsiam"
    # Eq. 2.2 degenerates near tau = 0 (module docstring): the project's form bounds it.
    form_values = {"authors": {}, "project": {"amcl.temperature_bounds": (0.5, 2.0)}}
    scaled_sizes = {"quickstart": {"predictor.hidden_dim": 32}}

    @staticmethod
    def config_sections() -> dict[str, ml_collections.ConfigDict]:
        # The predictor of SimSiam, which BYOL takes too (`common.predictor`): D -> hidden -> D.
        predictor = ml_collections.ConfigDict()
        predictor.hidden_dim = 512
        return {"predictor": predictor}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        positive_integer(config, "predictor.hidden_dim")

    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        return common.ssl_model(config, batch_norm=True, last_batch_norm=True,
                                with_predictor=True, temperature=temperature_module)

    def apply_loss(self, model, config, params, batch_stats, extra, views, rng) -> MethodOutput:
        del rng
        (projections, predictions), batch_stats = common.apply_to_views(
            model, params, batch_stats, views, method="forward")  # (C, 2, N, D) each
        z_a, z_b = projections[:, 0], projections[:, 1]
        p_a, p_b = predictions[:, 0], predictions[:, 1]
        if config.amcl.enabled:
            temperature_fn = models.BoundTemperature(temperature_module(config),
                                                     params["temperature_net"])
            loss, metrics = losses.amcl_simsiam(
                p_a, p_b, z_a, z_b, temperature_fn, beta=config.amcl.beta,
                omega_dim=config.amcl.omega_dim)
        else:
            loss, metrics = losses.symmetric_negative_cosine(p_a[0], p_b[0], z_a[0], z_b[0])
        return MethodOutput(loss, metrics, batch_stats, extra)
