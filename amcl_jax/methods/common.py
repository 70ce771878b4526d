"""Pieces shared by the methods: the model's parts, one pass over the views, EMA targets, the
MoCo queue.

State that is not trained by the optimizer (momentum-network params and BatchNorm statistics, the
MoCo queue and its pointer) lives in the method's `extra` pytree, so the trainer checkpoints and
restores it with the rest of the train state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from amcl_jax import models
from amcl_jax.fields import fail, one_of
from amcl_jax.models import SSLModel
from amcl_jax.platform import cpu
from amcl_jax.sharding import stack_views, unstack_views

# The parts of the model a momentum (EMA) network copies; the predictor and the temperature
# network exist only online.
TARGET_MODULES = ("encoder", "projector")
MOMENTUM_SCHEDULES = ("constant", "cosine")


def batch_norm_layout(config: ml_collections.ConfigDict) -> dict[str, int]:
    """`model.batch_norm_groups` resolved: {} for global statistics (1), else the groups (-1: one
    per device of the whole run) and the rows of one group in each view's block of
    `batch_size` rows, as keyword arguments of the encoders and heads."""
    groups = int(config.model.batch_norm_groups)
    if groups == -1:
        groups = jax.device_count()
    if groups == 1:
        return {}
    if groups < 1 or config.batch_size % groups:
        raise ValueError(f"model.batch_norm_groups={config.model.batch_norm_groups} resolves to "
                         f"{groups} groups, which must be >= 1 and divide batch_size="
                         f"{config.batch_size}")
    return {"batch_norm_groups": groups, "batch_norm_group_rows": config.batch_size // groups}


def xla_cpu_ynnpack(config: ml_collections.ConfigDict) -> str:
    """`model.xla_cpu_ynnpack`; a config written before the field existed gets its default."""
    return config.model.get("xla_cpu_ynnpack", cpu.DEFAULT_XLA_CPU_YNNPACK)


def cpu_fusion_barriers(config: ml_collections.ConfigDict) -> bool:
    """`model.cpu_fusion_barriers`; a config written before the field existed gets them (True)."""
    return config.model.get("cpu_fusion_barriers", True)


def build_encoder(config: ml_collections.ConfigDict) -> nn.Module:
    return models.build_encoder(
        config.model.name, width=config.model.width, stem=config.model.stem,
        dtype=jnp.dtype(config.model.dtype),
        cpu_fusion_barriers=cpu_fusion_barriers(config),
        remat=bool(config.model.get("remat", False)), **batch_norm_layout(config))


def num_heads(config: ml_collections.ConfigDict) -> int:
    """C: `amcl.num_heads` with AMCL, 1 without."""
    return int(config.amcl.num_heads) if config.amcl.enabled else 1


def projector(config: ml_collections.ConfigDict, *, batch_norm: bool,
              last_batch_norm: bool = False) -> models.MultiHeadMLP:
    return models.MultiHeadMLP(
        num_heads=num_heads(config), hidden_dim=config.projector.hidden_dim,
        out_dim=config.projector.out_dim, num_layers=config.projector.num_layers,
        batch_norm=batch_norm, last_batch_norm=last_batch_norm,
        dtype=jnp.dtype(config.model.dtype), **batch_norm_layout(config))


def predictor(config: ml_collections.ConfigDict) -> models.MultiHeadMLP:
    """Linear(D, hidden) - BN - ReLU - Linear(hidden, D) per head (SimSiam's and BYOL's)."""
    return models.MultiHeadMLP(
        num_heads=num_heads(config), hidden_dim=config.predictor.hidden_dim,
        out_dim=config.projector.out_dim, num_layers=2, batch_norm=True, last_batch_norm=False,
        shared_input=False, dtype=jnp.dtype(config.model.dtype), **batch_norm_layout(config))


def ssl_model(config: ml_collections.ConfigDict, *, batch_norm: bool,
              last_batch_norm: bool = False, with_predictor: bool = False,
              temperature: Callable[[ml_collections.ConfigDict], nn.Module] | None = None
              ) -> SSLModel:
    """The method's model: the encoder, its projector (`batch_norm`, `last_batch_norm` as in
    `projector`), the predictor if `with_predictor`, and `temperature(config)`'s network when
    AMCL is on."""
    return SSLModel(
        build_encoder(config),
        projector(config, batch_norm=batch_norm, last_batch_norm=last_batch_norm),
        predictor=predictor(config) if with_predictor else None,
        temperature_net=(temperature(config) if temperature is not None and config.amcl.enabled
                         else None))


# --------------------------------------------------------------------------------------------
# Views in, views out: one encoder pass over every view, each device on its own images
# --------------------------------------------------------------------------------------------
def apply_to_views(model: SSLModel, params, batch_stats, views: jax.Array, *,
                   method: str = "projections", num_views: int | None = 2) -> tuple[Any, Any]:
    """One training-mode pass of `model` over every view at once (BatchNorm on batch statistics).

    Args:
      views: (V, B, H, W, 3) float32; stacked by `stack_views` so that each device encodes its
        own images of every view. `num_views`: the V required (None: any).
      method: the `SSLModel` method applied, whose outputs are head outputs (C, V * B, D):
        "projections", or "forward" (projections, predictions).

    Returns:
      the outputs unstacked, each (C, V, B, D) float32, and the updated batch statistics.
    """
    outputs, mutated = model.apply(
        {"params": params, "batch_stats": batch_stats},
        stack_views(views, num_views=num_views), train=True, method=method,
        mutable=["batch_stats"])
    outputs = jax.tree.map(lambda x: unstack_views(x, views.shape[0], axis=1), outputs)
    return outputs, mutated.get("batch_stats", batch_stats)


def mean_metrics(*metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return jax.tree.map(lambda *m: sum(m) / len(m), *metrics)


# --------------------------------------------------------------------------------------------
# Momentum (EMA) networks
# --------------------------------------------------------------------------------------------
def target_copy(variables: dict) -> dict[str, Any]:
    """The EMA network's initial state: copies of the online encoder and projector variables."""
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    return {
        "target_params": copy({k: params[k] for k in TARGET_MODULES}),
        "target_batch_stats": copy({k: batch_stats[k] for k in TARGET_MODULES
                                    if k in batch_stats}),
    }


def check_momentum(config: ml_collections.ConfigDict, section: str) -> None:
    """The EMA fields of `section` (MoCo's, BYOL's): momentum in [0, 1], a known schedule."""
    if not 0 <= config[section].momentum <= 1:
        fail(f"{section}.momentum", config[section].momentum, "must be in [0, 1]")
    one_of(config, f"{section}.momentum_schedule", MOMENTUM_SCHEDULES)


def ema_momentum(base: float, schedule: str, step: jax.Array, total_steps: int) -> jax.Array:
    """EMA momentum at `step`: `base` ("constant"), or BYOL's cosine ramp from base to 1
    over `total_steps` ("cosine"): 1 - (1 - base) (cos(pi step / total) + 1) / 2."""
    if schedule == "constant":
        return jnp.float32(base)
    if schedule != "cosine":
        raise ValueError(f"momentum_schedule must be one of {MOMENTUM_SCHEDULES}, got {schedule!r}")
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_update(target: Any, online: Any, momentum: jax.Array | float) -> Any:
    """target <- momentum * target + (1 - momentum) * online, leaf by leaf (same tree).

    optax's Polyak average with step size 1 - momentum: for momentum in [0.5, 1] both 1 - m
    and 1 - (1 - m) are exact in floating point, so it gives the same bits as that formula.
    """
    return optax.incremental_update(online, target, 1.0 - momentum)


def update_target(config_section: ml_collections.ConfigDict, total_steps: int, params,
                  extra: dict, step: jax.Array) -> dict:
    """`extra` with its `target_params` moved towards the online encoder and projector."""
    momentum = ema_momentum(config_section.momentum, config_section.momentum_schedule, step,
                            total_steps)
    online = {k: params[k] for k in TARGET_MODULES}
    return dict(extra, target_params=ema_update(extra["target_params"], online, momentum))


def target_forward(model: SSLModel, extra: dict, views: jax.Array) -> tuple[jax.Array, Any]:
    """The momentum network's projections (C, V, B, D) of views (V, B, H, W, 3), gradient
    stopped, and its new batch stats.

    It runs in training mode (batch statistics), as the key / target encoder of MoCo and BYOL.
    """
    projections, batch_stats = apply_to_views(model, extra["target_params"],
                                              extra["target_batch_stats"], views, num_views=None)
    return jax.lax.stop_gradient(projections), batch_stats


# --------------------------------------------------------------------------------------------
# MoCo queue
# --------------------------------------------------------------------------------------------
def init_queue(rng: jax.Array, num_heads: int, size: int, dim: int) -> dict[str, jax.Array]:
    """A queue of `size` random unit keys per head: `queue` (C, K, D) float32, `queue_ptr` ()."""
    keys = jax.random.normal(rng, (num_heads, size, dim), jnp.float32)
    # Divided by the norm, not losses.l2_normalize: the bits of the initial queue that every
    # measured MoCo run started from (the two round differently).
    keys = keys / jnp.linalg.norm(keys, axis=-1, keepdims=True)
    return {"queue": keys, "queue_ptr": jnp.zeros((), jnp.int32)}


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First in, first out: the M new keys replace the M oldest, wrapping around the end.

    Args:
      queue: (C, K, D); row `ptr` is the oldest key, rows ptr-1, ptr-2, ... (mod K) the newest.
      ptr: () int32 in [0, K).
      keys: (C, M, D), M <= K; keys[:, 0] is enqueued first.

    Returns:
      the new queue (C, K, D) (rows ptr .. ptr + M - 1 mod K replaced) and (ptr + M) mod K.
    """
    size, count = queue.shape[1], keys.shape[1]
    if count > size:
        raise ValueError(f"cannot enqueue {count} keys into a queue of {size}")
    rows = (ptr + jnp.arange(count)) % size
    return queue.at[:, rows].set(keys.astype(queue.dtype)), (ptr + count) % size
