"""Issue 6's benchmark in one command: JAX vs PyTorch, AMCL vs SimCLR, pipeline vs step, memory.

    python bench/run.py --quick --output bench/results/quick_cpu.json   # ~10 min on 2 CPU cores
    python bench/run.py --output bench/results/full_cpu.json            # + batch sweep, RESULTS.md

Measures in one process, side by side:
- train steps at each batch size per view: the project's jitted ResNet-18 CIFAR step (`simclr`,
  `amcl_topk`: the authors' form, `amcl_max`, `amcl_logsumexp`: the project's; 3 heads +
  temperature net) and the eager PyTorch reference
  (`bench/torch_reference.py`, NCHW and channels_last). All variants are built and warmed up
  first, then timed in interleaved rounds (one step of each per round) so that load from other
  processes hits every variant alike; figures are medians over rounds.
- the tf.data two-view pipeline (`amcl_jax.data.train_iterator`, letters "abcde") on random
  32x32 uint8 images, alone on the same cores: views/s and source images/s.
- the training loop (`bench/loop.py`): `train_and_evaluate` on an image folder, its seconds per
  update against the bare step's at the headline batch (`loop_over_step_throughput`), i.e. what
  the host's per-step work (tf.data views, the copy to the device, dispatch) costs the step.
- peak memory of loss + gradient (XLA memory analysis, compile only) for the AMCL loss (C=3,
  every negative mode, temperature net) over NT-Xent (C=1) at a large batch.
- utilisation of each step (`bench/flops.py`): model FLOPs per second over the device's
  data-sheet peak (MFU; GPUs) and over the best matmul rate measured on it (every device).

`--dtype bfloat16` runs both frameworks' steps in bfloat16 (JAX `model.dtype`, PyTorch
autocast). On a GPU machine the same command times both there (PyTorch on CUDA when it sees it).

Writes a JSON with the ratios, their goals, the raw figures, device, versions and batch sizes.
The full mode (no --quick) sweeps batch sizes and writes `bench/RESULTS.md` and its PNG
(`bench/results/throughput_vs_batch.png`).
PyTorch is optional (`pip install -r bench/requirements.txt`); without it the torch ratio is null.
Runtime on 2 Zen 3 cores, measured: --quick 5.0 min idle (1.5 of them the training loop;
`--no_loop` skips it); full with --steps 5 19 min before the loop was added (batches 32, 64,
128, 256; three JAX compiles per batch), so ~30 min with the default 10 rounds. Under
heavy load from other processes both grow several-fold (a --quick run at load average ~8 took
~25 min).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from amcl_jax.config import get_default_config  # noqa: E402
from bench import flops, loop  # noqa: E402
from bench.common import command_line, versions, write_json  # noqa: E402
from bench.jax_step import (  # noqa: E402
    ATTEMPT_VARIANTS,
    STEP_OPTIONS,
    VARIANTS,
    loss_peak_bytes,
    make_config,
    make_jax_step,
)
from bench.timing import items_within, seconds_of  # noqa: E402

try:
    import torch

    from bench import torch_reference
except ImportError:  # PyTorch is a benchmark-only dependency.
    torch = None
    torch_reference = None

GOALS = {
    "jax_over_torch_throughput": (">=", 1.1),
    "amcl_over_simclr_step_time": ("<=", 1.05),
    "pipeline_over_step_throughput": (">=", 5.0),
    "amcl_loss_peak_bytes_over_ntxent": ("<=", 2.0),
}
HEADLINE_BATCH = 64
TORCH_LAYOUTS = {"torch_nchw": False, "torch_channels_last": True}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Train steps, interleaved
# --------------------------------------------------------------------------------------------
def time_steps(batch_per_view: int, args, jax_overrides: dict[str, dict] | None = None,
               torch_options: dict[str, dict] | None = None) -> dict[str, dict]:
    """Builds every variant at this batch size, then times them in interleaved rounds.

    The variants: `jax_overrides` (name -> config overrides; default `args.jax_variants` from
    VARIANTS and ATTEMPT_VARIANTS) and, unless `args.no_torch`, `torch_options` (name ->
    `torch_reference.make_train_step` options; default both TORCH_LAYOUTS, eager).
    """
    if jax_overrides is None:
        jax_overrides = {name: {**VARIANTS, **ATTEMPT_VARIANTS}[name]
                         for name in args.jax_variants}
    if torch_options is None:
        torch_options = {name: {"channels_last": channels_last}
                         for name, channels_last in TORCH_LAYOUTS.items()}
    steps, build = {}, {}
    for name, overrides in jax_overrides.items():
        config = make_config(batch_per_view=batch_per_view, overrides=overrides,
                             model=args.model, width=args.width, dtype=args.dtype)
        steps[name], compile_seconds = make_jax_step(config, **STEP_OPTIONS.get(name, {}))
        build[name] = {"first_step_seconds_incl_compile": compile_seconds}
        if set(args.jax_variants) & set(ATTEMPT_VARIANTS):  # Attempts: what each compiles to.
            build[name]["memory"] = steps[name].memory_stats()
        log(f"  built {name} (first step incl. compile {compile_seconds:.1f} s)")
    if torch_reference is not None and not args.no_torch:
        for name, options in torch_options.items():
            step, _ = torch_reference.make_train_step(
                batch_per_view=batch_per_view, width=args.width, dtype=args.dtype, **options)

            steps[name] = timed = functools.partial(seconds_of, step)
            build[name] = {"first_step_seconds": timed()}
            log(f"  built {name}")
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.steps):
        for name, step in steps.items():
            times[name].append(step())
        log(f"  round {round_index + 1}/{args.steps}: " + ", ".join(
            f"{name} {times[name][-1]:.2f}s" for name in steps))
    results = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        results[name] = dict(
            build[name], median_step_seconds=median, step_seconds=seconds,
            images_per_second=2 * batch_per_view / median,
            source_images_per_second=batch_per_view / median)
    return results


# --------------------------------------------------------------------------------------------
# MFU
# --------------------------------------------------------------------------------------------
def peak_flops(args) -> dict:
    """The device's nominal peak (GPU data sheets) and the matmul rate each framework reaches."""
    from amcl_jax.platform import cpu

    # As the timed steps compile (the config's default `model.xla_cpu_ynnpack`).
    options = cpu.xla_compiler_options(cpu.DEFAULT_XLA_CPU_YNNPACK)
    measured = {"jax": flops.measured_matmul_flops_per_second(args.dtype,
                                                              compiler_options=options)}
    if torch_reference is not None and not args.no_torch:
        measured["torch"] = torch_reference.matmul_flops_per_second(args.dtype)
    return {"nominal": flops.nominal_peak_flops(args.dtype), "measured_matmul": measured,
            "measured_matmul_best_flops_per_second": max(
                m["flops_per_second"] for m in measured.values())}


def add_utilisation(steps: dict, batch_per_view: int, peak: dict, args) -> dict:
    """Per timed step: model FLOP/s, MFU (nominal peak) and matmul utilisation (measured).

    Every step is credited with the SimCLR model's FLOPs: the same network in PyTorch, and
    AMCL's two extra projection heads add 0.1% at 64 per view (the loss is not counted).
    """
    config = make_config(batch_per_view=batch_per_view, overrides=VARIANTS["simclr"],
                         model=args.model, width=args.width, dtype=args.dtype)
    model_flops = flops.model_flops_per_step(config, batch_per_view)["step"]
    for entry in steps.values():
        seconds = entry["median_step_seconds"]
        entry["model_flops_per_step"] = model_flops
        entry["model_flops_per_second"] = model_flops / seconds
        entry["mfu"] = flops.utilisation(model_flops, seconds, peak["nominal"]["flops_per_second"])
        entry["matmul_utilisation"] = flops.utilisation(
            model_flops, seconds, peak["measured_matmul_best_flops_per_second"])
    return steps


# --------------------------------------------------------------------------------------------
# Input pipeline
# --------------------------------------------------------------------------------------------
def pipeline_rate(args) -> dict:
    """Two-view augmentation rate of `train_iterator` on random 32x32 uint8 images."""
    from amcl_jax import data as data_lib

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.pipeline_examples, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (args.pipeline_examples,)).astype(np.int32)
    mean, std = data_lib.dataset_stats("cifar10")
    num_views = 2
    batches = data_lib.train_iterator(
        images, labels, global_batch_size=args.pipeline_batch, seed=0, start_step=0,
        augmentations="abcde", image_size=32, num_views=num_views, mean=mean, std=std)
    # Three untimed batches: graph tracing and autotuning.
    count, seconds = items_within(batches, args.pipeline_seconds, warmup=3)
    del batches
    source = count * args.pipeline_batch / seconds
    return {"source_images_per_second": source, "views_per_second": num_views * source,
            "batch": args.pipeline_batch, "batches": count, "seconds": seconds,
            "augmentations": "abcde", "data": "random uint8 (N, 32, 32, 3)",
            "num_examples": args.pipeline_examples}


# --------------------------------------------------------------------------------------------
# Loss memory
# --------------------------------------------------------------------------------------------
def loss_memory(args) -> dict:
    n = args.memory_batch
    out = {"batch_per_view": n, "num_views": 2 * n, "dim": 128, "num_heads": 3,
           "ntxent": loss_peak_bytes(loss="ntxent", batch_per_view=n),
           "amcl_max": loss_peak_bytes(loss="amcl", batch_per_view=n, negatives="max"),
           "amcl_topk": loss_peak_bytes(loss="amcl", batch_per_view=n, negatives="topk")}
    for chunk in args.memory_chunk_sizes:
        out[f"amcl_logsumexp_chunk{chunk}"] = loss_peak_bytes(
            loss="amcl", batch_per_view=n, negatives="logsumexp", chunk_size=chunk)
    out["amcl_logsumexp"] = out[f"amcl_logsumexp_chunk{args.default_chunk_size}"]
    return out


# --------------------------------------------------------------------------------------------
# Ratios, report
# --------------------------------------------------------------------------------------------
def _met(name: str, value: float | None) -> bool | None:
    if value is None:
        return None
    op, goal = GOALS[name]
    return value >= goal if op == ">=" else value <= goal


def ratios(steps: dict, pipeline: dict | None, memory: dict | None) -> dict:
    out = {}
    jax_ips = steps["simclr"]["images_per_second"]
    torch_names = [name for name in TORCH_LAYOUTS if name in steps]
    if torch_names:
        best = max(torch_names, key=lambda name: steps[name]["images_per_second"])
        value = jax_ips / steps[best]["images_per_second"]
        out["jax_over_torch_throughput"] = {"value": value, "torch_layout": best}
    else:
        out["jax_over_torch_throughput"] = {"value": None, "torch_layout": None}
    per_mode = {name.removeprefix("amcl_"): steps[name]["median_step_seconds"]
                / steps["simclr"]["median_step_seconds"]
                for name in steps if name.startswith("amcl_")}
    out["amcl_over_simclr_step_time"] = {"value": max(per_mode.values()) if per_mode else None,
                                         "by_negatives": per_mode, "value_is": "worst mode"}
    if pipeline is not None:
        out["pipeline_over_step_throughput"] = {
            "value": pipeline["source_images_per_second"]
            / steps["simclr"]["source_images_per_second"],
            "step": "simclr", "by_step": {
                name: pipeline["source_images_per_second"] / s["source_images_per_second"]
                for name, s in steps.items() if name in VARIANTS}}
    if memory is not None:
        base = memory["ntxent"]["peak_bytes"]
        by_mode = {mode: memory[f"amcl_{mode}"]["peak_bytes"] / base
                   for mode in ("topk", "max", "logsumexp") if f"amcl_{mode}" in memory}
        by_chunk = {key.removeprefix("amcl_logsumexp_chunk"): memory[key]["peak_bytes"] / base
                    for key in memory if key.startswith("amcl_logsumexp_chunk")}
        out["amcl_loss_peak_bytes_over_ntxent"] = {
            "value": max(by_mode.values()), "by_negatives": by_mode, "value_is": "worst mode",
            "logsumexp_by_chunk_size": by_chunk}
    for name, entry in out.items():
        entry["goal"] = " ".join(str(x) for x in GOALS[name])
        entry["met"] = _met(name, entry["value"])
        if isinstance(entry.get("by_negatives"), dict):
            entry["met_by_negatives"] = {k: _met(name, v) for k, v in entry["by_negatives"].items()}
    return out


def device_info() -> dict:
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(line.split(":", 1)[1].strip() for line in f
                             if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"jax_backend": jax.default_backend(), "jax_device_kind": jax.devices()[0].device_kind,
            "jax_device_count": jax.device_count(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model, "machine": platform.machine(),
            "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_at_start": os.getloadavg(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def write_results_md(report: dict, md_path: str, png_path: str) -> None:
    """RESULTS.md: the ratio table, throughput per batch size, and a PNG of the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["steps_by_batch"]
    batches = sorted(int(b) for b in sweep)
    names = list(next(iter(sweep.values())))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ax.plot(batches, [sweep[str(b)][name]["images_per_second"] for b in batches], "o-",
                label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch per view (2 views per step)")
    ax.set_ylabel("images/s (both views)")
    device = report["device"]
    where = (f"{device['cpu_count']} CPU cores" if device["jax_backend"] == "cpu"
             else device["jax_device_kind"])
    ax.set_title(f"Train step, ResNet-18 CIFAR, {report['model']['dtype']}, {where}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)

    lines = [
        "# Benchmark results", "",
        f"`{report['command']}` on {report['device']['cpu_model']} "
        f"({report['device']['cpu_count']} cores, backend {report['device']['jax_backend']}); "
        f"jax {report['versions']['jax']}, flax {report['versions']['flax']}, "
        f"torch {report['versions']['torch']}, tensorflow {report['versions']['tensorflow']}. "
        f"Written {report['date']}; raw figures in the JSON next to this file's command.", "",
        "## Ratios (headline batch per view "
        f"{report['headline_batch_per_view']})", "",
        "| ratio | value | goal | met |", "|---|---|---|---|"]
    for name, entry in report["ratios"].items():
        value = "n/a" if entry["value"] is None else f"{entry['value']:.3g}"
        extra = entry.get("by_negatives")
        if extra:
            value += " (" + ", ".join(f"{k} {v:.3g}" for k, v in extra.items()) + ")"
        lines.append(f"| `{name}` | {value} | {entry['goal']} | {entry['met']} |")
    lines += ["", "## Train step throughput, images/s (both views counted)", "",
              "| batch/view | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for b in batches:
        lines.append(f"| {b} | " + " | ".join(
            f"{sweep[str(b)][name]['images_per_second']:.1f}" for name in names) + " |")
    peak = report["peak_flops"]
    lines += ["", f"## Utilisation ({report['model']['dtype']})", "",
              "Model FLOPs per step (matmuls and convolutions, forward x 3; `bench/flops.py`) "
              "over the step time, against the data-sheet peak (MFU; "
              f"{peak['nominal']['source']}) and against the best matmul rate measured on the "
              f"same device ({peak['measured_matmul_best_flops_per_second'] / 1e12:.3g} "
              "TFLOP/s).", "",
              "| batch/view | " + " | ".join(f"{name} MFU / matmul util." for name in names)
              + " |", "|---" * (len(names) + 1) + "|"]
    for b in batches:
        lines.append(f"| {b} | " + " | ".join(
            f"{_percent(sweep[str(b)][name]['mfu'])} / "
            f"{_percent(sweep[str(b)][name]['matmul_utilisation'])}" for name in names) + " |")
    pipe = report.get("pipeline")
    if pipe:
        lines += ["", f"Pipeline (`train_iterator`, \"abcde\", random 32x32 uint8): "
                  f"{pipe['source_images_per_second']:.0f} source images/s, "
                  f"{pipe['views_per_second']:.0f} views/s."]
    run = report.get("loop")
    if run:
        lines += ["", f"Training loop (`bench/loop.py`, `train_and_evaluate` on an image folder, "
                  f"{run['batch_per_view']} per view): {run['loop_seconds_per_step']:.3g} s per "
                  f"update against {run['bare_step_median_seconds']:.3g} s for the bare step, "
                  f"loop / step throughput {run['loop_over_step_throughput']:.3f}."]
    # The PNG's path relative to the Markdown file, so that the link works where both are.
    image = os.path.relpath(os.path.abspath(png_path), os.path.dirname(os.path.abspath(md_path)))
    lines += ["", f"![throughput vs batch]({image})", ""]
    with open(md_path, "w") as f:
        f.write("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 64 per view only, fewer rounds (~5 min on 2 cores)")
    parser.add_argument("--output", required=True, help="the JSON to write")
    parser.add_argument("--batch_sizes", default=None,
                        help="comma-separated batches per view (default: quick 64, full "
                             "32,64,128,256)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed interleaved rounds (default: quick 5, full 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after the build")
    parser.add_argument("--model", default="resnet18",
                        help="the JAX steps' encoder (PyTorch's reference is ResNet-18)")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the model's compute dtype (JAX `model.dtype`, PyTorch autocast)")
    parser.add_argument("--jax_variants", default=",".join(VARIANTS),
                        help="comma-separated, of: " + ",".join([*VARIANTS, *ATTEMPT_VARIANTS]))
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--pipeline_batch", type=int, default=256)
    parser.add_argument("--pipeline_examples", type=int, default=50_000)
    parser.add_argument("--pipeline_seconds", type=float, default=None,
                        help="timed seconds of the pipeline (default: quick 15, full 30)")
    parser.add_argument("--loop_steps", type=int, default=8,
                        help="timed updates of the training loop (bench/loop.py)")
    parser.add_argument("--no_loop", action="store_true", help="skip the training loop")
    parser.add_argument("--memory_batch", type=int, default=4096,
                        help="batch per view N for the loss memory (2N views)")
    parser.add_argument("--memory_chunk_sizes", default=None,
                        help="logsumexp chunk sizes to analyse "
                        "(default 32,256; full 32,64,128,256)")
    parser.add_argument("--default_chunk_size", type=int,
                        default=get_default_config().amcl.chunk_size,
                        help="the chunk size the headline memory ratio uses (the config default)")
    parser.add_argument("--results_md", default=None,
                        help="full mode: where to write RESULTS.md (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or (
        str(HEADLINE_BATCH) if args.quick else "32,64,128,256")).split(",")]
    args.steps = args.steps or (5 if args.quick else 10)
    args.pipeline_seconds = args.pipeline_seconds or (15.0 if args.quick else 30.0)
    args.jax_variants = args.jax_variants.split(",")
    if "simclr" not in args.jax_variants:
        parser.error("--jax_variants must include simclr (the reference of every ratio)")
    unknown = set(args.jax_variants) - set(VARIANTS) - set(ATTEMPT_VARIANTS)
    if unknown:
        parser.error(f"--jax_variants: unknown {sorted(unknown)}; allowed: "
                     + ", ".join([*VARIANTS, *ATTEMPT_VARIANTS]))
    chunks = args.memory_chunk_sizes or ("32,256" if args.quick else "32,64,128,256")
    args.memory_chunk_sizes = sorted({int(c) for c in chunks.split(",")}
                                     | {args.default_chunk_size})
    args.results_md = args.results_md or os.path.join(BENCH_DIR, "RESULTS.md")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    report = {"command": command_line(__file__, argv),
              "mode": "quick" if args.quick else "full",
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "device": device_info(), "versions": versions(),
              "batch_sizes_per_view": args.batch_sizes,
              "headline_batch_per_view": HEADLINE_BATCH if HEADLINE_BATCH in args.batch_sizes
              else args.batch_sizes[0],
              "settings": {k: (os.path.relpath(v, os.path.dirname(BENCH_DIR))
                               if k == "results_md" else v)
                           for k, v in vars(args).items() if k not in ("output",)},
              "model": {"name": args.model, "stem": "cifar", "width": args.width,
                        "dtype": args.dtype, "image_size": 32, "projector": "512-512-128",
                        "optimizer": "sgd momentum 0.9 wd 5e-4", "ntxent_temperature": 0.5},
              "goals": {k: " ".join(str(x) for x in v) for k, v in GOALS.items()}}
    if torch is None:
        log("PyTorch not importable: skipping the reference (pip install -r "
            "bench/requirements.txt)")

    log(f"loss memory at batch {args.memory_batch} per view (compile only)")
    report["loss_memory"] = loss_memory(args)

    report["steps_by_batch"] = {}
    for batch in args.batch_sizes:
        log(f"train steps at batch {batch} per view")
        report["steps_by_batch"][str(batch)] = time_steps(batch, args)

    # After the steps: the large matmuls move glibc's threshold for mapping fresh memory, which
    # moved the PyTorch step's time by ~10% when they ran first (host allocator attempt).
    log("peak FLOP/s: data sheet and measured matmuls")
    report["peak_flops"] = peak_flops(args)
    for batch, steps in report["steps_by_batch"].items():
        add_utilisation(steps, int(batch), report["peak_flops"], args)

    log("input pipeline")
    report["pipeline"] = pipeline_rate(args)

    report["loop"] = None
    if not args.no_loop:
        log("training loop against its bare step (bench/loop.py)")
        report["loop"] = loop.measure_loop(
            batch_per_view=report["headline_batch_per_view"], steps=args.loop_steps, rounds=3,
            width=args.width, dtype=args.dtype)

    headline = report["steps_by_batch"][str(report["headline_batch_per_view"])]
    report["ratios"] = ratios(headline, report["pipeline"], report["loss_memory"])
    report["ratios_by_batch"] = {
        b: {k: v["value"] for k, v in ratios(s, report["pipeline"], None).items()}
        for b, s in report["steps_by_batch"].items()}
    report["wall_seconds"] = time.time() - started

    write_json(args.output, report)
    log(f"wrote {args.output} ({report['wall_seconds'] / 60:.1f} min)")
    if not args.quick:
        png = os.path.join(os.path.dirname(os.path.abspath(args.results_md)),
                           "results", "throughput_vs_batch.png")
        os.makedirs(os.path.dirname(png), exist_ok=True)
        write_results_md(report, args.results_md, png)
        log(f"wrote {args.results_md} and {png}")
    for name, entry in report["ratios"].items():
        value = "n/a" if entry["value"] is None else f"{entry['value']:.3f}"
        print(f"{name:36s} {value:>8s}  goal {entry['goal']:8s} met={entry['met']}")
    if report["loop"]:
        value = report["loop"]["loop_over_step_throughput"]
        print(f"{'loop_over_step_throughput':36s} {value:8.3f}  (training loop / bare step)")
    for name, entry in headline.items():
        print(f"{name:36s} {entry['model_flops_per_second'] / 1e12:8.3f} model TFLOP/s  "
              f"MFU {_percent(entry['mfu'])}  matmul utilisation "
              f"{_percent(entry['matmul_utilisation'])}")
    return report


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
