"""One short CIFAR-10 run per method variant (configs/cifar10_*.py), same steps for all.

    python bench/variants.py --data_dir=../shared/data/cifar10-jpeg.tar.gz \
        --workdir=runs/variants --output=bench/results/variants_cpu.json

Each variant is `python main.py --config=configs/cifar10_<variant>.py` (the method's own heads,
learning rate and temperature bounds) with the shared short-run overrides below: a fixed
10,000-image subset of the training split, ResNet-18 at width 0.25, batch 128, `--steps` steps,
kNN (k=200, T=0.1) on that 10,000-image bank and 2,000 test queries at step 0 and at the end.
Runs live in `<workdir>/<variant>/`: a finished run (summary.json) is skipped, an interrupted one
resumes. Writes the JSON (wall time, kNN at init and at the end per variant) and prints a
Markdown table. Far below the paper's accuracy (minutes, not 800 epochs): it shows that every
variant trains on real images, not which method is best.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from amcl_jax import methods, recipes  # noqa: E402
from bench.common import command_line, write_json  # noqa: E402

# Every registered method without AMCL and, where it has one, with: configs/cifar10_<variant>.py.
VARIANTS = tuple(recipes.recipe_name(method.name, amcl).removeprefix("cifar10_")
                 for method in methods.registered()
                 for amcl in ((False, True) if method.supports_amcl else (False,)))


def shared_overrides(steps: int, data_dir: str) -> list[str]:
    return [f"--config.data.data_dir={data_dir}", "--config.data.max_train_examples=10000",
            "--config.model.width=0.25", "--config.batch_size=128",
            f"--config.total_steps={steps}", f"--config.eval.every_steps={steps}",
            f"--config.checkpoint.every_steps={steps}", "--config.log_every_steps=25",
            "--config.optimizer.warmup_steps=10", "--config.eval.max_query_examples=2000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="CIFAR-10 (archive, folder or TFDS)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default="bench/results/variants_cpu.json")
    args = parser.parse_args()
    overrides = shared_overrides(args.steps, args.data_dir)
    args.workdir = os.path.abspath(args.workdir)  # main.py runs from the repo root.
    os.makedirs(args.workdir, exist_ok=True)
    results = {}
    for name in [v for v in args.variants.split(",") if v]:
        if name not in VARIANTS:
            parser.error(f"--variants: {name!r} is not one of {','.join(VARIANTS)}")
        workdir = os.path.join(args.workdir, name)
        command = [f"--config=configs/cifar10_{name}.py", *overrides, f"--workdir={workdir}"]
        summary_path = os.path.join(workdir, "summary.json")
        seconds = None
        if not os.path.exists(summary_path):
            start = time.time()
            with open(os.path.join(args.workdir, f"{name}.log"), "w") as log:
                subprocess.run([sys.executable, "main.py", *command], cwd=ROOT, check=True,
                               stdout=log, stderr=subprocess.STDOUT)
            seconds = round(time.time() - start, 1)
        with open(summary_path) as f:
            summary = json.load(f)
        results[name] = {"command": "python main.py " + " ".join(command[:-1]) + " --workdir=W",
                         "wall_seconds": seconds, "knn_top1_init": summary["knn_top1_init"],
                         "knn_top1": summary["knn_top1"], "steps": summary["steps"]}
        print(f"{name:20s} {seconds or 0:6.0f} s  kNN init {100 * summary['knn_top1_init']:.2f}%"
              f"  final {100 * summary['knn_top1']:.2f}%", flush=True)
    report = {"command": command_line(__file__),
              "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "python": platform.python_version(), "steps": args.steps, "results": results}
    write_json(args.output, report)
    print(f"\n| variant | kNN top-1 at init | after {args.steps} steps | wall time |")
    print("|---|---|---|---|")
    for name, r in results.items():
        wall = f"{r['wall_seconds']:.0f} s" if r["wall_seconds"] else "(earlier run)"
        print(f"| {name} | {100 * r['knn_top1_init']:.2f}% | {100 * r['knn_top1']:.2f}% | {wall} |")


if __name__ == "__main__":
    main()
