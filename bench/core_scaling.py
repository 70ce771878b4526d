"""Diagnosis for the CPU train step: how much of a second core each framework uses.

    python bench/core_scaling.py --output bench/results/core_scaling_cpu.json

Times the ResNet-18 SimCLR train step (as `bench/run.py`, 64 images per view, fp32) of JAX and of
the PyTorch reference (channels_last), each pinned to one core and to every core, plus JAX split
data-parallel over one XLA host device per core (`--xla_force_host_platform_device_count`,
synchronized BatchNorm, the same program `main.py` runs on several devices). One subprocess per
setting (a core mask and XLA flags are per process), the list of settings repeated `--rounds`
times so that drift hits every setting alike; the median over rounds is reported.

Prediction before measuring the last setting: if XLA:CPU leaves the second core mostly idle,
running each half of the batch on its own device (own thread) should approach the one-core time
divided by the core count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(args) -> None:
    """Runs in the subprocess: pins itself, builds one step, prints its step times as JSON."""
    if args.cores != "all":
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    if args.framework == "jax":
        import jax

        from bench.jax_step import VARIANTS, make_config, make_jax_step

        config = make_config(batch_per_view=args.batch, overrides=VARIANTS["simclr"])
        step, _ = make_jax_step(config)
        devices = jax.device_count()
    else:
        from bench import torch_reference

        torch_step, _ = torch_reference.make_train_step(batch_per_view=args.batch,
                                                        channels_last=True)

        def step() -> float:
            start = time.perf_counter()
            torch_step()
            return time.perf_counter() - start

        step()
        devices = 1
    step()  # Warm-up.
    times = [step() for _ in range(args.steps)]
    print(json.dumps({"step_seconds": times, "devices": devices,
                      "cores": sorted(os.sched_getaffinity(0))}))


def settings(cpu_count: int) -> dict[str, dict]:
    devices = f"--xla_force_host_platform_device_count={cpu_count}"
    return {
        "jax_1_core": {"framework": "jax", "cores": "0", "xla_flags": ""},
        f"jax_{cpu_count}_cores": {"framework": "jax", "cores": "all", "xla_flags": ""},
        f"jax_{cpu_count}_cores_{cpu_count}_devices": {"framework": "jax", "cores": "all",
                                                       "xla_flags": devices},
        "torch_1_core": {"framework": "torch", "cores": "0", "xla_flags": ""},
        f"torch_{cpu_count}_cores": {"framework": "torch", "cores": "all", "xla_flags": ""},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per view")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default="bench/results/core_scaling_cpu.json")
    parser.add_argument("--child", choices=("jax", "torch"), dest="framework", default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--cores", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.framework is not None:
        _child(args)
        return
    cpu_count = len(os.sched_getaffinity(0))
    todo = settings(cpu_count)
    report = {"command": "python bench/core_scaling.py " + " ".join(sys.argv[1:]),
              "batch_per_view": args.batch, "cpu_count": cpu_count,
              "load_average_at_start": list(os.getloadavg()), "settings": {}}
    times: dict[str, list[float]] = {name: [] for name in todo}
    for round_index in range(args.rounds):
        for name, setting in todo.items():
            env = dict(os.environ, XLA_FLAGS=setting["xla_flags"])
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", setting["framework"],
                 "--cores", setting["cores"], "--batch", str(args.batch),
                 "--steps", str(args.steps)],
                env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            times[name] += result["step_seconds"]
            report["settings"][name] = dict(setting, devices=result["devices"])
            print(f"round {round_index + 1}: {name} {statistics.median(result['step_seconds']):.2f}"
                  " s/step", flush=True)
    for name, seconds in times.items():
        median = statistics.median(seconds)
        report["settings"][name].update(step_seconds=seconds, median_step_seconds=median,
                                        images_per_second=2 * args.batch / median)
    median = {name: s["median_step_seconds"] for name, s in report["settings"].items()}
    many = f"{cpu_count}_cores"
    report["ratios"] = {
        "jax_speedup_from_all_cores": median["jax_1_core"] / median[f"jax_{many}"],
        "torch_speedup_from_all_cores": median["torch_1_core"] / median[f"torch_{many}"],
        "jax_over_torch_throughput_1_core": median["torch_1_core"] / median["jax_1_core"],
        f"jax_over_torch_throughput_{many}": median[f"torch_{many}"] / median[f"jax_{many}"],
        "jax_devices_over_jax_one_device": (median[f"jax_{many}"]
                                            / median[f"jax_{many}_{cpu_count}_devices"]),
    }
    print(json.dumps(report["ratios"], indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
