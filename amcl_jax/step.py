"""The update step: one optimizer update of the train state on a global batch of views.

`program.build` jits `train_step` over a mesh (views and labels split along the batch axis);
the loss is written on whole global arrays and XLA inserts the cross-device communication.
A non-finite loss or gradient freezes the state at the last good update (`state.check_finite`
raises on it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from amcl_jax.state import TrainState, probe_optimizer, probe_update


def _flatten_metrics(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-head (C,) metrics become `name/head{c}` scalars plus a head-mean `name`."""
    flat = {}
    for name, value in metrics.items():
        value = jnp.asarray(value, jnp.float32)
        if value.ndim == 0:
            flat[name] = value
        else:
            flat[name] = jnp.mean(value)
            for head in range(value.shape[0]):
                flat[f"{name}/head{head}"] = value[head]
    return flat


def _params_sharded(config) -> bool:
    """`model.shard_params` on a mesh: the state holds each large parameter split over devices."""
    return (bool(config.model.get("shard_params", False))
            and not jax.sharding.get_abstract_mesh().empty)


def _whole_parameters(params):
    """FSDP: every device computes with whole parameters, gathered where they are used.

    Left to itself, GSPMD may instead keep a parameter split and move the batch to it (every
    device then runs its layer on the global batch: ViT-L at 4096 per view asked for 944 GB of
    temporaries per v5e chip). Constraining the parameters to be replicated at their use makes
    the gather explicit; the gradient's transpose is then an all-reduce that XLA slices back to
    each device's part of the optimizer state.
    """
    return jax.lax.with_sharding_constraint(params, jax.sharding.PartitionSpec())


def train_step(state: TrainState, views: jax.Array, labels: jax.Array | None = None, *, model,
               method, tx, schedule, config, total_steps: int | None = None,
               mesh: Mesh | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch of views (V, B, H, W, 3), B split over `mesh`.

    `labels` (B,) feed the online probe (when enabled); `total_steps` (the run's length, for EMA
    momentum ramps and the probe's schedule) defaults to `config.total_steps`. With `mesh`, the
    step is traced under it, so that the methods keep each device's images on that device
    (`sharding.stack_views`).
    """
    if mesh is not None:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return train_step(state, views, labels, model=model, method=method, tx=tx,
                              schedule=schedule, config=config, total_steps=total_steps)
    if total_steps is None:
        total_steps = max(int(config.total_steps), 1)
    rng = jax.random.fold_in(state.rng, state.step)
    whole = _whole_parameters if _params_sharded(config) else lambda params: params
    probe, probe_metrics = state.probe, {}
    if state.probe and labels is not None:
        # Features of the encoder before this update, as evaluation computes them.
        features = model.apply({"params": whole(state.params), "batch_stats": state.batch_stats},
                               views[0], method="features")
        probe, probe_metrics = probe_update(state.probe, features, labels,
                                            probe_optimizer(config, total_steps))

    def loss_fn(params):
        out = method.apply_loss(model, config, whole(params), state.batch_stats, state.extra,
                                views, rng)
        return out.loss, out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(jnp.add, state.params, updates)
    extra = method.update_extra(config, params, out.extra, state.step, total_steps)

    loss_finite = jnp.isfinite(loss)
    grads_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    healthy = (state.nonfinite_step < 0) & loss_finite & grads_finite
    first_bad = (state.nonfinite_step < 0) & ~healthy
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(healthy, n, o), new, old)
    new_state = dataclasses.replace(
        state,
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(out.batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        extra=keep(extra, state.extra),
        probe=keep(probe, state.probe),
        nonfinite_step=jnp.where(first_bad, state.step, state.nonfinite_step),
        nonfinite_what=jnp.where(first_bad, jnp.where(loss_finite, 2, 1), state.nonfinite_what),
    )
    metrics = dict(_flatten_metrics(out.metrics), **probe_metrics, loss=loss,
                   learning_rate=schedule(state.step))
    return new_state, metrics
