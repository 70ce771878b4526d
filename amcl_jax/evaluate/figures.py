"""Figures from a checkpoint, as PNG files in `<workdir>/figures/`:

- `temperatures.png`: per head, histograms of the temperature network's tau for positive pairs
  (the two views of one image) and for negative pairs (views of different images). Without AMCL
  there is one global constant tau, drawn as a single line.
- `similarities.png`: per head, histograms of the cosine similarity of positive and negative
  pairs of projections (the paper's Fig. 1 compares these with and without AMCL).
- `features_pca.png` (or `features_tsne.png`): the backbone features of test images in 2-D,
  coloured by class.

Pairs come from two augmented views (the run's own `data.augmentations`) of `num_examples`
test images, encoded in inference mode; negatives are every (anchor, other image's view) pair
of a batch, temperatures for them are evaluated on the first `max_anchors` anchors of each batch.
`figures.json` holds the numbers behind the plots (means, quantiles).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from amcl_jax import data as data_lib
from amcl_jax import methods, models, program
from amcl_jax.checkpoints import load_pretrained
from amcl_jax.evaluate import common
from amcl_jax.methods.simclr import temperature_module


def constant_temperature(config) -> float | None:
    """The method's own global temperature without AMCL (SimCLR's `simclr.temperature`, MoCo's
    `moco.temperature`); None for the methods whose loss has none."""
    if not methods.get_method(config.method).pair_temperatures:
        return None
    return float(config[config.method].temperature)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pair_statistics(config, model, variables, images, labels, *, batch_size: int,
                     max_anchors: int) -> dict[str, np.ndarray]:
    """Positive/negative cosines and temperatures, per head: arrays (C, M_pos) and (C, M_neg)."""
    params = variables["params"]
    # The (C, M, D) pair temperature network of the SimCLR-family losses (Eq. 2.1); other
    # methods' temperature modules (Barlow Twins' per-entry logits) are not drawn here.
    amcl = "temperature_net" in params and methods.get_method(config.method).pair_temperatures
    tau_net = None
    if amcl:
        tau_net = models.BoundTemperature(temperature_module(config), params["temperature_net"])

    @functools.partial(jax.jit, compiler_options=program.compiler_options(config))
    def pairs(variables, views):  # views (2, B, H, W, 3)
        batch = views.shape[1]
        _, z = model.apply(variables, views.reshape((-1,) + views.shape[2:]), train=False)
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)  # (C, 2B, D)
        z_a, z_b = z[:, :batch], z[:, batch:]
        pos_cos = jnp.sum(z_a * z_b, axis=-1)  # (C, B)
        anchors = z_a[:, :max_anchors]
        neg_cos = jnp.einsum("cad,cbd->cab", anchors, z_b)  # (C, A, B); diagonal = positives
        off_diagonal = ~jnp.eye(anchors.shape[1], batch, dtype=bool)
        if tau_net is None:  # A constant (drawn as a line); NaN for a method without one.
            constant = constant_temperature(config)
            tau = jnp.full((1,), np.nan if constant is None else constant, jnp.float32)
            return pos_cos, neg_cos, off_diagonal, tau, tau
        pos_tau = tau_net(z_a, z_b)
        neg_tau = tau_net.pair_grid(anchors, z_b)
        return pos_cos, neg_cos, off_diagonal, pos_tau, neg_tau

    mean, std = data_lib.dataset_stats(config.data.dataset)
    batch_size = min(batch_size, len(images))
    batches = data_lib.train_iterator(
        images, labels, global_batch_size=batch_size, seed=0, start_step=0,
        augmentations=config.data.augmentations, image_size=config.data.image_size,
        num_views=2, mean=mean, std=std, color_jitter_strength=config.data.color_jitter_strength,
        blur_p=config.data.blur_p, solarize_p=config.data.get("solarize_p", 0.0))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("pos_cos", "neg_cos", "pos_tau",
                                                         "neg_tau")}
    for _ in range(max(1, len(images) // batch_size)):
        pos_cos, neg_cos, mask, pos_tau, neg_tau = jax.device_get(
            pairs(variables, next(batches)["views"]))
        out["pos_cos"].append(pos_cos)
        out["neg_cos"].append(neg_cos[:, mask])
        out["pos_tau"].append(np.reshape(pos_tau, (pos_tau.shape[0], -1)))
        out["neg_tau"].append(neg_tau[:, mask] if amcl else np.reshape(neg_tau, (1, -1)))
    return {k: np.concatenate(v, axis=1) for k, v in out.items()} | {"amcl": amcl}


def _histograms(path: str, title: str, pos: np.ndarray, neg: np.ndarray, xlabel: str,
                constant: float | None = None) -> None:
    plt = _pyplot()
    heads = pos.shape[0]
    fig, axes = plt.subplots(1, heads, figsize=(4 * heads, 3.2), squeeze=False)
    for head, ax in enumerate(axes[0]):
        if constant is not None:
            ax.axvline(constant, color="k", label=f"global constant tau = {constant:g}")
        else:
            bins = np.linspace(min(pos[head].min(), neg[head].min()),
                               max(pos[head].max(), neg[head].max()) + 1e-6, 50)
            ax.hist(neg[head], bins=bins, alpha=0.6, density=True, label="negative pairs")
            ax.hist(pos[head], bins=bins, alpha=0.6, density=True, label="positive pairs")
        ax.set_title(f"head {head}")
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _embedding_plot(path: str, features: np.ndarray, labels: np.ndarray, method: str,
                    title: str) -> None:
    if method == "tsne":
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, init="pca", random_state=0,
                      perplexity=min(30.0, max(2.0, (len(features) - 1) / 3))
                      ).fit_transform(features)
    else:
        from sklearn.decomposition import PCA

        points = PCA(n_components=2, random_state=0).fit_transform(features)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6)
    ax.legend(*scatter.legend_elements(), title="class", fontsize=7, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_figures(workdir: str, *, out_dir: str | None = None, step: int | None = None,
                 num_examples: int = 1024, batch_size: int = 256, max_anchors: int = 64,
                 embedding: str = "pca") -> dict[str, Any]:
    """Writes the PNGs (module docstring) and `figures.json`; returns {name: path, ...}."""
    if embedding not in ("pca", "tsne"):
        raise ValueError(f"embedding={embedding!r}: allowed values are 'pca', 'tsne'")
    config, model, variables, ckpt_step = load_pretrained(workdir, step)
    out_dir = out_dir or os.path.join(workdir, "figures")
    os.makedirs(out_dir, exist_ok=True)
    images, labels, _ = common.load_labelled_split(config, config.data.eval_test_split,
                                                   num_examples)
    stats = _pair_statistics(config, model, variables, images, labels, batch_size=batch_size,
                             max_anchors=max_anchors)
    name = f"{config.method}{' + AMCL' if stats['amcl'] else ''} (step {ckpt_step})"
    paths = {
        "temperatures": os.path.join(out_dir, "temperatures.png"),
        "similarities": os.path.join(out_dir, "similarities.png"),
        "features": os.path.join(out_dir, f"features_{embedding}.png"),
    }
    _histograms(paths["temperatures"], f"Per-head temperatures, {name}", stats["pos_tau"],
                stats["neg_tau"], "tau",
                constant=None if stats["amcl"] else constant_temperature(config))
    _histograms(paths["similarities"], f"Pair similarities, {name}", stats["pos_cos"],
                stats["neg_cos"], "cosine similarity")
    features, feature_labels = common.extract(
        config, common.features_fn_for_layer(
            model, "backbone", program.compiler_options(config)), variables, images, labels)
    _embedding_plot(paths["features"], features, feature_labels, embedding,
                    f"Backbone features ({embedding.upper()}), {name}")

    def summary(x: np.ndarray) -> dict[str, list[float]]:
        return {"mean": np.mean(x, axis=1).tolist(),
                "q10": np.quantile(x, 0.1, axis=1).tolist(),
                "q90": np.quantile(x, 0.9, axis=1).tolist()}

    numbers = {"checkpoint_step": int(ckpt_step), "amcl": stats["amcl"],
               "constant_temperature": None if stats["amcl"] else constant_temperature(config),
               "num_examples": int(len(labels)),
               **{key: summary(stats[key]) for key in ("pos_cos", "neg_cos", "pos_tau",
                                                        "neg_tau")},
               "files": {k: os.path.basename(v) for k, v in paths.items()}}
    with open(os.path.join(out_dir, "figures.json"), "w") as f:
        json.dump(numbers, f, indent=2)
    return paths
