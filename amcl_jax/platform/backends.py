"""Keep an installed but absent TPU runtime quiet.

`jax[tpu]` (libtpu) is part of the dev install, because `python -m amcl_jax.compile` compiles
for TPU pod slices from any machine. Without a TPU, JAX would still try libtpu first when it
picks its backends, and libtpu prints lines about TPU_ACCELERATOR_TYPE and worker host names to
stderr before falling back to the CPU. `skip_absent_tpu()` tells JAX not to try when no TPU chip
is attached; a user's own `JAX_PLATFORMS` always wins, and compiling for a topology
(`jax.experimental.topologies`) still loads libtpu on demand.
"""

from __future__ import annotations

import importlib.util
import os


def tpu_chips_attached() -> int:
    """How many TPU chips this host has on its PCI bus (the test JAX itself uses)."""
    try:
        from jax._src import hardware_utils

        return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
    except Exception:  # A private helper: if it moves, assume a TPU may be there.
        return 1


def skip_absent_tpu() -> None:
    """Restrict JAX's backends to the others when libtpu is installed and no TPU is attached."""
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    if tpu_chips_attached():
        return
    import jax

    if importlib.util.find_spec("jax_cuda12_plugin") or importlib.util.find_spec(
            "jax_cuda13_plugin"):
        return  # A GPU build next to libtpu: leave the choice to JAX.
    try:
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # Backends already initialised: too late to matter.
        pass
