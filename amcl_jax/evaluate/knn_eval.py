"""kNN evaluation of any pretraining workdir, with the k, T and feature layer of your choice.

Two figures are reported, each labelled with how it was measured:

- `knn_top1_final`: the evaluated checkpoint (the newest unless `step` is given), with the k, T
  and layer asked for here, the bank being the labelled examples of `data.eval_train_split`
  and the queries `data.eval_test_split` (capped as the monitor was, unless overridden);
- `knn_top1_best_over_evaluations`: the best of the kNN monitor's evaluations during
  pretraining (the paper's "best test accuracy over epochs"), with the monitor's own k, T,
  backbone features and bank/query caps, read from the run's history (None on another
  dataset, which the monitor never saw).

On another dataset (`eval_dataset`, `common.evaluation_configs`) the result is written to
`knn_<dataset>.json` instead of `knn.json`.

Protocol of the paper (and the defaults): weighted kNN, k = 200, T = 0.1, cosine similarity on
L2-normalised backbone features; each of the k neighbours votes exp(sim / T) for its class.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from amcl_jax import program
from amcl_jax.checkpoints import checkpoint_manager, load_pretrained
from amcl_jax.errors import UsageError
from amcl_jax.evaluate import common, knn
from amcl_jax.evaluate.monitor import comparable_evaluations
from amcl_jax.workdir import atomic_write_json

RESULT_FILE = "knn.json"


def training_knn_history(workdir: str) -> list[dict[str, Any]]:
    """The monitor's [{"step", "knn_top1"}, ...]: from summary.json, else the newest checkpoint."""
    summary_path = os.path.join(workdir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            return list(json.load(f).get("knn_history", []))
    manager = checkpoint_manager(workdir)
    try:
        step = manager.latest_step()
        if step is None:
            return []
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return list(meta["meta"].get("knn", []))
    except Exception:  # An unreadable meta only costs the best-over-evaluations figure.
        return []
    finally:
        manager.close()


def run_knn(workdir: str, *, k: int | None = None, temperature: float | None = None,
            layer: str = "backbone", step: int | None = None, max_bank_examples: int | None = None,
            max_query_examples: int | None = None, write: bool = True,
            eval_dataset: str | None = None, eval_data_dir: str | None = None,
            config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """kNN top-1 of a checkpoint (see the module docstring); writes `workdir/knn.json`.

    k, temperature, max_*_examples: None means the (overridden) pretraining config's `eval.*`.
    layer: "backbone", "head<c>" or "heads" (see `common.features_fn_for_layer`).
    eval_dataset, eval_data_dir, config_overrides: other data, and evaluation fields
    (`common.evaluation_configs`).
    Invalid arguments raise UsageError before anything is computed or written; the result file
    is replaced atomically (an existing one stays whole until the new one is complete).
    """
    start = time.time()
    if k is not None and k < 1:
        raise UsageError(f"--knn_k={k} is invalid: must be >= 1")
    if temperature is not None and not temperature > 0:
        raise UsageError(f"--knn_temperature={temperature} is invalid: must be > 0")
    overrides = dict(config_overrides or {})
    for flag, value, field in (("knn_k", k, "eval.knn_k"),
                               ("knn_temperature", temperature, "eval.knn_temperature")):
        if value is not None and field in overrides:
            raise UsageError(f"--{flag}={value} and --config.{field}={overrides[field]!r} both "
                             "set it: give one")
    common.check_overrides(overrides)  # Before reading the checkpoint.
    config, model, variables, ckpt_step = load_pretrained(workdir, step)
    config, data_config = common.evaluation_configs(
        config, eval_dataset=eval_dataset, eval_data_dir=eval_data_dir, overrides=overrides,
        num_devices=jax.device_count())
    k = int(config.eval.knn_k if k is None else k)
    temperature = float(config.eval.knn_temperature if temperature is None else temperature)
    features_fn = common.features_fn_for_layer(model, layer, program.compiler_options(config))
    size = config.data.image_size  # Traced only: checks the layer (head index) before the data.
    jax.eval_shape(features_fn, variables, jnp.zeros((1, size, size, 3), jnp.float32))
    max_bank = config.eval.max_bank_examples if max_bank_examples is None else max_bank_examples
    max_query = (config.eval.max_query_examples if max_query_examples is None
                 else max_query_examples)
    bank_images, bank_labels, num_classes = common.load_labelled_split(
        data_config, config.data.eval_train_split, max_bank)
    query_images, query_labels, _ = common.load_labelled_split(
        data_config, config.data.eval_test_split, max_query)
    if k > len(bank_labels):
        raise UsageError(f"--knn_k={k} is invalid: the kNN bank (data.eval_train_split="
                         f"{config.data.eval_train_split!r}, max_bank_examples={max_bank}) has "
                         f"{len(bank_labels)} labelled examples")
    if len(np.unique(bank_labels)) < 2 or len(query_labels) == 0:
        raise UsageError(f"kNN needs a bank of >= 2 classes and some queries: the bank has "
                         f"{len(np.unique(bank_labels))} class(es), the queries "
                         f"{len(query_labels)} examples")
    bank, bank_y = common.extract(config, features_fn, variables, bank_images, bank_labels)
    queries, query_y = common.extract(config, features_fn, variables, query_images, query_labels)
    top1 = knn.knn_accuracy(bank, bank_y, queries, query_y, k=k, temperature=temperature,
                            num_classes=num_classes)
    history = training_knn_history(workdir)
    # Only the evaluations measured as the last one was (a resumed run may change eval.*), and
    # none on another dataset (the monitor measured the pretraining data).
    comparable = (comparable_evaluations(history, max(history, key=lambda e: e["step"]))
                  if history and not common.other_data(config, data_config) else [])
    best = max(comparable, key=lambda e: e["knn_top1"]) if comparable else None
    recorded = {} if best is None else best.get("protocol", {})
    result = {
        "knn_top1_final": top1,
        "knn_top1_final_protocol": {
            "checkpoint_step": int(ckpt_step), "k": k, "temperature": temperature,
            "feature_layer": layer, "similarity": "cosine (L2-normalised features)",
            "weighting": "exp(sim / T)", "bank_split": config.data.eval_train_split,
            "bank_size": int(len(bank_y)), "query_split": config.data.eval_test_split,
            "num_queries": int(len(query_y)), "num_classes": int(num_classes),
            "dataset": data_config.data.dataset, "pretraining_dataset": config.data.dataset,
            "image_size": int(config.data.image_size),
        },
        "knn_top1_best_over_evaluations": None if best is None else best["knn_top1"],
        "knn_top1_best_over_evaluations_protocol": None if best is None else {
            "step": int(best["step"]), "num_evaluations": len(comparable),
            "k": int(recorded.get("k", config.eval.knn_k)),
            "temperature": float(recorded.get("temperature", config.eval.knn_temperature)),
            "feature_layer": "backbone",
            "bank_split": recorded.get("bank_split", config.data.eval_train_split),
            "max_bank_examples": int(config.eval.max_bank_examples),
            "max_query_examples": int(config.eval.max_query_examples),
            **{key: recorded[key] for key in ("bank_size", "query_split", "num_queries")
               if key in recorded},
            "note": "the pretraining monitor's evaluations (best over steps, as the paper)",
        },
        "knn_history": history,
        "seconds": time.time() - start,
        "result_file": common.result_file(RESULT_FILE, config, data_config),
    }
    if write and jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, result["result_file"]), result)
    return result


def brute_force_knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, *,
                            k: int, temperature: float, num_classes: int) -> np.ndarray:
    """A plain NumPy reference of the weighted kNN vote (tests compare `knn` against it)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    predictions = []
    for query in queries:
        sims = bank @ query
        order = np.argsort(-sims, kind="stable")[: min(k, len(bank))]
        votes = np.zeros(num_classes)
        np.add.at(votes, bank_labels[order], np.exp(sims[order] / temperature))
        predictions.append(int(np.argmax(votes)))
    return np.asarray(predictions, np.int32)
