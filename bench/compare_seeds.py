"""Ranks table rows over seeds: each row against a reference row, with Welch's t-test and a
bootstrap interval of the difference of the means.

    python bench/compare_seeds.py docs/results/amcl_forms_cpu/table.json \
        runs/amcl_forms_cpu/table.json --reference simclr-base \
        --rows simclr-amcl-form=project simclr-amcl-form=authors \
        --output docs/results/amcl_forms_cpu/ranking

Reads the per-seed results of `reproduce`'s table.json files (a seed found in several files is
taken from the last one), and writes OUTPUT.json and OUTPUT.md: per row the seeds, mean and
sample std; against the reference the difference of the means, Welch's t, its degrees of freedom
and two-sided p, and a 95% percentile bootstrap interval of the difference (each row's seeds
resampled with replacement, 10,000 times, a fixed generator).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import command_line, write_json  # noqa: E402

BOOTSTRAP_RESAMPLES = 10_000


def per_seed(paths: list[str], metric: str) -> dict[str, dict[int, float]]:
    """{row name: {seed: value}} over the table files, later files winning."""
    rows: dict[str, dict[int, float]] = {}
    for path in paths:
        with open(path) as f:
            table = json.load(f)
        for row in table["rows"]:
            ours = (row.get("ours") or {}).get(metric)
            if not ours:
                continue
            seeds = ours.get("seeds", row["seeds"])
            if len(seeds) != len(ours["per_seed"]):
                raise ValueError(f"{path}: row {row['name']} has {len(ours['per_seed'])} "
                                 f"values for seeds {seeds}")
            rows.setdefault(row["name"], {}).update(zip(seeds, ours["per_seed"], strict=True))
    return rows


def welch(a, b) -> dict[str, float]:
    """Welch's t-test of mean(b) - mean(a): t, Welch-Satterthwaite degrees of freedom, p."""
    result = stats.ttest_ind(b, a, equal_var=False)
    return {"t": float(result.statistic), "df": float(result.df), "p": float(result.pvalue)}


def bootstrap_interval(a, b, *, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(b) - mean(a), each sample resampled on its own."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    means_a = rng.choice(a, (BOOTSTRAP_RESAMPLES, a.size)).mean(axis=1)
    means_b = rng.choice(b, (BOOTSTRAP_RESAMPLES, b.size)).mean(axis=1)
    low, high = np.quantile(means_b - means_a, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def compare(rows: dict[str, dict[int, float]], reference: str, names: list[str]) -> dict:
    missing = [name for name in [reference, *names] if name not in rows]
    if missing:
        raise ValueError(f"rows {missing} have no results; the tables have {sorted(rows)}")
    summary = {}
    base = [rows[reference][s] for s in sorted(rows[reference])]
    for name in [reference, *names]:
        values = [rows[name][s] for s in sorted(rows[name])]
        entry = {"seeds": sorted(rows[name]), "per_seed": values,
                 "mean": float(np.mean(values)),
                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
        if name != reference:
            entry["difference"] = entry["mean"] - float(np.mean(base))
            entry["welch"] = welch(base, values)
            entry["bootstrap_95"] = bootstrap_interval(base, values)
        summary[name] = entry
    return summary


def markdown(summary: dict, reference: str, metric: str) -> str:
    lines = [f"{metric} (%), each row against `{reference}`: Welch's t-test (two-sided) and a "
             f"95% bootstrap interval of the difference of the means "
             f"({BOOTSTRAP_RESAMPLES:,} resamples).", "",
             "| row | seeds | mean +- std | difference | Welch t (df), p | bootstrap 95% |",
             "|---|---|---|---|---|---|"]
    for name, entry in summary.items():
        seeds = ",".join(str(s) for s in entry["seeds"])
        std = "" if entry["std"] is None else f" +- {entry['std']:.2f}"
        if name == reference:
            lines.append(f"| {name} | {seeds} | {entry['mean']:.2f}{std} | (reference) | | |")
            continue
        w, (low, high) = entry["welch"], entry["bootstrap_95"]
        lines.append(f"| {name} | {seeds} | {entry['mean']:.2f}{std} | "
                     f"{entry['difference']:+.2f} | {w['t']:.2f} ({w['df']:.1f}), {w['p']:.3f} "
                     f"| [{low:+.2f}, {high:+.2f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", help="reproduce's table.json files")
    parser.add_argument("--reference", required=True, help="the row the others are compared to")
    parser.add_argument("--rows", nargs="+", required=True)
    parser.add_argument("--metric", default="knn_top1", help="knn_top1 (final) or "
                        "knn_top1_best")
    parser.add_argument("--output", required=True, help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    summary = compare(per_seed(args.tables, args.metric), args.reference, args.rows)
    command = command_line(__file__, argv)
    text = markdown(summary, args.reference, args.metric) + f"\nCommand: `{command}`\n"
    write_json(f"{args.output}.json", {"command": command,
                                       "tables": args.tables, "metric": args.metric,
                                       "reference": args.reference, "rows": summary})
    with open(f"{args.output}.md", "w") as f:
        f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
