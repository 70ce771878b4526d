"""Runs the README's quickstart variants over seeds and records kNN accuracy and wall time.

    python bench/quickstart.py --seeds 0,1,2,3,4 --output bench/results/quickstart_cpu.json

Each (variant, seed) is `python main.py --config=configs/quickstart.py[:args] [overrides]
--config.seed=S` in a fresh workdir (so nothing is resumed), timed end to end (process start,
data, compile, training, kNN). Seeds run in the outer loop and the report is rewritten after
every run, so an interrupted measurement keeps what it finished and `--resume` continues it.
The report gives each variant's per-seed figures and their mean and sample standard deviation;
the README's quickstart table comes from this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from amcl_jax import methods  # noqa: E402
from bench.common import write_json  # noqa: E402

VARIANTS = {
    # Every registered method without AMCL ("simclr", "moco", ..., "vicreg") ...
    **{name: [f"--config=configs/quickstart.py:method={name},amcl=false"]
       for name in methods.available()},
    # ... and AMCL-SimCLR's forms.
    "amcl_authors": ["--config=configs/quickstart.py", "--config.amcl.form=authors"],
    "amcl_project": ["--config=configs/quickstart.py", "--config.amcl.form=project"],
    "amcl_project_max": ["--config=configs/quickstart.py", "--config.amcl.form=project",
                         "--config.amcl.negatives=max"],
}
DEFAULT_VARIANTS = ("simclr", "amcl_authors", "amcl_project")
FIGURES = ("knn_top1_init", "knn_top1", "knn_top1_best", "wall_seconds")


def summarise(runs: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Mean and sample std (ddof=1; 0 for one run) of each figure over a variant's seeds."""
    out = {}
    for figure in FIGURES:
        values = [run[figure] for run in runs.values()]
        out[figure] = {"mean": statistics.mean(values),
                       "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                       "min": min(values), "max": max(values), "seeds": len(values)}
    return out


def run_one(args: list[str], seed: int, main_py: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        start = time.time()
        subprocess.run([sys.executable, main_py, *args, f"--config.seed={seed}",
                        f"--workdir={workdir}"], cwd=os.path.dirname(main_py), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.time() - start
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
    return {"wall_seconds": round(seconds, 1), "knn_top1_init": summary["knn_top1_init"],
            "knn_top1": summary["knn_top1"], "knn_top1_best": summary["knn_top1_best"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench/results/quickstart_cpu.json")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated subset of: " + ",".join(VARIANTS))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2,3,4")
    parser.add_argument("--resume", action="store_true",
                        help="keep the (variant, seed) runs already in --output")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="extra config override for every run (e.g. total_steps=20)")
    parser.add_argument("--main", default=os.path.join(ROOT, "main.py"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; allowed: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    overrides = [f"--config.{item}" for item in args.set]
    report = {"results": {}}
    if args.resume and os.path.exists(args.output):
        with open(args.output) as f:
            report = json.load(f)
    report.update({"command": " ".join(["python", "bench/quickstart.py", *(argv or sys.argv[1:])]),
                   "cpu_count": os.cpu_count(), "machine": platform.machine(),
                   "python": platform.python_version()})
    for seed in seeds:
        for name in variants:
            entry = report["results"].setdefault(name, {
                "command": "python main.py " + " ".join(VARIANTS[name] + overrides)
                           + " --config.seed=S --workdir=W", "seeds": {}})
            if str(seed) in entry["seeds"]:
                continue
            entry["seeds"][str(seed)] = run = run_one(VARIANTS[name] + overrides, seed, args.main)
            entry["summary"] = summarise(entry["seeds"])
            write_json(args.output, report)
            print(f"{name:18s} seed {seed}  {run['wall_seconds']:6.0f} s  kNN init "
                  f"{100 * run['knn_top1_init']:.2f}%  final {100 * run['knn_top1']:.2f}%",
                  flush=True)


if __name__ == "__main__":
    main()
