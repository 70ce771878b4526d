"""Pretraining loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom: mesh, input, model and optimizer, checkpoints, evaluator, loop, summary.
One program for one CPU, a GPU box or a TPU pod: the step is jitted over arrays sharded along the
batch axis of a mesh of all devices, so the loss (negatives, temperatures) and the BatchNorm
statistics are computed over the global batch and XLA inserts the communication.

The parts live by concern: the train state and online probe in `state.py`, the update step in
`step.py`, the jitted programs in `program.py`, the data in `data/inputs.py`, checkpoints in
`checkpoints.py` and the kNN monitor in `evaluate/monitor.py`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax import data as data_lib
from amcl_jax import forms, program
from amcl_jax import workdir as workdir_lib
from amcl_jax.checkpoints import Checkpointer
from amcl_jax.config import validate_config
from amcl_jax.data import device_augment
from amcl_jax.data.inputs import check_data_sizes, check_state_fits, load_inputs
from amcl_jax.evaluate.monitor import KnnMonitor, comparable_evaluations
from amcl_jax.metric_writers import with_wandb
from amcl_jax.platform import machine
from amcl_jax.state import params_sha256


class Preemption:
    """Set by SIGTERM (or `request()`); the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.requested = False

    def request(self, *_) -> None:
        self.requested = True


PREEMPTION = Preemption()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pretrains, monitors kNN accuracy, checkpoints and resumes; returns the summary dict.

    The workdir is locked for the run (`workdir.WorkdirLock`: a second process is refused), and
    a workdir with checkpoints is resumed only if `config` continues their training
    (`workdir.check_resume`: otherwise ResumeRefusedError, and nothing is written).
    The run works on its own copy of `config`: the caller's is never written.
    """
    from amcl_jax.errors import terminate_on_sigterm

    validate_config(config, num_devices=jax.device_count())
    config = forms.resolve(config)  # A copy whose AMCL form's fields hold their values.
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0
    # Until the loop takes SIGTERM as a preemption, SIGTERM (as Ctrl-C) unwinds: the lock is
    # released and the command line prints one line.
    with terminate_on_sigterm(), workdir_lib.WorkdirLock(workdir, enabled=is_chief):
        accepted = workdir_lib.check_resume(config, workdir)
        if accepted and is_chief:
            print(workdir_lib.describe_accepted(accepted), flush=True)
        if is_chief:
            workdir_lib.record_config(workdir, config)
        return _train_and_evaluate(config, workdir)


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
    probe_classes_from_data = (config.online_probe.enabled
                               and config.online_probe.num_classes == -1)
    inputs = load_inputs(config)
    if probe_classes_from_data and is_chief:  # Recorded for load_pretrained.
        workdir_lib.record_config(workdir, config)
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
        # The AMCL form's fields as the run resolved them, not as None.
        writer.write_hparams({k: str(v) for k, v in _flat_config(config).items()})
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


# --------------------------------------------------------------------------------------------
# Metric writing
# --------------------------------------------------------------------------------------------
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


def _flat_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --------------------------------------------------------------------------------------------
# Preemption across processes
# --------------------------------------------------------------------------------------------
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
