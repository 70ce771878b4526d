"""Schedules and optimizer masks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amcl_jax import forms, optim
from amcl_jax.config import get_default_config


def test_warmup_cosine_schedule_closed_form():
    config = get_default_config()
    config.optimizer.learning_rate = 0.4
    config.optimizer.warmup_steps = 10
    schedule = optim.learning_rate_schedule(config, total_steps=110)
    for step in [0, 5, 10, 35, 60, 110, 200]:
        if step < 10:
            expected = 0.4 * step / 10
        else:
            progress = min((step - 10) / 100, 1.0)
            expected = 0.4 * 0.5 * (1 + np.cos(np.pi * progress))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("schedule,warmup,total", [("cosine", 10, 110), ("cosine", 0, 1000),
                                                   ("constant", 10, 110), ("constant", 0, 50)])
def test_schedule_is_optaxs_curve_to_float32_rounding(schedule, warmup, total):
    """optax's warm-up cosine (or warm-up then constant) and ours agree with the float64 closed
    form and with each other to float32 rounding: 1e-7 absolute at a base rate of 0.4
    (optim.py says why ours is kept)."""
    config = get_default_config()
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 0.4, warmup
    config.optimizer.schedule = schedule
    ours = optim.learning_rate_schedule(config, total_steps=total)
    if schedule == "cosine":
        library = optax.warmup_cosine_decay_schedule(0.0, 0.4, warmup, total, 0.0)
    else:
        library = optax.join_schedules(
            [optax.linear_schedule(0.0, 0.4, warmup), optax.constant_schedule(0.4)], [warmup])
    steps = np.arange(total + 10)
    progress = np.clip((steps - warmup) / max(total - warmup, 1), 0.0, 1.0)
    after = 0.4 * 0.5 * (1 + np.cos(np.pi * progress)) if schedule == "cosine" else 0.4
    closed_form = np.where(steps < warmup, 0.4 * steps / max(warmup, 1), after)
    ours_values = np.asarray(jax.vmap(ours)(jnp.asarray(steps)))
    library_values = np.asarray(jax.vmap(library)(jnp.asarray(steps)))
    chex.assert_trees_all_close(ours_values, closed_form.astype(np.float32), rtol=1e-6,
                                atol=1e-7)
    chex.assert_trees_all_close(library_values, ours_values, rtol=1e-6, atol=1e-7)


def test_no_warmup_starts_at_base_rate():
    config = get_default_config()
    schedule = optim.learning_rate_schedule(config, total_steps=100)
    np.testing.assert_allclose(float(schedule(0)), config.optimizer.learning_rate, rtol=1e-6)


def test_decay_mask_excludes_biases_and_scales():
    params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 2))},
              "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
              "heads": {"Dense_0": {"kernel": jnp.ones((3, 4, 5)), "bias": jnp.ones((3, 5))}}}
    mask = optim.decay_mask(params)
    assert mask["Conv_0"]["kernel"] and mask["heads"]["Dense_0"]["kernel"]
    assert not mask["BatchNorm_0"]["scale"] and not mask["BatchNorm_0"]["bias"]
    assert not mask["heads"]["Dense_0"]["bias"]


def test_lars_leaves_bias_without_decay_or_trust_ratio():
    config = get_default_config()
    config.optimizer.name = "lars"
    config.optimizer.grad_clip_norm = 0.0  # The update rule alone.
    config.optimizer.learning_rate = 1.0
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.5
    tx, _ = optim.build_optimizer(config, total_steps=10)
    params = {"Dense_0": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Bias: plain SGD step of the gradient (no decay, no trust ratio).
    np.testing.assert_allclose(updates["Dense_0"]["bias"], -1.0, rtol=1e-6)
    # Kernel: decayed gradient scaled by the trust ratio eta * ||w|| / ||g + wd w||.
    g = 1.0 + 0.5 * 2.0
    ratio = 1e-3 * np.linalg.norm(np.full((2, 2), 2.0)) / np.linalg.norm(np.full((2, 2), g))
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -ratio * g, rtol=1e-5)


def test_sgd_matches_pytorch_style_coupled_decay():
    config = get_default_config()
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 0.01
    tx, _ = optim.build_optimizer(forms.resolve(config), total_steps=1000)
    w = jnp.array([1.0, -2.0])
    state = tx.init(w)
    buf = np.zeros(2)
    w_ref = np.array([1.0, -2.0])
    for _ in range(3):
        g = jnp.array([0.5, 0.25])
        updates, state = tx.update(g, state, w)
        w = w + updates
        d = np.array([0.5, 0.25]) + 0.01 * w_ref
        buf = 0.9 * buf + d
        w_ref = w_ref - 0.1 * buf
    # The cosine decay over 1000 steps moves the rate by < 1e-5 relative in 3 steps.
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-4)
