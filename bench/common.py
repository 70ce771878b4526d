"""What the benchmark scripts share besides timing: their report's command line, writing it,
the environment of a CPU subprocess with a given number of XLA host devices, and the seconds
per update a training run logged."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command_line(script: str, argv: list[str] | None = None) -> str:
    """`python bench/<script> <args>`: how the report was made (`script` is the caller's
    `__file__`; `argv` the arguments given to its `main`, or the process's)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{os.path.basename(script)}", *args])


def write_json(path: str, report: dict) -> None:
    """Writes `report` to `path` (indented), creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """This process's environment without JAX/XLA/launcher settings, for a subprocess on the CPU
    backend with `devices` XLA host devices and the repo on its path; `extra` added last."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_", "SLURM_", "TPU_", "OMPI_"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(extra)
    return env


def timed_interval(metrics_path: str, step: int) -> float:
    """Seconds per update over the logging interval that ends at `step` (from metrics.jsonl)."""
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    by_step = {r["step"]: r for r in records}
    if step not in by_step:
        raise ValueError(f"{metrics_path} has no record of step {step} "
                         f"(steps logged: {sorted(by_step)})")
    return 1.0 / by_step[step]["steps_per_sec"]
