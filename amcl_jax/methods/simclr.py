"""SimCLR and AMCL-SimCLR (the paper's Eq. 2.1).

Without AMCL: one projection head and NT-Xent with a global temperature (`simclr.temperature`).
With AMCL: `amcl.num_heads` heads and a temperature for every (head, pair), trained through the
loss and its regulariser Omega. In the authors' form (`amcl.form="authors"`, forms.py) the
temperatures come from the Eq. 3 pair-score map and the negatives are Eq. 5's top-k; in the
project's form from an MLP on [u; v] with a log-sum-exp over negatives; the likelihood form
(`amcl.form="likelihood"`) is the project's with each temperature fit by its pair's Gaussian
likelihood alone and the features trained by the contrast at fixed temperatures.
`amcl.infonce=True` with `amcl.negatives="max"` is the InfoNCE form (Eq. 2.4): the positive
joins the hard max, which bounds the loss below (Eq. 2.1's hard max is unbounded below once a
positive's cosine exceeds beta and its temperature reaches the lower bound).
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from amcl_jax import losses, models
from amcl_jax.fields import fail
from amcl_jax.methods import common
from amcl_jax.methods.base import Method, MethodOutput


def temperature_module(config: ml_collections.ConfigDict) -> nn.Module:
    """The AMCL temperature network of the SimCLR family (SimCLR, MoCo, SimSiam).

    `amcl.temperature_net` "pair_score": the authors' Eq. 3 map (`models.PairScoreTemperature`);
    "concat_mlp": the project's MLP on [u; v] (`models.TemperatureNet`).
    """
    kind = config.amcl.temperature_net
    module = {"pair_score": models.PairScoreTemperature, "concat_mlp": models.TemperatureNet}
    if kind not in module:
        raise ValueError(f"config.amcl.temperature_net={kind!r} is invalid: allowed values are "
                         + ", ".join(repr(k) for k in module))
    return module[kind](num_heads=config.amcl.num_heads,
                        hidden_dim=config.amcl.temperature_hidden_dim,
                        bounds=tuple(config.amcl.temperature_bounds),
                        shared=config.amcl.shared_temperature_net)


def contrastive_pair_loss(config: ml_collections.ConfigDict, params, z_a: jax.Array,
                          z_b: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SimCLR-family loss of one pair of views. z_a, z_b: (C, N, D)."""
    if not config.amcl.enabled:
        loss, metrics = losses.nt_xent(z_a[0], z_b[0], config.simclr.temperature)
        tau = jnp.full((1,), config.simclr.temperature, jnp.float32)
        metrics = dict(metrics, tau_pos_mean=tau, tau_neg_mean=tau)
        return loss, metrics
    temperature_fn = models.BoundTemperature(temperature_module(config), params["temperature_net"])
    beta, negatives, omega_dim = config.amcl.beta, config.amcl.negatives, config.amcl.omega_dim
    if config.amcl.loss == "released_code":
        # As the released code computes it (no epsilon, a division; not losses.l2_normalize).
        normalise = lambda z: z / jnp.linalg.norm(z, axis=-1, keepdims=True)
        temperatures = temperature_fn(normalise(z_a.astype(jnp.float32)),
                                      normalise(z_b.astype(jnp.float32)))
        return losses.released_code_loss(z_a, z_b, temperatures, beta=beta)
    if config.amcl.infonce and negatives == "max":  # Eq. 2.4.
        return losses.amcl_infonce_max(z_a, z_b, temperature_fn, beta=beta, omega_dim=omega_dim)
    # The temperature ablation: the non-adaptive side at the global simclr.temperature.
    constant = losses.constant_temperature(config.simclr.temperature)
    negative_fn, positive_fn = {
        "both": (temperature_fn, None),
        "positive": (constant, temperature_fn),
        "negative": (temperature_fn, constant),
        "none": (constant, None),
    }[config.amcl.adaptive_temperature]
    return losses.amcl_contrastive(
        z_a, z_b, negative_fn, beta=beta, omega_dim=omega_dim, negatives=negatives,
        topk=config.amcl.topk, chunk_size=config.amcl.chunk_size,
        positive_temperature_fn=positive_fn,
        temperature_objective=config.amcl.temperature_objective)


class SimCLR(Method):
    name = "simclr"
    pair_temperatures = True
    any_number_of_views = True
    likelihood_temperatures = True

    @staticmethod
    def config_sections() -> dict[str, ml_collections.ConfigDict]:
        simclr = ml_collections.ConfigDict()
        simclr.temperature = 0.5  # Used when amcl.enabled is False.
        return {"simclr": simclr}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        if config.simclr.temperature <= 0:
            fail("simclr.temperature", config.simclr.temperature, "must be > 0")

    def offers_temperature_ablation(self, config: ml_collections.ConfigDict) -> bool:
        """Eq. 2.1 only: not the released code's loss, nor Eq. 2.4."""
        return config.amcl.loss == "paper" and not (config.amcl.infonce
                                                    and config.amcl.negatives == "max")

    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        # Dense - ReLU - Dense per head, with biases: the same parameter names and values as the
        # former SimCLR-only projector class, so earlier checkpoints still load.
        return common.ssl_model(config, batch_norm=False, temperature=temperature_module)

    def apply_loss(self, model, config, params, batch_stats, extra, views, rng) -> MethodOutput:
        del rng
        projections, batch_stats = common.apply_to_views(model, params, batch_stats, views,
                                                         num_views=None)  # (C, V, B, D)
        # With more than two views every pair of views contributes equally.
        pair_results = [
            contrastive_pair_loss(config, params, projections[:, i], projections[:, j])
            for i, j in itertools.combinations(range(views.shape[0]), 2)
        ]
        loss = sum(r[0] for r in pair_results) / len(pair_results)
        metrics = common.mean_metrics(*[r[1] for r in pair_results])
        return MethodOutput(loss, metrics, batch_stats, extra)
