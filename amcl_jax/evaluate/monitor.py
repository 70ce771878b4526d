"""The pretraining run's evaluator: the kNN monitor (`KnnMonitor`) with the online probe's
accuracy, and the feature extraction every evaluator shares (`extract_features`).

An evaluation records its protocol (k, T, splits, bank and query sizes); the final and best
figures compare only evaluations of one protocol (`comparable_evaluations`).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax import data as data_lib
from amcl_jax.data import device_augment
from amcl_jax.data.inputs import Inputs
from amcl_jax.evaluate import knn
from amcl_jax.models import linear_classifier
from amcl_jax.state import TrainState

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


def comparable_evaluations(history: list[dict[str, Any]],
                           reference: dict[str, Any]) -> list[dict[str, Any]]:
    """The kNN evaluations measured as `reference` was (same k, T, splits and sizes): the final
    and best figures of a run resumed with other `eval.*` settings are not mixed. Entries written
    before evaluations recorded their protocol are taken as comparable (as they always were)."""
    protocol = reference.get("protocol")
    return [e for e in history if e.get("protocol", protocol) == protocol]
