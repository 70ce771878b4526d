"""What a run was computed on: the CPU's vector extensions and the JAX/XLA versions.

The same seed does not give the same run on two machines: XLA:CPU picks other kernels on a CPU
with AVX-512 than on one without, and a few hundred chaotic steps carry the rounding difference
into the result. Every run's `summary.json` records this, so seeds are only pooled across runs
computed alike.
"""

from __future__ import annotations

import platform
from functools import cache
from typing import Any

import jax
import jaxlib

# The x86 / Arm extensions that change which XLA:CPU kernels run.
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile", "asimd",
                     "sve", "sve2")


@cache
def cpu_flags() -> tuple[str, ...]:
    """The CPU's flags from /proc/cpuinfo (Linux), restricted to `VECTOR_EXTENSIONS`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return tuple(x for x in VECTOR_EXTENSIONS if x in present)
    except OSError:
        pass
    return ()


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict[str, Any]:
    """The fields a run's summary records about where it ran."""
    return {
        "cpu": cpu_model(),
        "cpu_vector_extensions": list(cpu_flags()),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
    }
