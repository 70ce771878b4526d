"""Temperatures as the losses see them.

The `TemperatureFn` protocol (pairs, and optionally a pair grid or gathered pairs), a constant
temperature for baselines and tests, the evaluation of a temperature_fn with its shape checks
(float32 out), and the per-head summaries (`tau_pos_*`, `tau_neg_*`) every AMCL loss reports.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp

from amcl_jax.losses.common import Metrics


class TemperatureFn(Protocol):
    """Maps paired head features to temperatures.

    `__call__(u, v)`: u, v (C, M, D) float32, L2-normalised, anchor first -> (C, M) temperatures.
    Optionally `pair_grid(u, v)`: u (C, A, D), v (C, B, D) -> (C, A, B), the temperature of every
    (anchor row, candidate column) pair, ideally without building an (A, B, 2D) tensor.
    """

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array: ...


class ConstantTemperature:
    """A temperature_fn returning one fixed value for every pair."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u, v (C, M, D) -> (C, M) float32 filled with the value."""
        return jnp.full(u.shape[:2], self.value, dtype=jnp.float32)

    def pair_grid(self, u: jax.Array, v: jax.Array) -> jax.Array:
        """u (C, A, D), v (C, B, D) -> (C, A, B) float32 filled with the value."""
        return jnp.full((u.shape[0], u.shape[1], v.shape[1]), self.value, dtype=jnp.float32)

    def __repr__(self) -> str:
        return f"constant_temperature({self.value})"


def constant_temperature(value: float) -> ConstantTemperature:
    """A temperature_fn (with `pair_grid`) that gives every pair the temperature `value`.

    For baselines (one global temperature) and tests.
    """
    return ConstantTemperature(value)


def _temperatures(temperature_fn: TemperatureFn, u: jax.Array, v: jax.Array) -> jax.Array:
    """temperature_fn(u, v) with a shape check, as float32 (C, M)."""
    tau = jnp.asarray(temperature_fn(u, v)).astype(jnp.float32)
    if tau.shape != u.shape[:2]:
        raise ValueError(
            f"temperature_fn(u, v) must return shape {u.shape[:2]} (C, M), got {tau.shape}"
        )
    return tau


def _pair_grid_temperatures(temperature_fn: TemperatureFn, u: jax.Array, v: jax.Array) -> jax.Array:
    """Temperatures of every (row of u, row of v) pair: u (C, A, D), v (C, B, D) -> (C, A, B).

    Uses `temperature_fn.pair_grid` when it exists; otherwise tiles the pairs to (C, A * B, D) and
    calls temperature_fn (only ever on one chunk of anchors, so A is small).
    """
    num_heads, rows, dim = u.shape
    cols = v.shape[1]
    pair_grid = getattr(temperature_fn, "pair_grid", None)
    if pair_grid is not None:
        tau = jnp.asarray(pair_grid(u, v)).astype(jnp.float32)
        if tau.shape != (num_heads, rows, cols):
            raise ValueError(
                f"temperature_fn.pair_grid(u, v) must return shape {(num_heads, rows, cols)}, "
                f"got {tau.shape}"
            )
        return tau
    u_tiled = jnp.broadcast_to(u[:, :, None, :], (num_heads, rows, cols, dim))
    v_tiled = jnp.broadcast_to(v[:, None, :, :], (num_heads, rows, cols, dim))
    tau = _temperatures(
        temperature_fn,
        u_tiled.reshape(num_heads, rows * cols, dim),
        v_tiled.reshape(num_heads, rows * cols, dim),
    )
    return tau.reshape(num_heads, rows, cols)


def _gathered_temperatures(temperature_fn: TemperatureFn, u: jax.Array, v: jax.Array,
                           index: jax.Array) -> jax.Array:
    """Temperatures of the pairs (u[c, a], v[c, index[c, a, j]]): (C, A, k) float32.

    Uses `temperature_fn.gathered(u, v, index)` when it exists (the pair-score map takes them
    from one matmul of phi features); otherwise gathers the k rows of v per anchor and calls
    temperature_fn on the (C, A * k) pairs, so any `temperature_fn(u, v)` works.
    """
    num_heads, rows, k = index.shape
    gathered = getattr(temperature_fn, "gathered", None)
    if gathered is not None:
        tau = jnp.asarray(gathered(u, v, index)).astype(jnp.float32)
        if tau.shape != index.shape:
            raise ValueError(f"temperature_fn.gathered(u, v, index) must return shape "
                             f"{index.shape}, got {tau.shape}")
        return tau
    v_chosen = jnp.take_along_axis(v, index.reshape(num_heads, rows * k)[..., None], axis=1)
    u_repeated = jnp.repeat(u, k, axis=1)  # Row a * k + j pairs u[a] with its j-th choice.
    return _temperatures(temperature_fn, u_repeated, v_chosen).reshape(num_heads, rows, k)


def _tau_metrics(tau_pos: jax.Array, tau_neg_mean: jax.Array, tau_neg_min: jax.Array,
                 tau_neg_max: jax.Array) -> Metrics:
    """(C, M) per-anchor temperatures -> (C,) summaries, without gradient."""
    sg = jax.lax.stop_gradient
    return {
        "tau_pos_mean": jnp.mean(sg(tau_pos), axis=1),
        "tau_pos_min": jnp.min(sg(tau_pos), axis=1),
        "tau_pos_max": jnp.max(sg(tau_pos), axis=1),
        "tau_neg_mean": jnp.mean(sg(tau_neg_mean), axis=1),
        "tau_neg_min": jnp.min(sg(tau_neg_min), axis=1),
        "tau_neg_max": jnp.max(sg(tau_neg_max), axis=1),
    }
