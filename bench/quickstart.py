"""Runs the README's quickstart variants and records wall time and kNN accuracy.

    python bench/quickstart.py --output bench/results/quickstart_cpu.json

Each variant is `python main.py --config=configs/quickstart.py[:args] [overrides]` in a fresh
workdir (so nothing is resumed), timed end to end (process start, data, compile, training, kNN);
the figures in the README's quickstart table come from this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import write_json  # noqa: E402

VARIANTS = {
    "amcl_simclr (default: logsumexp)": ["--config=configs/quickstart.py"],
    "simclr": ["--config=configs/quickstart.py:method=simclr,amcl=false"],
    "amcl_simclr negatives=max": ["--config=configs/quickstart.py",
                                  "--config.amcl.negatives=max"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench/results/quickstart_cpu.json")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of: " + ",".join(VARIANTS))
    args = parser.parse_args()
    results = {}
    for name in [v for v in args.variants.split(",") if v]:
        with tempfile.TemporaryDirectory() as workdir:
            start = time.time()
            subprocess.run([sys.executable, "main.py", *VARIANTS[name], f"--workdir={workdir}"],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            seconds = time.time() - start
            with open(os.path.join(workdir, "summary.json")) as f:
                summary = json.load(f)
        results[name] = {
            "command": "python main.py " + " ".join(VARIANTS[name]) + " --workdir=W",
            "wall_seconds": round(seconds, 1),
            "knn_top1_init": summary["knn_top1_init"],
            "knn_top1": summary["knn_top1"],
            "knn_top1_best": summary["knn_top1_best"],
        }
        print(f"{name:32s} {seconds:6.0f} s  kNN init {100 * summary['knn_top1_init']:.2f}%  "
              f"final {100 * summary['knn_top1']:.2f}%", flush=True)
    report = {"command": " ".join(sys.argv), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(),
              "results": results}
    write_json(args.output, report)


if __name__ == "__main__":
    main()
