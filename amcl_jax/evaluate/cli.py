"""`main.py --mode=linear_probe|knn|figures`: evaluate a pretraining workdir from its config."""

from __future__ import annotations

from typing import Any

import ml_collections

from amcl_jax.errors import UsageError
from amcl_jax.evaluate import figures, knn_eval, linear_probe


def _on(protocol: dict[str, Any]) -> str:
    """' on cifar100' when the evaluation read another dataset than the pretraining one."""
    dataset = protocol.get("dataset")
    return f" on {dataset}" if dataset != protocol.get("pretraining_dataset") else ""


def run_mode(mode: str, workdir: str, *, probe: ml_collections.ConfigDict | None = None,
             knn_k: int | None = None, knn_temperature: float | None = None,
             feature_layer: str = "backbone", step: int | None = None,
             eval_dataset: str | None = None, eval_data_dir: str | None = None,
             config_overrides: dict[str, Any] | None = None) -> None:
    """Runs one evaluation and prints its headline numbers.

    eval_dataset, eval_data_dir: other data (knn, linear_probe); config_overrides: the
    `--config.<field>` values given, evaluation fields only (`common.EVALUATION_FIELDS`).
    """
    data = {"eval_dataset": eval_dataset, "eval_data_dir": eval_data_dir,
            "config_overrides": config_overrides}
    if mode == "linear_probe":
        result = linear_probe.run_linear_probe(workdir, probe, **data)
        p = result["protocol"]
        print(f"linear probe top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}%"
              f"{_on(p)} ({p['test_split']}, {p['num_test_examples']} images, "
              f"{p['num_classes']} classes; {p['epochs']} epochs "
              f"{p['optimizer']}, frozen encoder, step {result['checkpoint_step']})  ->  "
              f"{workdir}/{result['result_file']}", flush=True)
    elif mode == "knn":
        result = knn_eval.run_knn(workdir, k=knn_k, temperature=knn_temperature,
                                  layer=feature_layer, step=step, **data)
        final = result["knn_top1_final_protocol"]
        print(f"kNN top-1 final {100 * result['knn_top1_final']:.2f}%{_on(final)} (step "
              f"{final['checkpoint_step']}, k={final['k']}, T={final['temperature']}, "
              f"{final['feature_layer']}, bank {final['bank_size']})  ->  "
              f"{workdir}/{result['result_file']}", flush=True)
        best = result["knn_top1_best_over_evaluations"]
        if best is not None:
            bp = result["knn_top1_best_over_evaluations_protocol"]
            print(f"kNN top-1 best over {bp['num_evaluations']} pretraining evaluations "
                  f"{100 * best:.2f}% (step {bp['step']}, k={bp['k']}, T={bp['temperature']}, "
                  f"backbone)", flush=True)
    elif mode == "figures":
        if config_overrides:
            field = next(iter(config_overrides))
            raise UsageError(f"--config.{field}: --mode=figures reads no --config overrides "
                             "(it draws --workdir's run as config.json records it)")
        paths = figures.make_figures(workdir, step=step)
        print("figures: " + ", ".join(paths.values()), flush=True)
    else:
        raise ValueError(f"--mode={mode!r}: allowed values are train, linear_probe, knn, figures")
