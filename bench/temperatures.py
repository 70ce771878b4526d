"""Temperatures and similarities over training, per head, from runs' metrics.jsonl.

    python bench/temperatures.py --run "authors=runs/qs_authors" --run "project=runs/qs_project" \
        --title "quickstart" --output docs/results/temperatures_quickstart

For each run (label=workdir): the positive pairs' temperature (mean and min over anchors, per
head), the negatives' (mean per head), and the mean positive and negative cosines, against the
step. Writes OUTPUT.png and OUTPUT.json (the series drawn, and each run's first and last values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import write_json  # noqa: E402

SERIES = ("tau_pos_mean", "tau_pos_min", "tau_neg_mean", "pos_sim", "neg_sim")


def read_series(workdir: str) -> dict[str, dict[str, list[float]]]:
    """{quantity or quantity/headK: {"step": [...], "value": [...]}} of a run's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    series: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.split("/")[0] in SERIES and isinstance(value, (int, float)):
                entry = series.setdefault(key, {"step": [], "value": []})
                entry["step"].append(record["step"])
                entry["value"].append(float(value))
    if not series:
        raise ValueError(f"{workdir}/metrics.jsonl has none of {SERIES}")
    return series


def _label_and_workdir(item: str) -> tuple[str, str | None]:
    """LABEL=WORKDIR split at the first "=" after which an existing folder is named: a label and
    a workdir may both hold "=" (reproduce's rows are named "simclr-amcl-form=project")."""
    for index, char in enumerate(item):
        if char == "=" and os.path.isdir(item[index + 1:]):
            return item[:index], item[index + 1:]
    return item, None


def plot(runs: dict[str, dict], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("tau_pos_mean", "positive tau (mean; dashed: min)"),
              ("tau_neg_mean", "negative tau (mean)"), ("pos_sim", "cosine (solid: positive, "
                                                          "dotted: negative)"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for (quantity, label), ax in zip(panels, axes, strict=True):
        for index, (run, series) in enumerate(runs.items()):
            colour = f"C{index}"
            heads = sorted(k for k in series if k.startswith(quantity + "/"))
            if not heads and quantity not in series:  # E.g. a method without AMCL: no tau.
                continue
            for key in heads or [quantity]:
                ax.plot(series[key]["step"], series[key]["value"], color=colour, alpha=0.8,
                        marker=".", label=run if key == (heads or [quantity])[0] else None)
            if quantity == "tau_pos_mean":
                for key in sorted(k for k in series if k.startswith("tau_pos_min/")):
                    ax.plot(series[key]["step"], series[key]["value"], color=colour, ls="--",
                            alpha=0.6)
            if quantity == "pos_sim" and "neg_sim" in series:
                ax.plot(series["neg_sim"]["step"], series["neg_sim"]["value"], color=colour,
                        ls=":")
        if quantity.startswith("tau"):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=WORKDIR")
    parser.add_argument("--title", default="temperatures over training")
    parser.add_argument("--output", required=True, help="path without extension")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        label, workdir = _label_and_workdir(item)
        if workdir is None:
            parser.error(f"--run {item!r}: expected LABEL=WORKDIR, WORKDIR an existing folder")
        runs[label] = read_series(workdir)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plot(runs, args.title, args.output + ".png")
    summary = {run: {key: {"first": s["value"][0], "last": s["value"][-1],
                           "min": min(s["value"]), "max": max(s["value"])}
                     for key, s in series.items()} for run, series in runs.items()}
    write_json(args.output + ".json", {"title": args.title, "runs": list(runs),
                                       "summary": summary, "series": runs})


if __name__ == "__main__":
    main()
