"""The training loop as several processes on one machine: what the per-step host work costs.

    python bench/multi_process.py --output bench/results/multi_process_cpu.json

Runs `main.py` as `--processes` processes (JAX's multi-host start-up on localhost, one CPU
device each) and as one process with one CPU device, at the same global batch: what the
multi-process run adds per step is its collectives and the host's work and synchronisations of
`train_and_evaluate` (such as the preemption vote), which is what changes between commits.
(One process with several CPU devices was not used as the reference: before the training loop
bounded its queue on such runs, XLA:CPU's collective rendezvous aborted it after 40 s in 3 of 4
runs, README Known issues.)
The config is tiny (8x8 digits, ResNet-18 at width 0.125, global batch 16), so that a step
takes milliseconds and the host's per-step work shows, as it does next to a fast accelerator.
Each run makes 2 x `--steps` updates logged every `--steps`; the second interval's
`steps_per_sec` (metrics.jsonl) is the figure. Settings run in turn, `--rounds` times.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import command_line, cpu_env, timed_interval, write_json  # noqa: E402

TINY = [
    "--config=configs/quickstart.py",
    "--config.data.image_size=8", "--config.data.load_size=8",
    "--config.model.width=0.125", "--config.batch_size=16",
    "--config.projector.hidden_dim=16", "--config.projector.out_dim=8",
    "--config.amcl.temperature_hidden_dim=8",
    "--config.eval.max_bank_examples=64", "--config.eval.max_query_examples=32",
    "--config.eval.knn_k=5", "--config.eval.batch_size=32",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(*, processes: int, steps: int, workdir: str, timeout: float = 900,
             extra_env: dict[str, str] | None = None) -> float:
    """Seconds per update of the timed interval of `processes` processes of one CPU device
    each (1: a plain single-device run). `extra_env` is added to every process's environment
    (the tests use it to compile faster)."""
    command = [sys.executable, "main.py", *TINY, f"--config.total_steps={2 * steps}",
               f"--config.log_every_steps={steps}", f"--config.eval.every_steps={2 * steps}",
               f"--config.checkpoint.every_steps={2 * steps}", f"--workdir={workdir}"]
    extra_env = extra_env or {}
    if processes == 1:
        envs = [cpu_env(1, **extra_env)]
    else:
        port = str(_free_port())
        envs = [cpu_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                        JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i), **extra_env)
                for i in range(processes)]
    # Output to files: a full pipe would stall one process and, through the collectives, all.
    logs = [f"{workdir}.{i}.log" for i in range(len(envs))]
    runs = []
    for env, log in zip(envs, logs, strict=True):
        with open(log, "w") as out:
            runs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT))
    for run, log in zip(runs, logs, strict=True):
        if run.wait(timeout) != 0:
            with open(log) as f:
                raise RuntimeError(f"main.py failed ({run.returncode}):\n{f.read()[-3000:]}")
    return timed_interval(os.path.join(workdir, "metrics.jsonl"), 2 * steps)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="bench/results/multi_process_cpu.json")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    seconds = {"one_process": [], "processes": []}
    with tempfile.TemporaryDirectory(prefix="amcl_multi_process_") as scratch:
        for round_index in range(args.rounds):
            for name, processes in (("one_process", 1), ("processes", args.processes)):
                workdir = os.path.join(scratch, f"{name}{round_index}")
                seconds[name].append(run_once(processes=processes, steps=args.steps,
                                              workdir=workdir))
                print(f"round {round_index + 1}: {name} {1000 * seconds[name][-1]:.2f} ms/step",
                      flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "command": command_line(__file__, argv),
        "commit": commit, "load_average_at_start": list(os.getloadavg()),
        "processes": args.processes, "steps_timed": args.steps, "config": TINY,
        "seconds_per_step": seconds, "median_seconds_per_step": medians,
        "processes_over_one_process_throughput": medians["one_process"] / medians["processes"],
    }
    write_json(args.output, report)
    print(f"{args.processes} processes {1000 * medians['processes']:.2f} ms/step, one process "
          f"{1000 * medians['one_process']:.2f} ms/step: throughput ratio "
          f"{report['processes_over_one_process_throughput']:.3f}")
    return report


if __name__ == "__main__":
    main()
