"""Checkpoints of the train state in `workdir/checkpoints` (Orbax), resume past damaged ones,
and loading a pretraining run's encoder for evaluation and export.

Each checkpoint step holds the whole `state.TrainState` and a JSON `meta` (the kNN history and
a digest of the state). Resuming takes the newest checkpoint that restores and matches its
digest; newer damaged ones are moved to `workdir/damaged_checkpoints` (`restore_newest_good`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax import forms, methods, optim
from amcl_jax.state import (
    NonFiniteError,
    TrainState,
    check_finite,
    create_train_state,
    state_sha256,
)
from amcl_jax.workdir import CONFIG_FILE, read_recorded_config


def checkpoint_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """Orbax manager of `workdir/checkpoints`; each step holds the `state` and a JSON `meta`."""
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, state_shapes,
                       state_shardings) -> tuple[TrainState, dict[str, Any]]:
    """The train state and meta (kNN history) saved at `step`, placed with `state_shardings`."""
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          state_shapes, state_shardings)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


class DamagedCheckpointError(RuntimeError):
    """No checkpoint in the workdir could be restored."""


def _why_restore_failed(error: Exception) -> str:
    """An Orbax/TensorStore restore error in one short line."""
    reason = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
    return f"{type(error).__name__}: {reason[:200]}"


def restore_newest_good(manager: ocp.CheckpointManager, workdir: str, state_shapes,
                        state_shardings) -> tuple[int, TrainState, dict[str, Any]] | None:
    """(step, state, meta) of the newest checkpoint that restores and matches its digest.

    Newer checkpoints that fail (truncated or corrupted files) are reported and moved to
    `workdir/damaged_checkpoints/<step>`, so training continues from the good one and can save
    those steps again. If none restores, nothing is moved and DamagedCheckpointError is raised
    (a changed config, e.g. another model, fails every checkpoint the same way).
    """
    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, meta = restore_checkpoint(manager, step, state_shapes, state_shardings)
            expected = meta.pop("state_sha256", None)
            if expected is not None and state_sha256(state) != expected:
                raise ValueError("contents do not match the digest written with them")
        except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
            from amcl_jax.errors import silence_failed_restore_noise

            silence_failed_restore_noise()  # The failed restore's threads, torn down.
            failures.append((step, _why_restore_failed(e)))
            continue
        for bad_step, why in failures:
            target = os.path.join(workdir, "damaged_checkpoints", str(bad_step))
            # One line per skipped step, on stdout (the log would repeat it on stderr).
            print(f"Checkpoint at step {bad_step} is damaged ({why}); moved to {target}; "
                  f"resuming from step {step} instead", flush=True)
            if jax.process_index() == 0:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                shutil.move(os.path.join(str(manager.directory), str(bad_step)), target)
        if failures:
            multihost_utils.sync_global_devices("amcl_jax: damaged checkpoints moved")
            manager.reload()
        return step, state, meta
    if failures:
        raise DamagedCheckpointError(
            f"no checkpoint in {workdir}/checkpoints could be restored (newest, step "
            f"{failures[0][0]}: {failures[0][1]}); if the config changed, use a new --workdir")
    return None


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was started with (written to `workdir/config.json` at start), its AMCL
    form's fields resolved (an older file may record None for them, or no `amcl.form`)."""
    recorded = read_recorded_config(workdir)  # Names the file if it cannot be read.
    if recorded is None:
        raise FileNotFoundError(f"{os.path.join(workdir, CONFIG_FILE)} not found: --workdir must "
                                "be a pretraining workdir")
    return forms.resolve(ml_collections.ConfigDict(recorded))


def load_pretrained(workdir: str, step: int | None = None):
    """(config, model, variables, step) of a pretraining run's checkpoint (newest by default).

    `variables` = {"params", "batch_stats"}, replicated on all devices; use
    `model.apply(variables, images, method="features")` for backbone features.
    """
    config = load_config(workdir)
    method = methods.get_method(config.method)
    model = method.build_model(config)
    tx, _ = optim.build_optimizer(config, total_steps=1)
    manager = checkpoint_manager(workdir, config.checkpoint.max_to_keep)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    shapes = jax.eval_shape(functools.partial(create_train_state, config, model, method, tx))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), shapes)
    from amcl_jax.errors import silence_checkpoint_noise

    silence_checkpoint_noise(after_failure=False)  # A failed read's threads print as it fails.
    try:
        state, _ = restore_checkpoint(manager, step, shapes, shardings)
    except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many kinds)
        silence_checkpoint_noise()  # Leave without the interpreter's shutdown (exit_on_error).
        raise DamagedCheckpointError(
            f"the checkpoint at step {step} in {workdir}/checkpoints cannot be restored "
            f"({_why_restore_failed(e)}); its files are damaged, or config.json does not match "
            f"them (steps there: {sorted(manager.all_steps())})") from None
    manager.close()
    return config, model, {"params": state.params, "batch_stats": state.batch_stats}, step


class Checkpointer:
    """The train state and the kNN history in `workdir/checkpoints`: auto-resume from the newest
    good checkpoint (damaged newer ones are moved aside, `restore_newest_good`), saves that
    refuse a state which saw a non-finite value, and `close` on every way out (the last save
    finishes writing)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, is_chief: bool):
        from amcl_jax.errors import silence_checkpoint_noise

        silence_checkpoint_noise(after_failure=False)  # A failed save's (a full disk's).
        self.manager = checkpoint_manager(workdir, config.checkpoint.max_to_keep)
        self.workdir, self.is_chief = workdir, is_chief
        self.history: dict[str, Any] = {"knn": []}

    def restore(self, state_shapes, state_shardings) -> TrainState | None:
        """The newest good checkpoint's state (and its history into `self.history`), or None."""
        restored = restore_newest_good(self.manager, self.workdir, state_shapes, state_shardings)
        if restored is None:
            return None
        latest, state, self.history = restored
        logging.info("resumed from step %d", latest)
        print(f"Resumed from checkpoint at step {latest}", flush=True)
        if self.is_chief:  # Drop metrics logged after that checkpoint by the interrupted run.
            _truncate_metrics(os.path.join(self.workdir, "metrics.jsonl"), latest)
        return state

    def stop_if_nonfinite(self, state: TrainState) -> None:
        try:
            check_finite(state)
        except NonFiniteError:
            self.close()  # The last good checkpoint finishes writing.
            raise

    def save(self, step: int, state: TrainState) -> None:
        self.stop_if_nonfinite(state)  # Never write a checkpoint from a broken state.
        meta = dict(copy.deepcopy(self.history), state_sha256=state_sha256(state))
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _truncate_metrics(path: str, last_step: int) -> None:
    """Keeps the metrics.jsonl records of steps <= last_step (a resumed run rewrites the rest)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # A line cut short by a kill.
            continue
    if len(kept) != len(lines):
        with open(path, "w") as f:
            f.writelines(kept)
