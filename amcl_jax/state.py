"""The train state: one pytree holding everything a run needs to continue (params, batch stats,
optimizer state, method state such as the MoCo queue or EMA params, the online probe), how a
fresh one is made, its digests, and the check that no update saw a non-finite value.

The online linear probe lives in the state too: a linear classifier trained with SGD on
stop-gradient backbone features during pretraining (`probe_update`, called by the train step).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from amcl_jax.models import linear_classifier


class NonFiniteError(RuntimeError):
    """A NaN or Inf loss or gradient; the run stops and keeps its last good checkpoint."""


# --------------------------------------------------------------------------------------------
# Train state
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: one pytree, checkpointed whole."""

    step: jax.Array  # () int32: optimizer updates applied so far.
    params: Any
    batch_stats: Any
    opt_state: Any
    extra: Any  # Method state: MoCo queue, EMA params... ({} for SimCLR).
    rng: jax.Array  # (2,) uint32 raw PRNG key, folded with the step inside the update.
    # Step of the first non-finite loss/gradient (-1: none yet) and which: 1 loss, 2 gradient.
    # Once set, updates are frozen so the state stays the last good one.
    nonfinite_step: jax.Array
    nonfinite_what: jax.Array
    # Online linear probe {"params": {"kernel", "bias"}, "opt_state"}; {} when disabled.
    probe: Any = dataclasses.field(default_factory=dict)


def params_sha256(params) -> str:
    """SHA-256 over every parameter's path, dtype, shape and bytes, in sorted path order."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        value = np.asarray(jax.device_get(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(value.dtype).encode() + str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def state_sha256(state) -> str:
    """Digest of every fully replicated leaf of the train state, stored in each checkpoint's meta
    to catch silent corruption (bit flips that still decode)."""
    leaves = [leaf for leaf in jax.tree.leaves(state)
              if not isinstance(leaf, jax.Array) or leaf.is_fully_replicated]
    return params_sha256(leaves)


def create_train_state(config: ml_collections.ConfigDict, model, method, tx) -> TrainState:
    """A fresh train state: initialised params, batch stats, optimizer and method state."""
    init_rng, state_rng, extra_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    size = config.data.image_size
    variables = model.init(init_rng, jnp.zeros((2, size, size, 3), jnp.float32), train=False)
    params = variables["params"]
    probe = {}
    if config.online_probe.enabled:
        features = jax.eval_shape(
            lambda: model.apply(variables, jnp.zeros((2, size, size, 3)), method="features"))
        probe_params = init_probe(features.shape[-1], config.online_probe.num_classes)
        probe = {"params": probe_params,
                 "opt_state": probe_optimizer(config, total_steps=1).init(probe_params)}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
        extra=method.init_extra(config, variables, extra_rng), rng=state_rng,
        nonfinite_step=jnp.full((), -1, jnp.int32), nonfinite_what=jnp.zeros((), jnp.int32),
        probe=probe)


def check_finite(state: TrainState) -> None:
    """Raises NonFiniteError if any update so far saw a non-finite loss or gradient."""
    bad_step = int(jax.device_get(state.nonfinite_step))
    if bad_step >= 0:
        what = "loss" if int(jax.device_get(state.nonfinite_what)) == 1 else "gradient"
        raise NonFiniteError(  # Step numbers as logged: update k takes state.step k-1 to k.
            f"non-finite {what} at step {bad_step + 1}: stopping; parameters are those before "
            "that step and the last good checkpoint is kept (try a lower "
            "optimizer.learning_rate or wider amcl.temperature_bounds)")


# --------------------------------------------------------------------------------------------
# Online linear probe
# --------------------------------------------------------------------------------------------
def init_probe(num_features: int, num_classes: int) -> dict[str, jax.Array]:
    """Zero-initialised linear classifier (`models.linear_classifier`): kernel (F, K), bias (K,)."""
    if num_classes < 2:
        raise ValueError(f"online_probe.num_classes must be >= 2, got {num_classes}")
    return linear_classifier.init(num_features, num_classes)


def probe_optimizer(config: ml_collections.ConfigDict, total_steps: int):
    """SGD with momentum, cosine decay from `online_probe.learning_rate` over the run."""
    schedule = optax.cosine_decay_schedule(config.online_probe.learning_rate, max(total_steps, 1))
    return optax.sgd(schedule, momentum=config.online_probe.momentum)


def probe_update(probe: dict, features: jax.Array, labels: jax.Array, tx
                 ) -> tuple[dict, dict[str, jax.Array]]:
    """One SGD step of the probe on stop-gradient features (B, F); labels (B,), -1 = none."""
    features = jax.lax.stop_gradient(features.astype(jnp.float32))
    valid = (labels >= 0).astype(jnp.float32)
    (loss, logits), grads = jax.value_and_grad(linear_classifier.cross_entropy, has_aux=True)(
        probe["params"], features, labels)
    updates, opt_state = tx.update(grads, probe["opt_state"], probe["params"])
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * valid
    metrics = {"probe_loss": loss,
               "probe_train_top1": jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1.0)}
    new_probe = {"params": optax.apply_updates(probe["params"], updates), "opt_state": opt_state}
    return new_probe, metrics
