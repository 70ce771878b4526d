"""Diagnosis for the CPU train step: per-process settings (cores, XLA devices, host allocator).

    python bench/core_scaling.py --output bench/results/core_scaling_cpu.json
    python bench/core_scaling.py --study host_memory --output bench/results/host_memory_cpu.json

Times the ResNet-18 SimCLR train step (as `bench/run.py`, 64 images per view, fp32) of JAX and of
the PyTorch reference (channels_last), each pinned to one core and to every core, plus JAX split
data-parallel over one XLA host device per core (`--xla_force_host_platform_device_count`,
synchronized BatchNorm, the same program `main.py` runs on several devices). One subprocess per
setting (a core mask and XLA flags are per process), the list of settings repeated `--rounds`
times so that drift hits every setting alike; the median over rounds is reported.

Prediction before measuring the last setting: if XLA:CPU leaves the second core mostly idle,
running each half of the batch on its own device (own thread) should approach the one-core time
divided by the core count.

`--study host_memory` times both frameworks on every core under four glibc allocator settings
(environment variables, read at process start) and counts the minor page faults per step:
`default`; `hugetlb` (GLIBC_TUNABLES=glibc.malloc.hugetlb=1: malloc asks for transparent huge
pages, so a fresh 2 MiB page faults once instead of 512 4 KiB ones); `no_mmap`
(MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=2**31-1: freed memory stays in the heap for reuse);
`no_mmap_one_arena` (the same with MALLOC_ARENA_MAX=1, so that worker threads use that heap too).
Why: XLA:CPU allocates each execution's scratch memory (one block for the whole step) anew
and the kernel maps it in 4 KiB page by page: ~211,000 minor faults per step, PyTorch ~257,000
(bench/results/host_memory_cpu.json; ~310,000 and ~290,000 in a first run with YNNPACK
convolutions, jaxlib's default then).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import command_line, write_json  # noqa: E402


def _child(args) -> None:
    """Runs in the subprocess: pins itself, builds one step, prints its step times as JSON."""
    if args.cores != "all":
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.framework == "jax":
        import jax

        from bench.jax_step import VARIANTS, make_config, make_jax_step

        config = make_config(batch_per_view=args.batch, overrides=VARIANTS["simclr"])
        step, _ = make_jax_step(config)
        devices = jax.device_count()
    else:
        from bench import torch_reference
        from bench.timing import seconds_of

        torch_step, _ = torch_reference.make_train_step(batch_per_view=args.batch,
                                                        channels_last=True)

        step = functools.partial(seconds_of, torch_step)

        step()
        devices = 1
    step()  # Warm-up.
    times, faults = [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times.append(step())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"step_seconds": times, "minor_faults_per_step": faults,
                      "devices": devices, "cores": sorted(os.sched_getaffinity(0))}))


# `--study host_memory`: allocator setting -> environment variables.
ALLOCATOR_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "no_mmap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
    # ... and every thread on the main heap: XLA allocates the step's scratch block on a worker
    # thread, whose own arena would still map a block that large afresh each time.
    "no_mmap_one_arena": {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                          "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
}


def settings(cpu_count: int, study: str = "cores") -> dict[str, dict]:
    """name -> {"framework", "cores", "env"} for one study."""
    if study == "host_memory":
        return {f"{framework}_{name}": {"framework": framework, "cores": "all", "env": env}
                for framework in ("jax", "torch") for name, env in ALLOCATOR_SETTINGS.items()}
    if study != "cores":
        raise ValueError(f"--study must be 'cores' or 'host_memory', got {study!r}")
    devices = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={cpu_count}"}
    return {
        "jax_1_core": {"framework": "jax", "cores": "0", "env": {}},
        f"jax_{cpu_count}_cores": {"framework": "jax", "cores": "all", "env": {}},
        f"jax_{cpu_count}_cores_{cpu_count}_devices": {"framework": "jax", "cores": "all",
                                                       "env": devices},
        "torch_1_core": {"framework": "torch", "cores": "0", "env": {}},
        f"torch_{cpu_count}_cores": {"framework": "torch", "cores": "all", "env": {}},
    }


def ratios(median: dict[str, float], cpu_count: int, study: str) -> dict[str, float]:
    if study == "host_memory":
        out = {f"jax_over_torch_throughput_{name}": median[f"torch_{name}"] / median[f"jax_{name}"]
               for name in ALLOCATOR_SETTINGS}
        for framework in ("jax", "torch"):
            for name in ALLOCATOR_SETTINGS:
                if name != "default":
                    out[f"{framework}_speedup_{name}"] = (median[f"{framework}_default"]
                                                          / median[f"{framework}_{name}"])
        out["jax_over_torch_throughput_best_of_each"] = (
            min(median[f"torch_{name}"] for name in ALLOCATOR_SETTINGS)
            / min(median[f"jax_{name}"] for name in ALLOCATOR_SETTINGS))
        return out
    many = f"{cpu_count}_cores"
    return {
        "jax_speedup_from_all_cores": median["jax_1_core"] / median[f"jax_{many}"],
        "torch_speedup_from_all_cores": median["torch_1_core"] / median[f"torch_{many}"],
        "jax_over_torch_throughput_1_core": median["torch_1_core"] / median["jax_1_core"],
        f"jax_over_torch_throughput_{many}": median[f"torch_{many}"] / median[f"jax_{many}"],
        "jax_devices_over_jax_one_device": (median[f"jax_{many}"]
                                            / median[f"jax_{many}_{cpu_count}_devices"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per view")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--study", choices=("cores", "host_memory"), default="cores")
    parser.add_argument("--output", default=None,
                        help="default bench/results/{core_scaling,host_memory}_cpu.json")
    parser.add_argument("--child", choices=("jax", "torch"), dest="framework", default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--cores", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.framework is not None:
        _child(args)
        return
    cpu_count = len(os.sched_getaffinity(0))
    todo = settings(cpu_count, args.study)
    output = args.output or os.path.join(
        "bench", "results",
        "core_scaling_cpu.json" if args.study == "cores" else "host_memory_cpu.json")
    report = {"command": command_line(__file__),
              "study": args.study, "batch_per_view": args.batch, "cpu_count": cpu_count,
              "load_average_at_start": list(os.getloadavg()), "settings": {}}
    times: dict[str, list[float]] = {name: [] for name in todo}
    faults: dict[str, list[int]] = {name: [] for name in todo}
    for round_index in range(args.rounds):
        for name, setting in todo.items():
            env = dict(os.environ, XLA_FLAGS="")
            env.update(setting["env"])
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", setting["framework"],
                 "--cores", setting["cores"], "--batch", str(args.batch),
                 "--steps", str(args.steps)],
                env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            times[name] += result["step_seconds"]
            faults[name] += result["minor_faults_per_step"]
            report["settings"][name] = dict(setting, devices=result["devices"])
            print(f"round {round_index + 1}: {name} {statistics.median(result['step_seconds']):.2f}"
                  " s/step", flush=True)
    for name, seconds in times.items():
        median = statistics.median(seconds)
        report["settings"][name].update(
            step_seconds=seconds, median_step_seconds=median,
            images_per_second=2 * args.batch / median,
            median_minor_faults_per_step=statistics.median(faults[name]))
    median = {name: s["median_step_seconds"] for name, s in report["settings"].items()}
    report["ratios"] = ratios(median, cpu_count, args.study)
    print(json.dumps(report["ratios"], indent=2))
    write_json(output, report)


if __name__ == "__main__":
    main()
