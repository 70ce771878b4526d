"""kNN top-1 over training for table rows, from a `reproduce` workdir: each row's mean over its
seeds at every evaluation, the gap of each row to a reference row at every evaluation, and a
figure.

    python bench/knn_curves.py runs/amcl_forms_cpu_long --reference simclr-base \
        --rows simclr-amcl-form=project --output docs/results/amcl_forms_cpu_long/knn_curves

Reads `<workdir>/runs/<row>/seed<N>/summary.json` (its `knn_history`), which a run writes when
it ends: a run still going is left out. Each step's mean is over the seeds whose history has it
(they are listed beside it). Writes OUTPUT.json, OUTPUT.md and OUTPUT.png; OUTPUT.json keeps
every seed's history, so a later call can add new runs to ones whose folders are gone:

    python bench/knn_curves.py runs/new_workdir --previous OUTPUT.json ...

takes each (row, seed) from the workdir where it ran there, from OUTPUT.json otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import command_line, write_json  # noqa: E402


def histories(workdir: str, row: str, previous: dict | None = None
              ) -> dict[int, dict[int, float]]:
    """{seed: {step: kNN top-1 in %}} of `row`'s runs under `workdir`, and of those recorded in
    `previous` (an earlier report's "histories") that the workdir does not hold;
    FileNotFoundError naming the folder when neither has any."""
    folder = os.path.join(workdir, "runs", row)
    out = {int(seed): {int(step): value for step, value in history.items()}
           for seed, history in (previous or {}).get(row, {}).items()}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name, "summary.json")
        if not (name.startswith("seed") and os.path.exists(path)):
            continue
        with open(path) as f:
            summary = json.load(f)
        out[int(name[len("seed"):])] = {int(e["step"]): 100 * float(e["knn_top1"])
                                        for e in summary.get("knn_history", [])}
    if not out:
        raise FileNotFoundError(f"{folder}: no seed<N>/summary.json (row {row!r} not run here"
                                + (" nor in --previous)" if previous is not None else ")"))
    return dict(sorted(out.items()))


def curve(runs: dict[int, dict[int, float]]) -> list[dict]:
    """Per step: the mean, min and max over the seeds that reached it, and which seeds."""
    steps = sorted({step for history in runs.values() for step in history})
    out = []
    for step in steps:
        seeds = sorted(s for s, history in runs.items() if step in history)
        values = [runs[s][step] for s in seeds]
        out.append({"step": step, "mean": statistics.mean(values), "min": min(values),
                    "max": max(values), "seeds": seeds})
    return out


def gaps(runs: dict[int, dict[int, float]], reference: dict[int, dict[int, float]]
         ) -> list[dict]:
    """Per step the row's mean minus the reference's over the seeds both reached, and the
    per-seed differences (paired by seed)."""
    out = []
    steps = sorted({step for history in runs.values() for step in history})
    for step in steps:
        seeds = sorted(s for s in runs if step in runs[s] and step in reference.get(s, {}))
        if not seeds:
            continue
        per_seed = [runs[s][step] - reference[s][step] for s in seeds]
        out.append({"step": step, "gap": statistics.mean(per_seed), "per_seed": per_seed,
                    "seeds": seeds})
    return out


def plot(curves: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, points in curves.items():
        steps = [p["step"] for p in points]
        ax.plot(steps, [p["mean"] for p in points], marker="o", label=row)
        ax.fill_between(steps, [p["min"] for p in points], [p["max"] for p in points],
                        alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("kNN top-1 over training: mean over seeds, band min-max")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _signed(value: float) -> str:
    """+1.25, -0.50; +0.00 for a difference that is zero up to rounding (not -0.00)."""
    return f"{round(value, 6) + 0.0:+.2f}"


def markdown(report: dict) -> str:
    reference = report["reference"]
    lines = [f"kNN top-1 (%) at every evaluation, mean over seeds (min-max); gap: the row minus "
             f"`{reference}` over the seeds both reached, paired by seed.", ""]
    for row, points in report["curves"].items():
        gap_of = {g["step"]: g for g in report["gaps"].get(row, [])}
        lines += [f"**{row}**", "", "| step | seeds | mean (min-max) | gap to reference |",
                  "|---|---|---|---|"]
        for p in points:
            gap = gap_of.get(p["step"])
            gap_text = "" if gap is None else (
                f"{_signed(gap['gap'])} ({', '.join(map(_signed, gap['per_seed']))})")
            lines.append(f"| {p['step']} | {','.join(map(str, p['seeds']))} | {p['mean']:.2f} "
                         f"({p['min']:.2f}-{p['max']:.2f}) | {gap_text} |")
        lines.append("")
    lines.append(f"Command: `{report['command']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="a `reproduce` workdir (its runs/<row>/seed<N>)")
    parser.add_argument("--reference", required=True, help="the row every gap is taken to")
    parser.add_argument("--rows", nargs="+", required=True, help="the other rows")
    parser.add_argument("--output", required=True, help="path without extension")
    parser.add_argument("--previous", help="an earlier OUTPUT.json: its runs that the workdir "
                        "does not hold are added")
    args = parser.parse_args(argv)
    previous = None
    if args.previous:
        with open(args.previous) as f:
            previous = json.load(f).get("histories", {})
    runs = {row: histories(args.workdir, row, previous) for row in [args.reference, *args.rows]}
    report = {
        "command": command_line(__file__, argv),
        "reference": args.reference,
        "histories": {row: {str(seed): {str(step): value for step, value in history.items()}
                            for seed, history in r.items()} for row, r in runs.items()},
        "curves": {row: curve(r) for row, r in runs.items()},
        "gaps": {row: gaps(runs[row], runs[args.reference]) for row in args.rows},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json(args.output + ".json", report)
    with open(args.output + ".md", "w") as f:
        f.write(markdown(report))
    plot(report["curves"], args.output + ".png")
    print(f"wrote {args.output}.json, .md, .png")
    return report


if __name__ == "__main__":
    main()
