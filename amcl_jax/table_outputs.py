"""A reproduced table's outputs: `table.json`, `table.md` (with the protocol in words) and
`table.png` (ours beside the published numbers)."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from amcl_jax.tables import Table


def protocol_text(config: ml_collections.ConfigDict, scale: str, linear_probe: bool) -> str:
    cap = lambda n, what: f"all {what}" if n <= 0 else f"{n} {what}"  # noqa: E731
    train_size = config.data.get("max_train_examples", -1)
    bank = config.eval.max_bank_examples
    if config.data.eval_train_split == config.data.train_split and train_size > 0:
        # The trainer's bank is then the pretraining subset itself (train.py).
        bank = train_size if bank <= 0 else min(bank, train_size)
        bank_text = f"the {bank} pretraining images"
    else:
        bank_text = f"{cap(bank, 'images')} of `{config.data.eval_train_split}`"
    epochs = (f"{config.num_epochs} epochs" if config.total_steps < 0
              else f"{config.total_steps} steps")
    text = (
        f"Scale `{scale}`: pretraining on {config.data.dataset} "
        f"({cap(train_size, 'training images')} of split `{config.data.train_split}`), "
        f"{config.model.name} (width {config.model.width}, {config.model.stem} stem) at "
        f"{config.data.image_size}x{config.data.image_size}, batch {config.batch_size}, {epochs}, "
        f"{config.optimizer.name} with a {config.optimizer.schedule} schedule; every row "
        f"starts from its method's own config (heads, learning rate of the released code). "
        f"Metric: weighted kNN top-1 (%) with "
        f"k={config.eval.knn_k}, T={config.eval.knn_temperature}, cosine similarity on "
        f"L2-normalised backbone features, bank = {bank_text}, queries = "
        f"{cap(config.eval.max_query_examples, 'images')} of `{config.data.eval_test_split}`, "
        f"evaluated every {config.eval.every_steps} steps and at the end; 'best' is the best "
        f"over those evaluations (the paper's protocol), 'final' the last. Mean +- sample std "
        f"(ddof=1) over seeds. Published numbers: the paper's CIFAR-10, ResNet-18, 800-epoch "
        f"results (~ marks values read off the poster's plots, +-0.2)."
    )
    if linear_probe:
        text += (" Linear probe: frozen encoder (inference-mode BatchNorm), standardised "
                 "un-augmented backbone features, SGD + cosine, top-1/top-5 on the test split.")
    if scale != "full":
        text += (f" The `{scale}` scale is far smaller than the paper's: compare rows with each "
                 "other, not with the published column.")
    return text


def _fmt(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if stats["std"] is None:
        return f"{stats['mean']:.2f} (1 seed)"
    return f"{stats['mean']:.2f} +- {stats['std']:.2f}"


def _fmt_published(published: dict[str, Any] | None) -> str:
    if published is None:
        return "-"
    text = ("~" if published["approximate"] else "") + f"{published['mean']:.2f}"
    if published["std"] is not None:
        text += f" +- {published['std']:.2f}"
    return text


def _row_label(row: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    cells = [row["method"], "yes" if row["amcl"] else "no"]
    cells += [str(row["overrides"].get(c, "")) for c in columns]
    return cells


def write_outputs(document: dict[str, Any], table: Table, workdir: str) -> None:
    with open(os.path.join(workdir, "table.json"), "w") as f:
        json.dump(document, f, indent=2)
    columns = tuple(table.columns)
    has_labels = any(r["label"] for r in document["rows"])
    header = ["method", "AMCL", *[c.split(".")[-1] for c in columns], *["row"] * has_labels,
              "kNN top-1 best (ours)", "kNN top-1 final (ours)", "published"]
    has_probe = any(r["ours"] and "linear_probe_top1" in r["ours"] for r in document["rows"])
    if has_probe:
        header[-1:-1] = ["linear top-1 (ours)", "linear top-5 (ours)"]
    lines = [f"# {document['title']}", "", document["protocol"], ""]
    if document["note"]:
        lines += [document["note"], ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in document["rows"]:
        ours = row["ours"] or {}
        cells = _row_label(row, columns) + [row["label"]] * has_labels
        if row["status"] != "done":
            cells += [row["status"], "-"]
        else:
            cells += [_fmt(ours["knn_top1_best"]), _fmt(ours["knn_top1"])]
        if has_probe:
            cells += [_fmt(ours.get("linear_probe_top1")), _fmt(ours.get("linear_probe_top5"))]
        published = row["published"]
        pub = _fmt_published(published)
        if published and published.get("note"):
            pub += f" ({published['note']})"
        cells.append(pub)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{document['command']}`", ""]
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write("\n".join(lines))
    plot_table(document, table, os.path.join(workdir, "table.png"))


def plot_table(document: dict[str, Any], table: Table, path: str) -> None:
    """Ours (mean +- std, solid) vs published (hollow markers): a line per series over
    `table.plot_x` values, or horizontal bars per row when the table has no x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["rows"]
    metric = "knn_top1_best"
    if table.plot_x:
        xs = list(dict.fromkeys(str(r["overrides"].get(table.plot_x)) for r in rows))
        series: dict[str, list[dict]] = {}
        for r in rows:
            key = f"{r['method']}{' + AMCL' if r['amcl'] else ''}"
            series.setdefault(key, []).append(r)
        # Below full scale our numbers sit far under the paper's: separate panels keep both
        # readable.
        together = document["scale"] == "full"
        fig, axes = plt.subplots(1, 1 if together else 2, figsize=(7.5 if together else 11, 4.5),
                                 squeeze=False)
        ax, ax_published = axes[0][0], axes[0][0 if together else 1]
        for i, (key, members) in enumerate(series.items()):
            color = f"C{i % 10}"
            points = [(xs.index(str(r["overrides"].get(table.plot_x))), r) for r in members]
            done = [(x, r["ours"][metric]) for x, r in points if r["ours"]]
            if done:
                ax.errorbar([x for x, _ in done], [s["mean"] for _, s in done],
                            yerr=[s["std"] or 0.0 for _, s in done], color=color, marker="o",
                            capsize=3, label=f"{key} (ours)")
            published = [(x, r["published"]) for x, r in points if r["published"]]
            if published:
                ax_published.plot([x for x, _ in published], [p["mean"] for _, p in published],
                                  color=color, marker="s", markerfacecolor="none",
                                  linestyle="--", label=f"{key} (published)")
        if not together:
            ax_published.set_xticks(range(len(xs)), xs)
            ax_published.set_xlabel(table.plot_x.split(".")[-1])
            ax_published.set_title("published (the paper's protocol)", fontsize=9)
            ax_published.set_ylabel("kNN top-1 (%)")
            if ax_published.get_legend_handles_labels()[0]:
                ax_published.legend(fontsize=7)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(table.plot_x.split(".")[-1])
    else:
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.5))
        labels = [r["label"] or r["name"] for r in rows]
        for y, r in enumerate(rows):
            if r["ours"]:
                s = r["ours"][metric]
                ax.barh(y, s["mean"], xerr=s["std"] or 0.0, color="C0", capsize=3,
                        label="ours" if y == 0 or "ours" not in
                        ax.get_legend_handles_labels()[1] else None)
            if r["published"]:
                ax.plot(r["published"]["mean"], y, "s", color="C3", markerfacecolor="none",
                        label="published" if "published" not in
                        ax.get_legend_handles_labels()[1] else None)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xlabel("")
    ax.set_ylabel("kNN top-1 (%), best over evaluations") if table.plot_x else ax.set_xlabel(
        "kNN top-1 (%), best over evaluations")
    ax.set_title(f"{document['title']}\n(ours, scale: {document['scale']})", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
