"""BYOL (a baseline: the paper gives no AMCL equation for it; amcl.enabled=True is refused).

Online encoder -> projector (Linear - BN - ReLU - Linear, `projector.*`) -> predictor (Linear -
BN - ReLU - Linear, `predictor.hidden_dim`); target encoder and projector are an EMA of the
online ones (`byol.momentum` 0.99, constant as the base repository's lightly benchmark, or BYOL's
cosine ramp to 1). Loss: -(cos(p_a, [t_b]) + cos(p_b, [t_a])) / 2 with t the target projections,
the base repository's form; the BYOL paper's sum of 2 - 2 cos is 4 * this + 4.

Learning rate (`configs/cifar10_byol.py`): 0.05, SimSiam's in the base repository. The base
repository gives none for BYOL; BYOL is SimSiam plus an EMA target with the same loss, predictor
and SGD / weight-decay / cosine recipe, so SimSiam's rate is the closest documented choice.

Train state (`extra`): `target_params`, `target_batch_stats`.
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from amcl_jax import losses
from amcl_jax.methods import common
from amcl_jax.methods.base import Method, MethodOutput


class BYOL(Method):
    name = "byol"
    supports_amcl = False
    # The predictor is SimSiam's section (`predictor.hidden_dim`).
    scaled_sizes = {"quickstart": {"predictor.hidden_dim": 128}}

    @staticmethod
    def config_sections() -> dict[str, ml_collections.ConfigDict]:
        byol = ml_collections.ConfigDict()
        byol.momentum = 0.99  # EMA of the target encoder and projector.
        byol.momentum_schedule = "constant"  # "cosine": ramp to 1 over the run.
        return {"byol": byol}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        common.check_momentum(config, "byol")

    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        return common.ssl_model(config, batch_norm=True, with_predictor=True)

    def init_extra(self, config, variables, rng):
        del config, rng
        return common.target_copy(variables)

    def apply_loss(self, model, config, params, batch_stats, extra, views, rng) -> MethodOutput:
        del rng
        (_, predictions), batch_stats = common.apply_to_views(model, params, batch_stats, views,
                                                              method="forward")
        targets, target_batch_stats = common.target_forward(model, extra, views)
        p_a, p_b = predictions[:, 0], predictions[:, 1]  # (C, N, D) each
        t_a, t_b = targets[:, 0], targets[:, 1]
        loss, metrics = losses.symmetric_negative_cosine(p_a[0], p_b[0], t_a[0], t_b[0])
        extra = dict(extra, target_batch_stats=target_batch_stats)
        return MethodOutput(loss, metrics, batch_stats, extra)

    def update_extra(self, config, params, extra, step, total_steps):
        return common.update_target(config.byol, total_steps, params, extra, step)
