"""Multi-host start-up: when and how to call `jax.distributed.initialize()`.

One process per host (TPU pod slice, SLURM task, or a process started by hand) forms, with its
peers, one JAX runtime whose `jax.devices()` are the devices of every host; the trainer's mesh
spans them all. `initialize_from_environment()` is called by `main.py` before anything touches a
device, and decides from the environment alone:

- ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``: an explicit multi-process launch (any machine, CPU included);
- a SLURM job step with more than one task (``SLURM_NTASKS`` > 1): JAX reads the rest itself;
- a multi-host Cloud TPU slice (``TPU_WORKER_HOSTNAMES`` lists more than one worker);
- an Open MPI launch with more than one rank (``OMPI_COMM_WORLD_SIZE`` > 1).

Otherwise nothing is initialised: a single host never waits for peers that will not come.
When it does connect it says so first (who it is, whom it waits for, for how long), so a missing
peer shows up as a message and then a timeout error, never as a silent hang. A run that ends
normally (finished or preempted) leaves through `finish()`, all processes together.
"""

from __future__ import annotations

import os
import sys

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
TIMEOUT_ENV = "AMCL_DISTRIBUTED_TIMEOUT"  # Seconds to wait for all processes (default 300).


class DistributedSetupError(RuntimeError):
    """The environment asks for a multi-process run but does not describe one completely."""


def _int_env(name: str, environ, default: str = "") -> int:
    value = environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"{name}={value!r} must be an integer") from None


def detect_launch(environ=None) -> dict | None:
    """How this process was launched: None for a single process, else the kwargs (possibly
    empty: JAX's own cluster detection fills them in) for `jax.distributed.initialize`.

    Raises DistributedSetupError when the explicit variables are only partly set or invalid.
    """
    environ = os.environ if environ is None else environ
    explicit = [name for name in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
                if environ.get(name)]
    if explicit:
        missing = sorted({COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV} - set(explicit))
        if missing and set(explicit) != {COORDINATOR_ENV}:
            raise DistributedSetupError(
                f"multi-process launch: {', '.join(explicit)} set but {', '.join(missing)} "
                "missing; set all three (or none for a single process)")
        if not missing:
            num_processes = _int_env(NUM_PROCESSES_ENV, environ)
            process_id = _int_env(PROCESS_ID_ENV, environ)
            if num_processes < 1 or not 0 <= process_id < num_processes:
                raise DistributedSetupError(
                    f"{PROCESS_ID_ENV}={process_id} must be in [0, {NUM_PROCESSES_ENV}="
                    f"{num_processes})")
            if num_processes == 1:
                return None
            return {"coordinator_address": environ[COORDINATOR_ENV],
                    "num_processes": num_processes, "process_id": process_id}
        # Only a coordinator address (as on some TPU/SLURM setups): let JAX detect the rest.
    if "SLURM_JOB_ID" in environ and "SLURM_STEP_ID" in environ:  # Inside an `srun` step.
        return {} if _int_env("SLURM_NTASKS", environ, default="1") > 1 else None
    hostnames = environ.get("TPU_WORKER_HOSTNAMES", "") or environ.get("TPU_PROCESS_ADDRESSES", "")
    if len([h for h in hostnames.split(",") if h.strip()]) > 1:
        return {}
    if _int_env("OMPI_COMM_WORLD_SIZE", environ, default="1") > 1:
        return {}
    if explicit:  # A coordinator address alone, outside any cluster JAX can read.
        raise DistributedSetupError(
            f"{COORDINATOR_ENV} is set but {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} are not, and "
            "no SLURM/TPU/MPI cluster was detected; set all three")
    return None


def initialize_from_environment(environ=None) -> bool:
    """Calls `jax.distributed.initialize` when the environment describes a multi-process run.

    Returns True when it did. Must run before any JAX computation or device query.
    """
    kwargs = detect_launch(environ)
    if kwargs is None:
        return False
    import jax

    environ = os.environ if environ is None else environ
    timeout = int(environ.get(TIMEOUT_ENV, "300"))
    # CPU collectives across processes need gloo; GPU/TPU use their own (NCCL, ICI) regardless.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = (f"process {kwargs['process_id']} of {kwargs['num_processes']}, coordinator "
             f"{kwargs['coordinator_address']}" if kwargs else "cluster auto-detected")
    print(f"jax.distributed.initialize: {where}; waiting up to {timeout} s for all processes",
          file=sys.stderr, flush=True)
    jax.distributed.initialize(initialization_timeout=timeout, **kwargs)
    print(f"jax.distributed ready: process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.local_device_count()} local / {jax.device_count()} global devices",
          file=sys.stderr, flush=True)
    return True


def finish() -> bool:
    """Leaves a multi-process run in order, before Python's own teardown; True if it did.

    For a run that ended normally (finished, or checkpointed after a preemption) on every
    process. All processes meet at a barrier, then `jax.distributed.shutdown()` disconnects them
    (its own barrier) before process 0 stops the coordination service. Without it each process
    leaves at interpreter exit on its own schedule, and a process still tearing down (slow under
    load) can find the service already gone and abort with SIGABRT: a completed run reported
    as a crash. Not for error paths: a peer that failed never reaches the barrier, and the
    coordination service's error propagation is what stops the others then.
    """
    import jax

    if not jax.distributed.is_initialized():
        return False
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("amcl_jax: finished")
    where = f"process {jax.process_index()} of {jax.process_count()}"
    jax.distributed.shutdown()
    print(f"jax.distributed.shutdown: {where}, after all processes finished", file=sys.stderr,
          flush=True)
    return True
