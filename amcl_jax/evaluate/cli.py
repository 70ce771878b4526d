"""`main.py --mode=linear_probe|knn|figures`: evaluate a pretraining workdir from its config."""

from __future__ import annotations

import ml_collections

from amcl_jax.evaluate import figures, knn_eval, linear_probe


def run_mode(mode: str, workdir: str, *, probe: ml_collections.ConfigDict | None = None,
             knn_k: int | None = None, knn_temperature: float | None = None,
             feature_layer: str = "backbone", step: int | None = None) -> None:
    """Runs one evaluation and prints its headline numbers."""
    if mode == "linear_probe":
        result = linear_probe.run_linear_probe(workdir, probe)
        p = result["protocol"]
        print(f"linear probe top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}%"
              f" ({p['test_split']}, {p['num_test_examples']} images; {p['epochs']} epochs "
              f"{p['optimizer']}, frozen encoder, step {result['checkpoint_step']})  ->  "
              f"{workdir}/{linear_probe.RESULT_FILE}", flush=True)
    elif mode == "knn":
        result = knn_eval.run_knn(workdir, k=knn_k, temperature=knn_temperature,
                                  layer=feature_layer, step=step)
        final = result["knn_top1_final_protocol"]
        print(f"kNN top-1 final {100 * result['knn_top1_final']:.2f}% (step "
              f"{final['checkpoint_step']}, k={final['k']}, T={final['temperature']}, "
              f"{final['feature_layer']}, bank {final['bank_size']})", flush=True)
        best = result["knn_top1_best_over_evaluations"]
        if best is not None:
            bp = result["knn_top1_best_over_evaluations_protocol"]
            print(f"kNN top-1 best over {bp['num_evaluations']} pretraining evaluations "
                  f"{100 * best:.2f}% (step {bp['step']}, k={bp['k']}, T={bp['temperature']}, "
                  f"backbone)  ->  {workdir}/{knn_eval.RESULT_FILE}", flush=True)
    elif mode == "figures":
        paths = figures.make_figures(workdir, step=step)
        print("figures: " + ", ".join(paths.values()), flush=True)
    else:
        raise ValueError(f"--mode={mode!r}: allowed values are train, linear_probe, knn, figures")
