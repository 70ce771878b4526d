"""What the benchmark scripts share besides timing: their report's command line, writing it,
and the seconds per update a training run logged."""

from __future__ import annotations

import json
import os
import sys


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


def timed_interval(metrics_path: str, step: int) -> float:
    """Seconds per update over the logging interval that ends at `step` (from metrics.jsonl)."""
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    by_step = {r["step"]: r for r in records}
    if step not in by_step:
        raise ValueError(f"{metrics_path} has no record of step {step} "
                         f"(steps logged: {sorted(by_step)})")
    return 1.0 / by_step[step]["steps_per_sec"]
