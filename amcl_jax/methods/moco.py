"""MoCo v2 and AMCL-MoCo (the paper's Eq. 2.1, or 2.4, with the queue as negatives).

The online encoder and projector give queries; a momentum (EMA) copy gives keys. Without AMCL:
InfoNCE with `moco.temperature` (0.1), one head, symmetric over the views as in the base
repository: (L(q_a, k_b) + L(q_b, k_a)) / 2, both terms against the queue as it was before the
step; then the 2N keys of the step (view a's, then view b's) replace the 2N oldest. With AMCL: C
heads (the EMA network has C heads too), the queue is per head, shape (C, K, D), and every
(query, key) pair gets a temperature from the temperature network. `moco.directions`:

- "query_and_key" (the authors' form): queries from view a only, keys from view b only; per head
  the mean of q -> k and k -> q against the same queue (`losses.amcl_queue_contrastive`); the N
  keys of view b are enqueued.
- "views" (the project's form): the symmetric pair of MoCo v2 above, C heads.

Train state (`extra`, checkpointed): `target_params` and `target_batch_stats` (the momentum
encoder and projector), `queue` (C, K, D) float32 unit keys, `queue_ptr` () int32 (the row of
the oldest key). The momentum network's BatchNorm runs on batch statistics like the online one;
there is no shuffle-BN (the whole global batch is one BatchNorm batch, as in solo-learn).
Momentum `moco.momentum` (0.99), constant or with BYOL's cosine ramp to 1.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from amcl_jax import losses, models
from amcl_jax.fields import fail, one_of, positive_integer
from amcl_jax.methods import common
from amcl_jax.methods.base import Method, MethodOutput
from amcl_jax.methods.simclr import temperature_module

DIRECTIONS = ("query_and_key", "views")


class MoCo(Method):
    name = "moco"
    pair_temperatures = True
    form_values = {"authors": {"moco.directions": "query_and_key"},
                   "project": {"moco.directions": "views"}}
    # The quickstart's 1,493 digits x 2 views would be stale in a queue of 4096.
    scaled_sizes = {"quickstart": {"moco.queue_size": 1024}}

    @staticmethod
    def config_sections() -> dict[str, ml_collections.ConfigDict]:
        moco = ml_collections.ConfigDict()  # MoCo v2.
        moco.temperature = 0.1  # Used when amcl.enabled is False.
        moco.queue_size = 4096  # Keys per head; >= 2 * batch_size (2N keys enqueued a step).
        moco.momentum = 0.99  # EMA of the key encoder and projector.
        moco.momentum_schedule = "constant"  # "cosine": ramp to 1 over the run.
        # AMCL-MoCo's pairs. "query_and_key" (authors): queries from view 1, keys from view 2,
        # the mean of the q -> k and k -> q directions against the queue. "views" (project): the
        # symmetric (L(q_a, k_b) + L(q_b, k_a)) / 2 of MoCo v2. Plain MoCo always uses "views".
        moco.directions = ml_collections.config_dict.placeholder(str)
        return {"moco": moco}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        positive_integer(config, "moco.queue_size")
        if config.moco.temperature <= 0:
            fail("moco.temperature", config.moco.temperature, "must be > 0")
        common.check_momentum(config, "moco")
        one_of(config, "moco.directions", DIRECTIONS)

    def check_run(self, config: ml_collections.ConfigDict) -> None:
        keys_per_step = config.batch_size * (1 if self.query_and_key(config) else 2)
        if config.moco.queue_size < keys_per_step:
            fail("moco.queue_size", config.moco.queue_size,
                 f"must be >= the {keys_per_step} keys enqueued per step")

    @staticmethod
    def query_and_key(config: ml_collections.ConfigDict) -> bool:
        """The authors' pairs: queries from view a only, keys from view b only."""
        return config.amcl.enabled and config.moco.directions == "query_and_key"

    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        return common.ssl_model(config, batch_norm=False, temperature=temperature_module)

    def init_extra(self, config, variables, rng):
        return dict(common.target_copy(variables),
                    **common.init_queue(rng, common.num_heads(config), config.moco.queue_size,
                                        config.projector.out_dim))

    def apply_loss(self, model, config, params, batch_stats, extra, views, rng) -> MethodOutput:
        del rng
        query_and_key = self.query_and_key(config)
        query_views, key_views = (views[:1], views[1:]) if query_and_key else (views, views)
        queries, batch_stats = common.apply_to_views(model, params, batch_stats, query_views,
                                                     num_views=None)  # (C, V, B, D)
        keys, target_batch_stats = common.target_forward(model, extra, key_views)
        queue = jax.lax.stop_gradient(extra["queue"])
        if query_and_key:
            loss, metrics = losses.amcl_queue_contrastive(
                queries[:, 0], keys[:, 0], queue, self.temperature_fn(config, params),
                directions="query_and_key", **self.loss_options(config))
            new_keys = keys[:, 0]
        else:
            q_a, q_b = queries[:, 0], queries[:, 1]
            k_a, k_b = keys[:, 0], keys[:, 1]
            if config.amcl.enabled:
                temperature_fn = self.temperature_fn(config, params)
                pair_loss = lambda q, k: losses.amcl_queue_contrastive(
                    q, k, queue, temperature_fn, directions="query",
                    **self.loss_options(config))
            else:
                pair_loss = lambda q, k: losses.moco_infonce(q[0], k[0], queue[0],
                                                             config.moco.temperature)
            loss_ab, metrics_ab = pair_loss(q_a, k_b)
            loss_ba, metrics_ba = pair_loss(q_b, k_a)
            loss = 0.5 * (loss_ab + loss_ba)
            metrics = common.mean_metrics(metrics_ab, metrics_ba)
            if not config.amcl.enabled:
                tau = jnp.full((1,), config.moco.temperature, jnp.float32)
                metrics = dict(metrics, tau_pos_mean=tau, tau_neg_mean=tau)
            new_keys = jnp.concatenate([k_a, k_b], axis=1)
        new_queue, new_ptr = common.enqueue(extra["queue"], extra["queue_ptr"],
                                            losses.l2_normalize(new_keys))
        extra = dict(extra, queue=new_queue, queue_ptr=new_ptr,
                     target_batch_stats=target_batch_stats)
        return MethodOutput(loss, metrics, batch_stats, extra)

    @staticmethod
    def temperature_fn(config, params) -> models.BoundTemperature:
        return models.BoundTemperature(temperature_module(config), params["temperature_net"])

    @staticmethod
    def loss_options(config) -> dict:
        """`amcl_queue_contrastive`'s keyword arguments from the config."""
        return dict(beta=config.amcl.beta, omega_dim=config.amcl.omega_dim,
                    negatives=config.amcl.negatives, topk=config.amcl.topk,
                    infonce=config.amcl.infonce, chunk_size=config.amcl.chunk_size)

    def update_extra(self, config, params, extra, step, total_steps):
        return common.update_target(config.moco, total_steps, params, extra, step)
