"""Evaluation of pretrained checkpoints: linear probe, kNN, figures; used by `main.py --mode`.

    linear_probe.py  frozen encoder + linear classifier (SGD/LARS, cosine), top-1/top-5
    knn_eval.py      weighted kNN from any workdir, chosen k, T and feature layer
    figures.py       per-head temperature and similarity histograms, PCA / t-SNE of features
    common.py        loading labelled splits and extracting features from a workdir
"""

from amcl_jax.evaluate.common import FEATURE_LAYERS, features_fn_for_layer, load_labelled_split
from amcl_jax.evaluate.figures import make_figures
from amcl_jax.evaluate.knn_eval import run_knn
from amcl_jax.evaluate.linear_probe import (
    default_probe_config,
    evaluate_classifier,
    run_linear_probe,
    train_linear_classifier,
)

__all__ = [
    "FEATURE_LAYERS",
    "default_probe_config",
    "evaluate_classifier",
    "features_fn_for_layer",
    "load_labelled_split",
    "make_figures",
    "run_knn",
    "run_linear_probe",
    "train_linear_classifier",
]
