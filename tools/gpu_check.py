"""Issue 21's GPU check in one command: no TensorFlow, TFDS or clu; ~9 minutes on one H100/H200.

    python tools/gather_gpu_payload.py           # here: wheels + CIFAR-10 archive -> payload/
    # on the GPU machine (it prints this line):
    python -m pip install --no-index --no-deps payload/*.whl || export PYTHONPATH=...; \\
        python tools/gpu_check.py --out $OUT --data_dir payload/cifar10-jpeg.tar.gz

    python tools/gpu_check.py --out /tmp/check --data_dir D --toy   # the same logic, toy scale

Writes OUT/gpu_check.json and OUT/gpu_check.md, both with the device (GPU model, memory,
driver) and the package versions (python, jax, jaxlib, its CUDA plugin, flax, optax, torch, CUDA
and cuDNN where known), rewritten after every phase, so a run cut short keeps what it reached
(the JSON's `status` names the phase it was in). Each phase has a time cap, records what it
reached, and one that fails records its error while the script goes on to the next:

1. steps: the train step of `bench/run.py --quick` (`run.time_steps`: ResNet-18 CIFAR stem, 64
   per view, two views, interleaved rounds) in float32 and in bfloat16: the JAX step of SimCLR
   and of the default config's AMCL (`amcl.enabled=True` and nothing else), against PyTorch
   eager with channels_last (in bfloat16: autocast); images/s and MFU against the card's data
   sheet (`bench/flops.py`, float32 rated against TF32), as `bench/run.py` computes them.
2. loop: `train_and_evaluate` against its bare step, views made on the device (`bench/loop.py`).
3. cifar10: SimCLR and the default AMCL pretrained on CIFAR-10 from the JPEG archive (decoded
   with Pillow), ResNet-18 (`--run_model`, as in phase 2; the toy scale's is the tests'
   two-stage ResNet), batch 512, bfloat16, views on the device, for the same training
   time each; then kNN (k 200, T 0.1) of the final checkpoint with the whole training split as
   the bank and the whole test split as queries (`evaluate.knn_eval.run_knn`); steps, epochs
   and images/s reached.
4. torch_compile: the PyTorch step of phase 1 with the model compiled by `torch.compile`, in a
   subprocess killed at the cap (compiling ResNet-18 takes a minute or more, and Triton needs a
   C compiler): every dtype that compiled and was timed within it, timed alone. Last, because
   it is the one phase that may well not finish: phase 3 keeps `--torch_compile_seconds` for it
   when that still leaves each run `--min_train_seconds`.

How a run is held to its time budget: `train_and_evaluate` already stops cleanly on preemption
(SIGTERM sets `train.PREEMPTION`; the loop checkpoints at the next step boundary and returns),
so a watcher thread calls `PREEMPTION.request()` once the run has trained for the budget. The
budget counts from the run's first metrics record (the step compiled and the first
`log_every_steps` updates done), so compilation and the random-init kNN are not in it, and both
methods get the same training time whatever their compile times. Setting `total_steps` from a
timed warm-up instead would have cost each run a second compilation (the step holds the
schedule's length), and a config field for a wall-clock limit would be a second way to stop
that only this script uses. The learning-rate schedule is the default cosine over
`--max_steps` (the runs' `total_steps`, far more than a budget allows at these speeds), so the
rate has barely decayed when the budget stops a run: the kNN figures compare the two methods at
equal time, not their best accuracy. The budget is `--train_seconds` (default 120 s: two runs
of 3 minutes do not fit in 9 minutes with the other phases and the compilations), lowered when
the earlier phases leave less time before `--deadline_seconds`; the report says what was used.

Time plan on one H200 (estimates until the first run; the JSON has each phase's seconds):
start-up ~15 s, steps ~2 min (four JAX compilations), loop ~1 min, cifar10 2 x (~75 s of
compilation, loading and kNN, `--run_overhead_seconds`, + the budget), torch_compile <= 75 s,
all within `--deadline_seconds` (510 s); a hard stop (faulthandler) 30 s after it dumps every
thread's stack and exits if something hangs, well inside the machine's 10 minutes a command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

STARTED = time.time()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PHASES = ("steps", "loop", "cifar10", "torch_compile")  # in this order
# JAX variants of the step phase: name -> config overrides.
STEP_VARIANTS = {"simclr": {"amcl.enabled": False}, "amcl": {"amcl.enabled": True}}
TORCH_EAGER = {"torch_channels_last": {"channels_last": True}}
PAIR = {"simclr": {"amcl.enabled": False}, "amcl": {"amcl.enabled": True}}  # cifar10 phase
# Scales: the GPU check and the toy run that tests its logic on a CPU in seconds. `run_model`:
# the encoder of the loop and cifar10 phases; `step_model`: the JAX encoder of the steps phase
# (ResNet-18, as PyTorch's is). The toy's are the tests' two-stage ResNet, a third of ResNet-18's
# compile time (its steps phase then times other models in JAX and PyTorch: it tests the logic).
SCALES = {
    "gpu": dict(width=1.0, run_model="resnet18", step_model="resnet18", batch_per_view=64,
                rounds=20, warmup=3,
                loop_steps=100, loop_rounds=10, loop_num_train=2048, pair_batch=512,
                train_seconds=120.0,
                log_every_steps=20, max_steps=20_000, knn_k=200, monitor_examples=1024,
                torch_compile_seconds=75.0, run_overhead_seconds=75.0, deadline_seconds=510.0,
                steps_cap_seconds=180.0, loop_cap_seconds=120.0),
    "toy": dict(width=0.125, run_model="_resnet_test", step_model="_resnet_test", batch_per_view=4,
                rounds=2, warmup=1,
                loop_steps=2, loop_rounds=1, loop_num_train=16, pair_batch=8,
                train_seconds=2.0,
                log_every_steps=1, max_steps=1000, knn_k=5, monitor_examples=32,
                torch_compile_seconds=2.0, run_overhead_seconds=30.0, deadline_seconds=900.0,
                steps_cap_seconds=600.0, loop_cap_seconds=600.0),
}


def log(message: str) -> None:
    print(f"[gpu_check {time.time() - STARTED:6.1f}s] {message}", flush=True)


def seconds_left(args) -> float:
    return args.deadline_seconds - (time.time() - STARTED)


# --------------------------------------------------------------------------------------------
# Device and versions
# --------------------------------------------------------------------------------------------
def environment() -> tuple[dict, dict]:
    """(device, versions): `bench/run.py`'s device info plus the GPU's memory and driver, and
    `bench.common.versions` plus CUDA/cuDNN as the installed frameworks report them."""
    import jax

    from bench import run
    from bench.common import versions

    device = run.device_info()
    first = jax.devices()[0]
    device["memory_bytes_limit"] = _device_memory(first)
    device["xla_python_client_mem_fraction"] = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    found = versions()
    try:
        from jax.extend import backend

        found["jax_platform_version"] = backend.get_backend().platform_version
    except Exception as e:  # noqa: BLE001 (informational only)
        found["jax_platform_version"] = f"unknown ({type(e).__name__})"
    found.update(torch_cuda=None, torch_cudnn=None, torch_sees_gpu=None)
    if run.torch is not None:
        found["torch_cuda"] = run.torch.version.cuda
        found["torch_cudnn"] = (run.torch.backends.cudnn.version()
                                if run.torch.cuda.is_available() else None)
        found["torch_sees_gpu"] = run.torch.cuda.is_available()
    found["nvidia_smi"] = _nvidia_smi()
    return device, found


def _device_memory(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 (CPU backends may raise)
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _nvidia_smi() -> str | None:
    """`name, driver_version, memory.total` of each GPU, or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"failed: {type(e).__name__}"
    return out.stdout.strip() or out.stderr.strip()[:300]


# --------------------------------------------------------------------------------------------
# Phase steps: bench/run.py's time_steps, peak_flops and add_utilisation
# --------------------------------------------------------------------------------------------
def run_args(args, dtype: str, no_torch: bool = False):
    """`bench/run.py`'s arguments for its step functions at this scale and dtype."""
    from bench import run

    argv = ["--quick", "--output", os.devnull, "--dtype", dtype, "--model", args.step_model,
            "--width", str(args.width),
            "--steps", str(args.rounds), "--warmup", str(args.warmup),
            "--batch_sizes", str(args.batch_per_view), "--jax_variants", "simclr"]
    return run.parse_args(argv + (["--no_torch"] if no_torch else []))


def phase_steps(args, entry: dict) -> None:
    from bench import run

    entry["batch_per_view"] = args.batch_per_view
    entry["torch"] = "eager, channels_last" if run.torch is not None else "not installed"
    entry["by_dtype"] = {}
    for dtype in args.dtypes:
        if time.time() - entry["_start"] > args.steps_cap_seconds:
            entry["status"] = "partial"
            entry["stopped"] = f"cap of {args.steps_cap_seconds:.0f} s reached before {dtype}"
            return
        log(f"steps: {dtype}")
        r_args = run_args(args, dtype)
        steps = run.time_steps(args.batch_per_view, r_args, jax_overrides=STEP_VARIANTS,
                               torch_options=TORCH_EAGER)
        peak = run.peak_flops(r_args)
        run.add_utilisation(steps, args.batch_per_view, peak, r_args)
        result = {"steps": steps, "peak_flops": peak, "ratios": step_ratios(steps)}
        entry["by_dtype"][dtype] = result
        if run.torch is not None and run.torch.cuda.is_available():
            run.torch.cuda.empty_cache()  # For the next phases' processes and JAX.


def step_ratios(steps: dict) -> dict:
    out = {"amcl_over_simclr_step_time": steps["amcl"]["median_step_seconds"]
           / steps["simclr"]["median_step_seconds"]}
    for name in TORCH_EAGER:
        if name in steps:
            out[f"jax_simclr_over_{name}_throughput"] = (steps["simclr"]["images_per_second"]
                                                         / steps[name]["images_per_second"])
    return out


# --------------------------------------------------------------------------------------------
# Phase torch_compile (run last): in a subprocess held to its cap
# --------------------------------------------------------------------------------------------
def torch_compile_worker(args) -> None:
    """Prints one JSON line per dtype: the compiled step's first call and timed rounds."""
    import statistics

    from bench import torch_reference
    from bench.timing import seconds_of, time_calls

    for dtype in args.dtypes:
        step, _ = torch_reference.make_train_step(
            batch_per_view=args.batch_per_view, width=args.width, dtype=dtype,
            channels_last=True, compile_model=True)
        first = seconds_of(step)
        seconds = time_calls(step, args.rounds, warmup=args.warmup)
        median = statistics.median(seconds)
        print(json.dumps({"dtype": dtype, "first_step_seconds_incl_compile": first,
                          "median_step_seconds": median, "step_seconds": seconds,
                          "images_per_second": 2 * args.batch_per_view / median,
                          "source_images_per_second": args.batch_per_view / median}),
              flush=True)


def phase_torch_compile(args, entry: dict, report: dict) -> None:
    from bench import run

    if run.torch is None:
        entry["status"] = "skipped"
        entry["reason"] = "PyTorch not installed"
        return
    cap = min(args.torch_compile_seconds, seconds_left(args))
    entry["cap_seconds"] = cap
    if cap < args.torch_compile_seconds / 3:
        entry["status"] = "skipped"
        entry["reason"] = f"{seconds_left(args):.0f} s left before the deadline"
        return
    command = [sys.executable, os.path.abspath(__file__), "--torch_compile_worker",
               "--dtypes", ",".join(args.dtypes), "--batch_per_view", str(args.batch_per_view),
               "--width", str(args.width), "--rounds", str(args.rounds),
               "--warmup", str(args.warmup), "--out", os.devnull]
    # Its own session, so that the kill at the cap reaches Inductor's compile workers too.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=cap)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        timed_out = True
    entry["by_dtype"] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            entry["by_dtype"][result.pop("dtype")] = {"torch_compile_channels_last": result}
    for dtype, steps in entry["by_dtype"].items():  # MFU as phase 1 rates its steps.
        peak = report["phases"].get("steps", {}).get("by_dtype", {}).get(dtype, {}).get(
            "peak_flops")
        if peak is not None:
            run.add_utilisation(steps, args.batch_per_view, peak, run_args(args, dtype, True))
    missing = [d for d in args.dtypes if d not in entry["by_dtype"]]
    if timed_out:
        entry["status"] = "partial" if entry["by_dtype"] else "timeout"
        entry["stopped"] = (f"killed at the cap ({cap:.0f} s) before "
                            f"{', '.join(missing)} compiled and was timed")
    elif process.returncode != 0:
        entry["status"] = "error"
        entry["error"] = f"exit code {process.returncode}: {stderr.strip()[-2000:]}"
    if missing:
        entry["stderr_tail"] = stderr.strip()[-2000:]


# --------------------------------------------------------------------------------------------
# Phase loop: the training loop against its bare step, views on the device
# --------------------------------------------------------------------------------------------
def phase_loop(args, entry: dict) -> None:
    from bench import loop

    entry.update(loop.measure_loop(
        batch_per_view=args.batch_per_view, steps=args.loop_steps, rounds=args.loop_rounds,
        width=args.width, dtype=args.loop_dtype, num_train=args.loop_num_train,
        augment_on="device", model=args.run_model))
    entry["goal"] = "loop_over_step_throughput >= 0.95"
    entry["met"] = entry["loop_over_step_throughput"] >= 0.95


# --------------------------------------------------------------------------------------------
# Phase cifar10: SimCLR and AMCL for the same training time, then kNN
# --------------------------------------------------------------------------------------------
def pair_config(args, overrides: dict, cache_dir: str):
    """The default config with `overrides`, `--run_model`, bfloat16, device views, on the archive;
    no evaluation or checkpoint before the end (the monitor's kNN at step 0 on a small subset)."""
    from bench.jax_step import make_config

    config = make_config(batch_per_view=args.pair_batch, overrides=overrides,
                         model=args.run_model, width=args.width, dtype="bfloat16")
    config.data.dataset = "cifar10"
    config.data.data_dir = os.path.abspath(args.data_dir)
    config.data.cache_dir = cache_dir
    config.data.download = False
    config.data.augment_on = "device"
    config.total_steps = args.max_steps
    config.log_every_steps = args.log_every_steps
    config.eval.every_steps = args.max_steps
    config.checkpoint.every_steps = args.max_steps
    config.checkpoint.max_to_keep = 1
    config.eval.max_bank_examples = args.monitor_examples
    config.eval.max_query_examples = args.monitor_examples
    config.eval.knn_k = min(args.knn_k, args.monitor_examples)
    config.eval.knn_temperature = 0.1
    return config


class BudgetStop:
    """Requests the trainer's preemption once a run has trained for `seconds`, counted from its
    first metrics record (compilation and the step-0 kNN excluded)."""

    def __init__(self, metrics_path: str, seconds: float) -> None:
        self.metrics_path, self.seconds = metrics_path, seconds
        self.training_started: float | None = None
        self.requested_at: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> BudgetStop:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        from amcl_jax import train

        while not (os.path.exists(self.metrics_path) and os.path.getsize(self.metrics_path)):
            if self._done.wait(0.05):
                return
        self.training_started = time.time()
        if not self._done.wait(self.seconds):
            self.requested_at = time.time()
            train.PREEMPTION.request()


def train_for(args, name: str, overrides: dict, budget: float, scratch: str) -> dict:
    """One budgeted run and its final kNN; see the module doc."""
    from amcl_jax import train
    from amcl_jax.evaluate import knn_eval

    workdir = os.path.join(scratch, f"cifar10_{name}")
    config = pair_config(args, overrides, os.path.join(scratch, "data_cache"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    start = time.time()
    with BudgetStop(metrics_path, budget) as stop:
        outcome = train.train_and_evaluate(config, workdir)
    ended = time.time()
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = int(outcome["steps"])
    # Images/s over the logged intervals after the first (the first holds the compilation).
    later = [(b["step"] - a["step"], b["steps_per_sec"])
             for a, b in zip(records[:-1], records[1:], strict=True)]
    timed_steps = sum(n for n, _ in later)
    timed_seconds = sum(n / rate for n, rate in later)
    knn = knn_eval.run_knn(workdir, k=args.knn_k, temperature=0.1, max_bank_examples=-1,
                           max_query_examples=-1, write=False)
    protocol = knn["knn_top1_final_protocol"]
    steps_per_second = timed_steps / timed_seconds if timed_seconds else None
    return {
        "method": config.method, "amcl": bool(config.amcl.enabled), "overrides": overrides,
        "budget_seconds": budget, "stopped_by_budget": bool(outcome.get("preempted")),
        "steps": steps, "epochs": steps * config.batch_size / protocol["bank_size"],
        "training_seconds": (ended - stop.training_started) if stop.training_started else None,
        "first_record_step": records[0]["step"] if records else None,
        "steps_per_second": steps_per_second,
        "images_per_second": (2 * config.batch_size * steps_per_second
                              if steps_per_second else None),
        "source_images_per_second": (config.batch_size * steps_per_second
                                     if steps_per_second else None),
        "final_loss": records[-1]["loss"] if records else None,
        "loss_curve": [[r["step"], r["loss"]] for r in records],
        "knn_top1": knn["knn_top1_final"], "knn_protocol": protocol,
        "knn_top1_init_monitor": next((e["knn_top1"] for e in knn["knn_history"]
                                       if e["step"] == 0), None),
        "wall_seconds_incl_compile_load_knn": time.time() - start,
        "batch_size": config.batch_size, "model": f"{args.run_model} width {args.width}",
        "dtype": "bfloat16", "augment_on": "device",
    }


def phase_cifar10(args, entry: dict, report: dict, scratch: str) -> None:
    from bench import run

    # What is left, less each run's compilation, loading and kNN, and (if it keeps the budget
    # above the minimum) the torch.compile phase's cap after this one.
    spare = seconds_left(args) - len(PAIR) * args.run_overhead_seconds - 10.0
    budget = min(args.train_seconds, spare / len(PAIR))
    if "torch_compile" in args.phases and run.torch is not None:
        with_reserve = min(args.train_seconds,
                           (spare - args.torch_compile_seconds) / len(PAIR))
        if with_reserve >= args.min_train_seconds:
            budget = with_reserve
            entry["reserved_for_torch_compile_seconds"] = args.torch_compile_seconds
    entry["train_seconds_asked"] = args.train_seconds
    entry["train_seconds_budget"] = budget
    entry["cap_seconds"] = len(PAIR) * (budget + args.run_overhead_seconds)
    if budget < args.min_train_seconds:
        entry["status"] = "skipped"
        entry["reason"] = (f"{seconds_left(args):.0f} s left before the deadline: a budget of "
                           f"{budget:.0f} s per run is under --min_train_seconds")
        return
    entry["runs"] = {}
    for name, overrides in PAIR.items():
        log(f"cifar10: {name} for {budget:.0f} s of training")
        try:
            entry["runs"][name] = train_for(args, name, overrides, budget, scratch)
        except Exception as e:  # noqa: BLE001 (one run's failure must not stop the other)
            entry["runs"][name] = {"status": "error", "error": _error_text(e),
                                   "traceback": traceback.format_exc()[-4000:]}
            entry["status"] = "partial"
        write_report(report, args.out)
    if all("error" in run for run in entry["runs"].values()):
        entry["status"] = "error"
        entry["error"] = "every run failed (see runs)"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def run_phase(name: str, report: dict, args, cap: float | None, fn, *fn_args) -> None:
    """Runs `fn(args, entry, *fn_args)`, which fills the phase's entry (and may set its own
    `cap_seconds`); records its status, error and seconds, whether it overran its cap (phases
    that cannot be interrupted), and rewrites the report."""
    entry = {"status": "running", "cap_seconds": cap, "_start": time.time()}
    report["phases"][name] = entry
    report["status"] = f"running {name}"
    write_report(report, args.out)
    log(f"phase {name} ({seconds_left(args):.0f} s left before the deadline)")
    try:
        fn(args, entry, *fn_args)
        if entry["status"] == "running":
            entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001 (a failed phase is recorded; the next one runs)
        entry["status"] = "error"
        entry["error"] = _error_text(e)
        entry["traceback"] = traceback.format_exc()[-4000:]
        log(f"phase {name} failed: {entry['error']}")
    entry["seconds"] = time.time() - entry.pop("_start")
    if entry.get("cap_seconds") is not None:
        entry["over_cap"] = entry["seconds"] > entry["cap_seconds"]
    write_report(report, args.out)


def write_report(report: dict, out: str) -> None:
    """OUT/gpu_check.json and OUT/gpu_check.md, each replaced whole."""
    report["wall_seconds"] = time.time() - STARTED
    clean = json.loads(json.dumps(report, default=str))
    for phase in clean["phases"].values():
        phase.pop("_start", None)
    for name, text in (("gpu_check.json", json.dumps(clean, indent=2)),
                       ("gpu_check.md", markdown(clean))):
        path = os.path.join(out, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def _num(value, fmt: str = ".3g", scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, fmt)


def markdown(report: dict) -> str:
    device, phases = report["device"], report["phases"]
    lines = ["# GPU check", "",
             f"`{report['command']}` on {device.get('jax_device_kind')} "
             f"({device.get('jax_device_count')} device(s), backend "
             f"{device.get('jax_backend')}), {report['date']}; status {report['status']}, "
             f"{report['wall_seconds']:.0f} s.", "",
             "| phase | status | seconds | cap (s) | error or note |", "|---|---|---|---|---|"]
    for name, entry in phases.items():
        note = str(entry.get("error") or entry.get("reason") or entry.get("stopped") or "")
        note = " ".join(note.replace("|", "/").split())[:300]  # one table cell
        lines.append(f"| {name} | {entry['status']} | {_num(entry.get('seconds'), '.0f')} | "
                     f"{_num(entry.get('cap_seconds'), '.0f')} | {note} |")
    steps = phases.get("steps", {})
    compiled = phases.get("torch_compile", {}).get("by_dtype", {})
    if steps.get("by_dtype") or compiled:
        lines += ["", f"## Train step ({report['settings']['step_model']} (JAX) CIFAR stem, "
                  f"width {report['settings']['width']}"
                  f", {report['settings']['batch_per_view']} per view, 2 views)", "",
                  "| dtype | variant | ms/step | images/s | MFU | first step (s) |",
                  "|---|---|---|---|---|---|"]
        for dtype in report["settings"]["dtypes"]:
            rows = dict(steps.get("by_dtype", {}).get(dtype, {}).get("steps", {}))
            rows.update(compiled.get(dtype, {}))
            for name, s in rows.items():
                first = s.get("first_step_seconds_incl_compile", s.get("first_step_seconds"))
                lines.append(f"| {dtype} | {name} | {_num(s['median_step_seconds'], '.2f', 1e3)}"
                             f" | {_num(s['images_per_second'], '.0f')} | "
                             f"{_num(s.get('mfu'), '.1%')} | {_num(first, '.1f')} |")
        for dtype, result in steps.get("by_dtype", {}).items():
            peak = result["peak_flops"]["nominal"]
            ratios = ", ".join(f"{k} {v:.3g}" for k, v in result["ratios"].items())
            lines.append(f"\n{dtype}: {ratios}; MFU against "
                         f"{_num(peak['flops_per_second'], '.4g', 1e-12)} TFLOP/s "
                         f"({peak['source']}).")
    loop = phases.get("loop", {})
    if "loop_over_step_throughput" in loop:
        lines += ["", "## Training loop against its bare step (views on the device)", "",
                  f"{loop['dtype']}, {loop['batch_per_view']} per view: "
                  f"{_num(loop['loop_seconds_per_step'], '.3g', 1e3)} ms per update against "
                  f"{_num(loop['bare_step_median_seconds'], '.3g', 1e3)} ms for the bare step: "
                  f"loop / step throughput {loop['loop_over_step_throughput']:.3f} "
                  f"(goal >= 0.95: {'met' if loop['met'] else 'not met'})."]
    runs = phases.get("cifar10", {}).get("runs", {})
    if runs:
        budget = phases["cifar10"]["train_seconds_budget"]
        settings = report["settings"]
        lines += ["", f"## CIFAR-10, {budget:.0f} s of training each ({settings['run_model']} at "
                  f"width {settings['width']}, batch {settings['pair_batch']}, bfloat16, views "
                  "on the device)", "",
                  f"| run | steps | epochs | images/s | kNN top-1 (k {settings['knn_k']}, T 0.1) "
                  "| final loss | wall (s) |", "|---|---|---|---|---|---|---|"]
        for name, r in runs.items():
            if "error" in r:
                error = " ".join(r["error"].replace("|", "/").split())[:200]
                lines.append(f"| {name} | error: {error} | | | | | |")
                continue
            lines.append(f"| {name} | {r['steps']} | {r['epochs']:.2f} | "
                         f"{_num(r['images_per_second'], '.0f')} | {r['knn_top1']:.2%} | "
                         f"{_num(r['final_loss'], '.4g')} | "
                         f"{r['wall_seconds_incl_compile_load_knn']:.0f} |")
        lines.append("\nkNN: the whole training split as the bank and the whole test split as "
                     "queries; the learning rate's cosine runs over --max_steps, so it has "
                     "barely decayed at the stop (equal-time comparison, not best accuracy).")
    lines += ["", "## Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["versions"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and .md")
    parser.add_argument("--data_dir", default=os.path.join("payload", "cifar10-jpeg.tar.gz"),
                        help="CIFAR-10 as an image folder archive (train/<class>/*.jpg, test/..)")
    parser.add_argument("--toy", action="store_true",
                        help="toy scale (tiny width, few steps, second-long budgets): the "
                             "script's logic on a CPU")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--loop_dtype", default="bfloat16")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated subset of " + ",".join(PHASES))
    parser.add_argument("--min_train_seconds", type=float, default=None,
                        help="skip the cifar10 phase when less is left per run (default: a "
                             "quarter of --train_seconds)")
    parser.add_argument("--torch_compile_worker", action="store_true", help=argparse.SUPPRESS)
    for key, value in SCALES["gpu"].items():
        parser.add_argument(f"--{key}", type=type(value), default=None,
                            help=f"default {value} (toy: {SCALES['toy'][key]})")
    args = parser.parse_args(argv)
    for key, value in SCALES["toy" if args.toy else "gpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.dtypes = args.dtypes.split(",")
    args.phases = args.phases.split(",")
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"--phases: unknown {sorted(unknown)}; allowed: {', '.join(PHASES)}")
    if args.min_train_seconds is None:
        args.min_train_seconds = args.train_seconds / 4
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.torch_compile_worker:
        sys.path.insert(0, ROOT)
        torch_compile_worker(args)
        return {}
    # A hang (a stuck compilation or device) must not outlive the machine's time: dump every
    # thread's stack and exit; the report written after each phase stays.
    import faulthandler

    faulthandler.dump_traceback_later(args.deadline_seconds + 30, exit=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # JAX takes 75% of the GPU by default; PyTorch (here and in the torch.compile subprocess)
    # needs room beside it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    sys.path.insert(0, ROOT)
    import jax

    scratch = tempfile.mkdtemp(prefix="amcl_gpu_check_")
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # Programs shared by phases compile once.
        jax.config.update("jax_compilation_cache_dir", os.path.join(scratch, "xla_cache"))
    os.makedirs(args.out, exist_ok=True)
    from bench.common import command_line

    report = {"command": command_line(__file__, argv), "toy": args.toy,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "status": "starting",
              "settings": {k: v for k, v in vars(args).items() if k != "torch_compile_worker"},
              "device": {}, "versions": {}, "phases": {}}
    try:
        report["device"], report["versions"] = environment()
        write_report(report, args.out)
        log(f"{report['device']['jax_device_kind']}; versions {report['versions']}")
        # name -> (cap, phase function, its extra arguments); torch_compile's cap is set when
        # it starts (what is left), cifar10's is its budget.
        phases = {"steps": (args.steps_cap_seconds, phase_steps),
                  "loop": (args.loop_cap_seconds, phase_loop),
                  "cifar10": (None, phase_cifar10, report, scratch),
                  "torch_compile": (None, phase_torch_compile, report)}
        for name in args.phases:
            cap, fn, *fn_args = phases[name]
            if name == "loop" and seconds_left(args) < args.loop_cap_seconds / 2:
                report["phases"][name] = {"status": "skipped", "reason": (
                    f"{seconds_left(args):.0f} s left, under half the phase's cap")}
                continue
            run_phase(name, report, args, cap, fn, *fn_args)
        report["status"] = "done"
    finally:
        write_report(report, args.out)
        shutil.rmtree(scratch, ignore_errors=True)
        faulthandler.cancel_dump_traceback_later()
    log(f"wrote {args.out}/gpu_check.json and gpu_check.md ({report['wall_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
