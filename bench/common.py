"""What the benchmark scripts share besides timing: their report's command line, the package
versions it was measured with, writing it, and the seconds per update a training run logged."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata


def command_line(script: str, argv: list[str] | None = None) -> str:
    """`python bench/<script> <args>`: how the report was made (`script` is the caller's
    `__file__`; `argv` the arguments given to its `main`, or the process's)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{os.path.basename(script)}", *args])


# Report key -> the distribution names it may be installed under (first found wins).
PACKAGES: dict[str, tuple[str, ...]] = {
    "jax": ("jax",), "jaxlib": ("jaxlib",),
    "jax_cuda_plugin": ("jax-cuda13-plugin", "jax-cuda12-plugin"),
    "flax": ("flax",), "optax": ("optax",), "orbax_checkpoint": ("orbax-checkpoint",),
    "numpy": ("numpy",), "ml_collections": ("ml_collections",), "dm_pix": ("dm-pix",),
    "pillow": ("pillow",), "torch": ("torch",), "torchvision": ("torchvision",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
}


def versions() -> dict[str, str | None]:
    """Python's version and each of `PACKAGES`' installed versions (None: not installed), read
    from the installed metadata, so nothing is imported; `tensorflow` is None where it cannot be
    imported (not installed, or blocked as on a machine without it)."""
    from amcl_jax.data import tensorflow_available

    def installed(names: tuple[str, ...]) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    out: dict[str, str | None] = {"python": platform.python_version()}
    out.update({key: installed(names) for key, names in PACKAGES.items()})
    if not tensorflow_available():
        out["tensorflow"] = None
    return out


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
