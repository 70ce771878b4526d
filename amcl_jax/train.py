"""Pretraining loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom: mesh, input, model and optimizer, update step, checkpoints, evaluation, loop.
One program for one CPU, a GPU box or a TPU pod: the step is jitted over arrays sharded along the
batch axis of a mesh of all devices, so the loss (negatives, temperatures) and the BatchNorm
statistics are computed over the global batch and XLA inserts the communication.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax import data as data_lib
from amcl_jax import forms, knn, methods, optim, program
from amcl_jax.config import validate_config
from amcl_jax.data import device_augment
from amcl_jax.metric_writers import with_wandb
from amcl_jax.models import linear_classifier
from amcl_jax.platform import machine


class NonFiniteError(RuntimeError):
    """A NaN or Inf loss or gradient; the run stops and keeps its last good checkpoint."""


class Preemption:
    """Set by SIGTERM (or `request()`); the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.requested = False

    def request(self, *_) -> None:
        self.requested = True


PREEMPTION = Preemption()


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


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
CONFIG_FILE = "config.json"


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


def state_sha256(state) -> str:
    """Digest of every fully replicated leaf of the train state, stored in each checkpoint's meta
    to catch silent corruption (bit flips that still decode)."""
    leaves = [leaf for leaf in jax.tree.leaves(state)
              if not isinstance(leaf, jax.Array) or leaf.is_fully_replicated]
    return params_sha256(leaves)


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
    """The config a run was started with (written to `workdir/config.json` at start)."""
    from amcl_jax.workdir import read_recorded_config  # Names the file if it cannot be read.

    recorded = read_recorded_config(workdir)
    if recorded is None:
        raise FileNotFoundError(f"{os.path.join(workdir, CONFIG_FILE)} not found: --workdir must "
                                "be a pretraining workdir")
    return ml_collections.ConfigDict(recorded)


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """`jax.jit` compiler options for the model's programs (`program.compiler_options`)."""
    return program.compiler_options(config)


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


# --------------------------------------------------------------------------------------------
# Update step
# --------------------------------------------------------------------------------------------
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


def train_step(state: TrainState, views: jax.Array, labels: jax.Array | None = None, *, model,
               method, tx, schedule, config, total_steps: int | None = None,
               mesh: Mesh | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch of views (V, B, H, W, 3), B split over `mesh`.

    `labels` (B,) feed the online probe (when enabled); `total_steps` (the run's length, for EMA
    momentum ramps and the probe's schedule) defaults to `config.total_steps`. With `mesh`, the
    step is traced under it, so that the methods keep each device's images on that device
    (`methods.common.stack_views`).
    """
    if mesh is not None:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return train_step(state, views, labels, model=model, method=method, tx=tx,
                              schedule=schedule, config=config, total_steps=total_steps)
    if total_steps is None:
        total_steps = max(int(config.total_steps), 1)
    rng = jax.random.fold_in(state.rng, state.step)
    probe, probe_metrics = state.probe, {}
    if state.probe and labels is not None:
        # Features of the encoder before this update, as evaluation computes them.
        features = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                               views[0], method="features")
        probe, probe_metrics = probe_update(state.probe, features, labels,
                                            probe_optimizer(config, total_steps))

    def loss_fn(params):
        out = method.apply_loss(model, config, params, state.batch_stats, state.extra, views, rng)
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


def check_finite(state: TrainState) -> None:
    """Raises NonFiniteError if any update so far saw a non-finite loss or gradient."""
    bad_step = int(jax.device_get(state.nonfinite_step))
    if bad_step >= 0:
        what = "loss" if int(jax.device_get(state.nonfinite_what)) == 1 else "gradient"
        raise NonFiniteError(  # Step numbers as logged: update k takes state.step k-1 to k.
            f"non-finite {what} at step {bad_step + 1}: stopping; parameters are those before "
            "that step and the last good checkpoint is kept (try a lower "
            "optimizer.learning_rate or wider amcl.temperature_bounds)")


class MetricsAverage:
    """The step metrics averaged over a logging interval (not the last step's values).

    `add` sums each step's metrics on the devices in one jitted call (it does not wait for the
    step); `mean` fetches the sums, divides by the number of steps added and starts a new
    interval. `learning_rate` is the last step's: a schedule value, not a measurement.
    """

    LAST_VALUE = ("learning_rate",)

    def __init__(self) -> None:
        self._sum: dict[str, jax.Array] | None = None
        self._last: dict[str, jax.Array] = {}
        self._count = 0
        self._add = jax.jit(lambda total, new: jax.tree.map(jnp.add, total, new))

    def add(self, metrics: dict[str, jax.Array]) -> None:
        averaged = {k: v for k, v in metrics.items() if k not in self.LAST_VALUE}
        self._last = {k: v for k, v in metrics.items() if k in self.LAST_VALUE}
        self._sum = averaged if self._sum is None else self._add(self._sum, averaged)
        self._count += 1

    def mean(self) -> dict[str, float]:
        if not self._count:
            return {}
        sums, last = jax.device_get((self._sum, self._last))
        means = {k: float(v) / self._count for k, v in sums.items()}
        self._sum, self._last, self._count = None, {}, 0
        return {**means, **{k: float(v) for k, v in last.items()}}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
# Feature extraction reports its progress (every ~10%) from this many images on.
PROGRESS_MIN_IMAGES = 20_000


def extract_features(features_fn, variables, images: np.ndarray, labels: np.ndarray, *,
                     config, mesh: Mesh, augment_on: str = "host") -> tuple[np.ndarray, np.ndarray]:
    """Backbone features (N, F) float32 of every example exactly once, gathered on every host.

    `augment_on="device"`, or TensorFlow not installed: the batches come from NumPy
    (`device_augment.eval_iterator`, the same batches without TensorFlow), else from tf.data.
    """
    process_count = jax.process_count()
    sharding = NamedSharding(mesh, P("data"))
    numpy_batches = augment_on == "device" or not data_lib.tensorflow_available()
    iterate = device_augment.eval_iterator if numpy_batches else data_lib.eval_iterator
    batches = iterate(
        images, labels, batch_size=config.eval.batch_size, image_size=config.data.image_size,
        mean=data_lib.dataset_stats(config.data.dataset)[0],
        std=data_lib.dataset_stats(config.data.dataset)[1],
        process_index=jax.process_index(), process_count=process_count)
    feats, labs = [], []
    report = len(images) >= PROGRESS_MIN_IMAGES
    start, done, reported_tenths = time.time(), 0, 0
    for batch in batches:
        local = {k: batch[k] for k in ("image", "label", "mask")}
        glob = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
        out = features_fn(variables, glob["image"])
        gathered = multihost_utils.process_allgather(
            {"f": out, "label": glob["label"], "mask": glob["mask"]}, tiled=True)
        mask = np.asarray(gathered["mask"], bool)
        feats.append(np.asarray(gathered["f"], np.float32)[mask])
        labs.append(np.asarray(gathered["label"])[mask])
        done += int(mask.sum())
        if report and done * 10 // len(images) > reported_tenths:  # Every tenth of the images.
            reported_tenths = done * 10 // len(images)
            elapsed = max(time.time() - start, 1e-9)
            print(f"  features: {done}/{len(images)} images ({100 * done / len(images):.0f}%), "
                  f"{done / elapsed:.0f} images/s, elapsed {elapsed:.0f} s, ETA "
                  f"{(len(images) - done) / max(done / elapsed, 1e-9):.0f} s", flush=True)
    return np.concatenate(feats), np.concatenate(labs)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def fixed_subset(images, labels, limit):
    """A fixed random subset of `limit` examples (all when limit <= 0): folders are class-sorted."""
    if limit <= 0 or limit >= len(images):
        return images, labels
    keep = np.sort(np.random.default_rng(0).permutation(len(images))[:limit])
    return images[keep], labels[keep]


def load_data(config: ml_collections.ConfigDict, split: str, *, for_evaluation: bool = False):
    """(images, labels, num_classes) of `split` as `config.data` says: a uint8 array in memory,
    or the split's `ImageFiles` with `data.streaming`.

    `for_evaluation` (the offline kNN and linear probe): an ImageNet-style dataset
    (`data.evaluates_with_centre_crop`) is loaded at `data.image_size` as its evaluation reads
    it, the shorter side resized to image_size / 0.875 and the centre cropped; other datasets
    as for pretraining.
    """
    centre_crop = for_evaluation and data_lib.evaluates_with_centre_crop(config.data.dataset)
    size = config.data.load_size if config.data.load_size > 0 else None
    return data_lib.load_split(
        config.data.dataset, split, data_dir=config.data.data_dir or None,
        cache_dir=config.data.cache_dir or None, download=config.data.download,
        image_size=config.data.image_size if centre_crop else size,
        corrupt_images=config.data.get("corrupt_images", "skip"),
        streaming=config.data.get("streaming", False), centre_crop=centre_crop)


def monitor_images(config: ml_collections.ConfigDict, images):
    """The kNN monitor's bank or queries: streamed files of an ImageNet-style dataset at native
    size are read as evaluation reads them (centre crop at `data.image_size`). Images held in
    memory stay as loaded: the bank is the pretraining split at `data.load_size`, and the
    queries must be resized as the bank is."""
    if (isinstance(images, data_lib.ImageFiles) and images.size is None
            and data_lib.evaluates_with_centre_crop(config.data.dataset)):
        return data_lib.ImageFiles(images.paths, config.data.image_size, centre_crop=True)
    return images


def total_steps_for(config, num_train_examples: int) -> int:
    if config.total_steps >= 0:
        return int(config.total_steps)
    return int(config.num_epochs) * data_lib.steps_per_epoch(num_train_examples, config.batch_size)


def check_data_sizes(config: ml_collections.ConfigDict, *, num_train: int,
                     bank_labels: np.ndarray, num_queries: int) -> None:
    """Raises ConfigError when the loaded data cannot give what the config asks: a batch larger
    than the training set, k larger than the kNN bank, a bank of fewer than 2 classes."""
    from amcl_jax.config import ConfigError

    if config.batch_size > num_train:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is invalid: data.train_split="
            f"{config.data.train_split!r} has {num_train} examples (data.max_train_examples="
            f"{config.data.max_train_examples}); use a batch_size <= {num_train}")
    if config.eval.knn_k > len(bank_labels):
        raise ConfigError(
            f"config.eval.knn_k={config.eval.knn_k} is invalid: the kNN bank (data."
            f"eval_train_split={config.data.eval_train_split!r}, eval.max_bank_examples="
            f"{config.eval.max_bank_examples}) has {len(bank_labels)} labelled examples; "
            f"use eval.knn_k <= {len(bank_labels)}")
    classes = len(np.unique(bank_labels))
    if classes < 2:
        raise ConfigError(
            f"config.data.eval_train_split={config.data.eval_train_split!r} is invalid: its "
            f"labelled examples hold {classes} class(es); kNN accuracy and the linear probes "
            "need at least 2 (an image folder needs one subfolder per class)")
    if num_queries < 1:
        raise ConfigError(f"config.data.eval_test_split={config.data.eval_test_split!r} is "
                          "invalid: it has no labelled examples to evaluate")


def _format_bytes(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num_bytes < 1024 or unit == "PiB":
            return f"{num_bytes:.1f} {unit}" if unit != "bytes" else f"{int(num_bytes)} bytes"
        num_bytes /= 1024
    return ""


def check_state_fits(config: ml_collections.ConfigDict, state_shapes) -> None:
    """Raises ConfigError, with an estimate, when the train state (parameters, optimizer and
    method state) plus gradients and updates cannot fit in one device's memory: a failed
    allocation of that size can leave the runtime waiting forever instead of failing."""
    from amcl_jax.config import ConfigError

    nbytes = lambda tree: sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                              for x in jax.tree.leaves(tree))
    param_bytes = nbytes(state_shapes.params)
    needed = nbytes(state_shapes) + 2 * param_bytes  # + gradients and updates.
    device = jax.local_devices()[0]
    try:
        available = int((device.memory_stats() or {}).get("bytes_limit", 0))
        where = f"one {device.platform.upper()} device's memory"
    except Exception:  # noqa: BLE001 (backends without memory statistics)
        available = 0
    if not available:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return
        where = "this machine's memory"
        needed *= jax.local_device_count()  # CPU devices share the host's memory.
    if needed > available:
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state_shapes.params))
        raise ConfigError(
            f"the model does not fit: its {num_params:,} parameters with their gradients and "
            f"optimizer state need at least {_format_bytes(needed)} (activations not counted) "
            f"and {where} is {_format_bytes(available)}; reduce amcl.num_heads="
            f"{config.amcl.num_heads}, projector.hidden_dim={config.projector.hidden_dim}, "
            f"projector.out_dim={config.projector.out_dim}, amcl.temperature_hidden_dim="
            f"{config.amcl.temperature_hidden_dim} or model.width={config.model.width}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pretrains, monitors kNN accuracy, checkpoints and resumes; returns the summary dict.

    The workdir is locked for the run (`workdir.WorkdirLock`: a second process is refused), and
    a workdir with checkpoints is resumed only if `config` continues their training
    (`workdir.check_resume`: otherwise ResumeRefusedError, and nothing is written).
    The run works on its own copy of `config`: the caller's is never written.
    """
    from amcl_jax import workdir as workdir_lib
    from amcl_jax.errors import terminate_on_sigterm

    config = copy.deepcopy(config)
    validate_config(config, num_devices=jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0
    # Until the loop takes SIGTERM as a preemption, SIGTERM (as Ctrl-C) unwinds: the lock is
    # released and the command line prints one line.
    with terminate_on_sigterm(), workdir_lib.WorkdirLock(workdir, enabled=is_chief):
        accepted = workdir_lib.check_resume(config, workdir)
        if accepted and is_chief:
            print(workdir_lib.describe_accepted(accepted), flush=True)
        if is_chief:
            workdir_lib.atomic_write_text(os.path.join(workdir, CONFIG_FILE),  # Form resolved.
                                          forms.resolved_config(config).to_json(indent=2))
        return _train_and_evaluate(config, workdir)


# --------------------------------------------------------------------------------------------
# The run's parts: its inputs, its checkpoints and its evaluator (the kNN monitor)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Inputs:
    """The run's data: the training split, the kNN monitor's bank and queries (uint8 arrays, or
    `ImageFiles` when streamed), and what follows from them."""

    train_images: Any
    train_labels: np.ndarray
    bank_images: Any
    bank_labels: np.ndarray
    query_images: Any
    query_labels: np.ndarray
    num_classes: int
    total_steps: int
    augment_on: str  # Where the views are made: "host" (tf.data) or "device" (jitted).


def load_inputs(config: ml_collections.ConfigDict, workdir: str, *, is_chief: bool) -> Inputs:
    """Loads the splits `config.data` names, applies the subset caps and resolves the run length
    and `data.augment_on`; records `online_probe.num_classes` = -1 as the data's class count."""
    train_images, train_labels, num_classes = load_data(config, config.data.train_split)
    train_images, train_labels = fixed_subset(train_images, train_labels,
                                              config.data.get("max_train_examples", -1))
    if config.data.eval_train_split == config.data.train_split:
        bank_images, bank_labels = train_images, train_labels
    else:
        bank_images, bank_labels, _ = load_data(config, config.data.eval_train_split)
    if np.any(bank_labels < 0):  # STL-10's unlabelled examples (label -1) cannot vote.
        bank_images, bank_labels = bank_images[bank_labels >= 0], bank_labels[bank_labels >= 0]
    bank_images, bank_labels = fixed_subset(bank_images, bank_labels,
                                            config.eval.max_bank_examples)
    query_images, query_labels, _ = load_data(config, config.data.eval_test_split)
    query_images, query_labels = fixed_subset(query_images, query_labels,
                                              config.eval.max_query_examples)
    bank_images, query_images = monitor_images(config, bank_images), monitor_images(
        config, query_images)
    total_steps = total_steps_for(config, len(train_images))
    try:  # Where the views are made: tf.data on the host, or a jitted function on the devices.
        augment_on = device_augment.resolve_augment_on(
            config.data.get("augment_on", "host"), train_images, jax.devices()[0],
            tensorflow_available=data_lib.tensorflow_available())
    except ValueError as e:
        from amcl_jax.config import ConfigError

        raise ConfigError(str(e)) from None
    if config.online_probe.enabled and config.online_probe.num_classes == -1:
        config.online_probe.num_classes = int(num_classes)  # Recorded for load_pretrained.
        if is_chief:
            with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
                f.write(forms.resolved_config(config).to_json(indent=2))
    logging.info("train examples %d, bank %d, queries %d, %d classes, %d steps, views made on "
                 "the %s", len(train_images), len(bank_images), len(query_images), num_classes,
                 total_steps, augment_on)
    return Inputs(train_images, train_labels, bank_images, bank_labels, query_images,
                  query_labels, int(num_classes), total_steps, augment_on)


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


class KnnMonitor:
    """The pretraining evaluator: weighted kNN top-1 (`eval.knn_k`, `eval.knn_temperature`) of
    backbone features, bank and queries from `Inputs`, and the online probe's top-1 on the same
    queries; each evaluation replaces any of the same step in `history["knn"]`, goes to the metric
    writer and is printed."""

    def __init__(self, config: ml_collections.ConfigDict, inputs: Inputs, features_fn, mesh: Mesh,
                 history: dict[str, Any], writer) -> None:
        self.config, self.inputs, self.features_fn, self.mesh = config, inputs, features_fn, mesh
        self.history, self.writer = history, writer

    def protocol(self) -> dict[str, Any]:
        """What an evaluation measured: a resumed run may change `eval.*` and the splits, and
        only evaluations of one protocol are compared (`comparable_evaluations`)."""
        config, inputs = self.config, self.inputs
        return {"k": int(config.eval.knn_k), "temperature": float(config.eval.knn_temperature),
                "bank_split": config.data.eval_train_split, "bank_size": len(inputs.bank_labels),
                "query_split": config.data.eval_test_split,
                "num_queries": len(inputs.query_labels)}

    def __call__(self, step: int, state: TrainState) -> float:
        config, inputs = self.config, self.inputs
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        extract = functools.partial(extract_features, self.features_fn, variables, config=config,
                                    mesh=self.mesh, augment_on=inputs.augment_on)
        bank, bank_y = extract(inputs.bank_images, inputs.bank_labels)
        queries, query_y = extract(inputs.query_images, inputs.query_labels)
        top1 = knn.knn_accuracy(bank, bank_y, queries, query_y, k=config.eval.knn_k,
                                temperature=config.eval.knn_temperature,
                                num_classes=inputs.num_classes)
        entry = {"step": step, "knn_top1": top1, "protocol": self.protocol()}
        probe_text = ""
        if state.probe:
            logits = linear_classifier.logits(jax.device_get(state.probe["params"]), queries)
            entry["online_probe_top1"] = float(np.mean(np.argmax(logits, -1) == query_y))
            probe_text = f", online probe top-1 {100 * entry['online_probe_top1']:.2f}%"
        self.history["knn"] = [e for e in self.history["knn"] if e["step"] != step] + [entry]
        self.writer.write_scalars(step, {k: v for k, v in entry.items()
                                         if k not in ("step", "protocol")})
        print(f"step {step:6d}  kNN top-1 {100 * top1:.2f}% (k={config.eval.knn_k}, "
              f"T={config.eval.knn_temperature}){probe_text}", flush=True)
        return top1


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    is_chief = jax.process_index() == 0

    # ----------------------------------------------------------------------------------------
    # Mesh: one data axis over every device of every host.
    # ----------------------------------------------------------------------------------------
    mesh = program.data_mesh()
    views_sharding = NamedSharding(mesh, P(None, "data"))
    labels_sharding = NamedSharding(mesh, P("data"))

    # ----------------------------------------------------------------------------------------
    # Input.
    # ----------------------------------------------------------------------------------------
    inputs = load_inputs(config, workdir, is_chief=is_chief)
    total_steps = inputs.total_steps
    mean, std = data_lib.dataset_stats(config.data.dataset)

    # ----------------------------------------------------------------------------------------
    # Model and optimizer.
    # ----------------------------------------------------------------------------------------
    check_data_sizes(config, num_train=len(inputs.train_images), bank_labels=inputs.bank_labels,
                     num_queries=len(inputs.query_labels))
    programs = program.build(config, mesh, total_steps)
    state_shapes, state_shardings = programs.state_shapes, programs.state_shardings
    check_state_fits(config, state_shapes)  # Before allocating it.
    state = jax.jit(programs.init_state, out_shardings=state_shardings)()
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    logging.info("model %s, %d parameters", config.model.name, num_params)
    step_fn, features_fn = programs.step, programs.features

    # ----------------------------------------------------------------------------------------
    # Checkpoints: auto-resume from the workdir, past damaged checkpoints.
    # ----------------------------------------------------------------------------------------
    checkpoints = Checkpointer(config, workdir, is_chief=is_chief)
    restored = checkpoints.restore(state_shapes, state_shardings)
    if restored is not None:
        state = restored
    history = checkpoints.history

    # ----------------------------------------------------------------------------------------
    # Evaluator: the kNN monitor, and metric writing.
    # ----------------------------------------------------------------------------------------
    writer = with_wandb(metric_writer(workdir, is_chief=is_chief), config, workdir,
                        is_chief=is_chief)  # W&B too when logging.wandb.enabled.
    if is_chief:
        # The form-dependent fields as the run resolves them (forms.py), not as None.
        hparams = _flat_config(config)
        if config.amcl.enabled:
            hparams.update(forms.resolved(config))
        writer.write_hparams({k: str(v) for k, v in hparams.items()})
    evaluate = KnnMonitor(config, inputs, features_fn, mesh, history, writer)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    start_step = int(jax.device_get(state.step))
    if start_step == 0 and not history["knn"]:
        evaluate(0, state)  # The random-init reference.

    # ----------------------------------------------------------------------------------------
    # Loop: views, update, log, evaluate, checkpoint; SIGTERM checkpoints and stops.
    # ----------------------------------------------------------------------------------------
    view_options = dict(
        global_batch_size=config.batch_size, seed=config.seed,
        augmentations=config.data.augmentations, image_size=config.data.image_size,
        num_views=config.data.num_views, mean=mean, std=std,
        color_jitter_strength=config.data.color_jitter_strength, blur_p=config.data.blur_p,
        solarize_p=config.data.get("solarize_p", 0.0))
    if inputs.augment_on == "device":  # Batches arrive as sharded device arrays.
        batches = device_augment.DeviceViews(inputs.train_images, inputs.train_labels, mesh=mesh,
                                             **view_options).iterator(start_step)
    else:
        batches = data_lib.train_iterator(
            inputs.train_images, inputs.train_labels, start_step=start_step,
            process_index=jax.process_index(), process_count=jax.process_count(), **view_options)

    PREEMPTION.requested = False
    preemption_agreed = PreemptionVote(mesh)
    # One process driving several CPU devices: XLA:CPU's in-process collectives deadlock when many
    # executions of a multi-device program are queued (jaxlib 0.10: the rendezvous aborts the
    # process after 40 s; README Known issues), so there the host waits for each update before
    # dispatching the one after it (at most two queued). Elsewhere dispatch stays unbounded.
    bound_queue = jax.default_backend() == "cpu" and jax.local_device_count() > 1
    previous_loss = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, PREEMPTION.request) if in_main_thread else None
    last_time, last_step = time.time(), start_step
    interval_metrics = MetricsAverage()
    for step in range(start_step + 1, total_steps + 1):
        try:
            batch = next(batches)
        except data_lib.UnreadableImageError:  # A streamed file: stop, keep the checkpoints.
            checkpoints.close()
            raise
        if isinstance(batch["views"], jax.Array):  # Made on the devices, already sharded.
            views, labels = batch["views"], batch["label"]
        else:
            views = jax.make_array_from_process_local_data(views_sharding, batch["views"])
            labels = jax.make_array_from_process_local_data(labels_sharding,
                                                            batch["label"].astype(np.int32))
        state, metrics = step_fn(state, views, labels)
        interval_metrics.add(metrics)
        if bound_queue:
            if previous_loss is not None:
                previous_loss.block_until_ready()
            previous_loss = metrics["loss"]
        if step % config.log_every_steps == 0 or step == total_steps:
            checkpoints.stop_if_nonfinite(state)
            scalars = interval_metrics.mean()
            now = time.time()
            steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
            scalars["steps_per_sec"] = steps_per_sec
            last_time, last_step = now, step
            writer.write_scalars(step, scalars)
            if is_chief:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({"step": step, **scalars}) + "\n")
            # The progress line is ours, not clu's `periodic_actions.ReportProgress`: that module
            # imports TensorFlow (clu 0.0.12), and training must run without it.
            eta = (total_steps - step) / max(steps_per_sec, 1e-9)
            print(f"step {step:6d}/{total_steps}  loss {scalars['loss']:.4f}  "
                  f"lr {scalars['learning_rate']:.4g}  {steps_per_sec:.2f} steps/s  "
                  f"ETA {eta / 60:.1f} min", flush=True)
        if step % config.eval.every_steps == 0 or step == total_steps:
            checkpoints.stop_if_nonfinite(state)
            evaluate(step, state)
        checkpointed = step % config.checkpoint.every_steps == 0 or step == total_steps
        if checkpointed:
            checkpoints.save(step, state)
        # After logging, so the resumed run's metrics.jsonl has every step exactly once.
        if preemption_agreed(PREEMPTION.requested):
            if not checkpointed:
                checkpoints.save(step, state)
            checkpoints.close()
            writer.close()
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous_handler)
            print(f"Preempted: checkpoint saved at step {step}; run the same command to resume.",
                  flush=True)
            return {"preempted": True, "steps": step}
    if in_main_thread:
        signal.signal(signal.SIGTERM, previous_handler)
    checkpoints.stop_if_nonfinite(state)
    if not history["knn"] or history["knn"][-1]["step"] != total_steps:
        evaluate(total_steps, state)
        checkpoints.save(total_steps, state)
    checkpoints.close()
    writer.close()

    # ----------------------------------------------------------------------------------------
    # Summary.
    # ----------------------------------------------------------------------------------------
    final = {e["step"]: e for e in history["knn"]}[total_steps]
    accuracies = {e["step"]: e["knn_top1"]
                  for e in comparable_evaluations(history["knn"], final)}
    summary = {
        "knn_top1": final["knn_top1"],
        "knn_top1_best": max(accuracies.values()),
        # None when the random-init evaluation used other kNN settings than the final one.
        "knn_top1_init": accuracies.get(0),
        "knn_history": history["knn"],
        **({"online_probe_top1": {e["step"]: e for e in history["knn"]}[total_steps].get(
            "online_probe_top1")} if state.probe else {}),
        "steps": total_steps,
        "method": config.method,
        "amcl": bool(config.amcl.enabled),
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "params_sha256": params_sha256(state.params),
        "num_params": num_params,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "machine": machine.machine_record(),
    }
    if is_chief:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def comparable_evaluations(history: list[dict[str, Any]],
                           reference: dict[str, Any]) -> list[dict[str, Any]]:
    """The kNN evaluations measured as `reference` was (same k, T, splits and sizes): the final
    and best figures of a run resumed with other `eval.*` settings are not mixed. Entries written
    before evaluations recorded their protocol are taken as comparable (as they always were)."""
    protocol = reference.get("protocol")
    return [e for e in history if e.get("protocol", protocol) == protocol]


class _LogWriter:
    """Scalars as log lines: the metric writer where clu or TensorFlow is not installed."""

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

    def write_hparams(self, hparams: dict[str, Any]) -> None:
        logging.info("hparams: %s", hparams)

    def close(self) -> None:
        pass


def metric_writer(workdir: str, *, is_chief: bool):
    """clu's default writer (log lines, and TensorBoard events in `workdir` on the chief) when
    clu and TensorFlow are installed, else log lines only; metrics.jsonl is written either way."""
    if data_lib.tensorflow_available():
        try:
            from clu import metric_writers
        except ImportError:
            pass
        else:
            return metric_writers.create_default_writer(workdir, just_logging=not is_chief,
                                                        asynchronous=False)
    return _LogWriter()


class PreemptionVote:
    """Whether any process got SIGTERM; every process gets the same answer at the same step.

    One process: the flag itself. Several: the signal reaches hosts at different moments, so
    each call dispatches a tiny all-reduce of the processes' flags and answers with the one
    dispatched by the previous call (the previous step): all processes read the same vote at
    the same step and stop (and checkpoint, which is collective) together, one step after the
    signal. Reading the previous step's vote waits for that step only, while the step just
    dispatched stays queued; a blocking all-gather of this step's flags would make every host
    wait for each step to finish before it could prepare and dispatch the next.
    """

    def __init__(self, mesh: Mesh):
        self._pending = None
        self._multi_process = jax.process_count() > 1
        if self._multi_process:
            self._flags_sharding = NamedSharding(mesh, P("data"))
            self._any = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))

    def __call__(self, requested: bool) -> bool:
        if not self._multi_process:
            return requested
        local = np.full((jax.local_device_count(),), int(requested), np.int32)
        vote = self._any(jax.make_array_from_process_local_data(self._flags_sharding, local))
        previous, self._pending = self._pending, vote
        return previous is not None and bool(previous)


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


def _flat_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
