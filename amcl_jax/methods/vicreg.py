"""VICReg (Bardes, Ponce and LeCun, ICLR 2022; a baseline: no AMCL equation exists for it, so
amcl.enabled=True is refused).

Encoder -> projector (`projector.*`: `projector.num_layers` Dense layers with BatchNorm and ReLU
after every hidden one; `configs/cifar10_vicreg.py`: 3 layers of 2048, the paper's expander as
solo-learn's) on both views, the same network for both. Loss (`losses.vicreg_loss`) on the global
batch's projections: lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')], with lambda, mu, nu
= `vicreg.invariance_weight`, `vicreg.variance_weight`, `vicreg.covariance_weight` (25, 25, 1).

AMCL's temperatures scale similarities (Eq. 2.1-2.2) or correlation entries (Eq. 2.3); VICReg's
terms are a squared distance and two regularisers on the batch statistics, and the paper does not
say where a temperature would enter them. The method has no AMCL form rather than one of ours.
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from amcl_jax import losses
from amcl_jax.fields import fail
from amcl_jax.methods import common
from amcl_jax.methods.base import Method, MethodOutput

WEIGHTS = ("invariance_weight", "variance_weight", "covariance_weight")


class VICReg(Method):
    name = "vicreg"
    supports_amcl = False
    # The recipe's 2048-wide expander, scaled down as Barlow Twins' (its 3 layers kept). Its
    # warm-up, 10 epochs of 1000 (1,953 steps), would outlast the `cpu` scale's 300 steps: 10
    # steps there, as in the quickstart.
    scaled_sizes = {"quickstart": {"projector.hidden_dim": 256, "projector.out_dim": 256},
                    "cpu": {"projector.hidden_dim": 256, "projector.out_dim": 256,
                            "optimizer.warmup_steps": 10}}

    @staticmethod
    def config_sections() -> dict[str, ml_collections.ConfigDict]:
        vicreg = ml_collections.ConfigDict()
        vicreg.invariance_weight = 25.0  # lambda.
        vicreg.variance_weight = 25.0  # mu.
        vicreg.covariance_weight = 1.0  # nu.
        return {"vicreg": vicreg}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        for weight in WEIGHTS:
            if config.vicreg[weight] < 0:
                fail(f"vicreg.{weight}", config.vicreg[weight], "must be >= 0")

    def check_run(self, config: ml_collections.ConfigDict) -> None:
        if config.batch_size < 2:  # Unbiased variances over the global batch.
            fail("batch_size", config.batch_size, "must be >= 2 for VICReg's variance")

    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        return common.ssl_model(config, batch_norm=True)

    def apply_loss(self, model, config, params, batch_stats, extra, views, rng) -> MethodOutput:
        del rng
        projections, batch_stats = common.apply_to_views(model, params, batch_stats, views)
        z_a, z_b = projections[0, 0], projections[0, 1]  # (N, D) each: one head.
        loss, metrics = losses.vicreg_loss(
            z_a, z_b, **{weight: config.vicreg[weight] for weight in WEIGHTS})
        return MethodOutput(loss, metrics, batch_stats, extra)
