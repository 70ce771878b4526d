"""XLA:CPU's in-process collectives against the depth of the dispatch queue (README Known issues).

    python bench/cpu_collective_queue.py --output bench/results/cpu_collective_queue_cpu.json

Each run is a fresh process with `--xla_force_host_platform_device_count=--devices` that calls
one jitted program with an all-gather (a replicated result of a batch-sharded matmul) `--calls`
times, waiting for the call `depth` places back after each dispatch, so at most `depth` calls
are queued. With jaxlib 0.10 deep queues abort the process: the collective rendezvous waits 40 s
for a device's thread, then exits with SIGABRT. `train_and_evaluate` keeps its queue at depth 2
on such runs for this reason. Records, per depth, how many runs finished and how many aborted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import command_line, cpu_env, write_json  # noqa: E402

CHILD = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
calls, depth = int(sys.argv[1]), int(sys.argv[2])
mesh = Mesh(np.asarray(jax.devices()), ("data",))
batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

@jax.jit
def step(x, w):
    y = jax.lax.with_sharding_constraint(jnp.tanh(x @ w), replicated)  # The all-gather.
    return w + 1e-3 * (y.T @ y)[: w.shape[0], : w.shape[1]], jnp.mean(y)

x = jax.device_put(jnp.ones((64, 32)), batch)
w = jax.device_put(jnp.eye(32), replicated)
queued = []
for _ in range(calls):
    w, m = step(x, w)
    queued.append(m)
    if len(queued) >= depth:
        queued.pop(0).block_until_ready()
jax.block_until_ready(w)
print("finished")
"""


def run(*, devices: int, calls: int, depth: int, timeout: float) -> dict:
    env = cpu_env(devices)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, str(calls), str(depth)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    return {"returncode": result.returncode, "seconds": time.perf_counter() - start,
            "finished": "finished" in result.stdout,
            "rendezvous_abort": "Termination timeout" in result.stderr}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--depths", default="2,1000", help="comma-separated queue depths")
    parser.add_argument("--runs", type=int, default=3, help="processes per depth")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--output", default="bench/results/cpu_collective_queue_cpu.json")
    args = parser.parse_args(argv)
    import jax

    report = {"command": command_line(__file__, argv),
              "jax": jax.__version__, "devices": args.devices, "calls": args.calls,
              "by_depth": {}}
    for depth in (int(d) for d in args.depths.split(",")):
        runs = [run(devices=args.devices, calls=args.calls, depth=depth, timeout=args.timeout)
                for _ in range(args.runs)]
        report["by_depth"][str(depth)] = {
            "runs": runs, "finished": sum(r["finished"] for r in runs),
            "aborted": sum(r["rendezvous_abort"] for r in runs)}
        entry = report["by_depth"][str(depth)]
        print(f"depth {depth}: {entry['finished']} of {args.runs} finished, "
              f"{entry['aborted']} aborted in the rendezvous", flush=True)
    write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
