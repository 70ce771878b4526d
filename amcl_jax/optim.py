"""Optimizers and learning-rate schedules (optax).

The learning rate in the config is the one for the global batch: nothing here rescales it by the
batch size or the device count, so a run means the same thing on 1 CPU and on a pod.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Parameters whose last path element has one of these names are biases or normalisation scales:
# LARS leaves them out of weight decay and of trust-ratio scaling (as in SimCLR and BYOL).
_NO_DECAY_NAMES = ("bias", "scale")


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 then cosine decay to 0 (or constant), for the global batch.

    The same curve as `optax.warmup_cosine_decay_schedule(0, base, warmup, total_steps)` (and
    `join_schedules` of a linear warm-up and a constant), kept written out because optax rounds
    differently (pi * step / steps where this has pi * (step / steps)): a third of the steps or
    more get a learning rate a few float32 ulps apart (up to ~2e-7 of the base rate), which
    would change the bits of every measured run; tests/test_optim.py checks both against the
    closed form. Also, optax's cosine refuses total_steps <= warmup; this stays at the base rate.
    """
    base = float(config.optimizer.learning_rate)
    warmup = int(config.optimizer.warmup_steps)
    cosine = config.optimizer.schedule == "cosine"

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = base * step / max(warmup, 1)
        progress = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
        decayed = base * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) if cosine else base
        return jnp.where(step < warmup, warm, decayed)

    return schedule


def decay_mask(params) -> dict:
    """True for the weights that take weight decay: not biases nor BatchNorm/other scales."""

    def is_weight(path, _):
        name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
        return str(name) not in _NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(is_weight, params)


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD (coupled L2 decay on every parameter, as PyTorch's SGD) or LARS, after global
    gradient-norm clipping when `optimizer.grad_clip_norm` > 0 (forms.py: unset, 1.0 in the
    authors' AMCL form, else 0)."""
    schedule = learning_rate_schedule(config, total_steps)
    opt = config.optimizer
    tx = _optimizer(opt, schedule)
    clip = config.optimizer.grad_clip_norm
    if clip > 0:  # Clip the loss gradient before weight decay joins it (as PyTorch's clipping).
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule


def _optimizer(opt: ml_collections.ConfigDict, schedule: optax.Schedule
               ) -> optax.GradientTransformation:
    if opt.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(opt.weight_decay),
            optax.sgd(schedule, momentum=opt.momentum or None),
        )
    elif opt.name == "lars":
        tx = optax.lars(
            schedule,
            weight_decay=opt.weight_decay,
            weight_decay_mask=decay_mask,
            trust_coefficient=opt.lars_trust_coefficient,
            trust_ratio_mask=decay_mask,
            momentum=opt.momentum,
        )
    else:
        raise ValueError(f"config.optimizer.name={opt.name!r}: allowed values are 'sgd', 'lars'")
    return tx
