"""Optimisation attempt for the CPU train step: XLA:CPU flags that route convolutions elsewhere.

    python bench/xla_flags.py --output bench/results/xla_flags_cpu.json

XLA:CPU can hand dots and convolutions to other libraries (oneDNN, XNNPACK, YNNPACK) through
debug flags. For each flag setting, a fresh process (flags are read at start-up) times the
forward + backward (value and gradients w.r.t. input and kernel, jitted) of the two 3x3
convolutions where XLA:CPU is furthest behind PyTorch (32x32x64 and 16x16x128, 128 images), with
the stock lax convolution and with `fast_wgrad` (`models/fast_conv.py`), and the stock forward
pass alone (`lax_forward`, with its GFLOP/s). Prediction before measuring: a library convolution
(oneDNN is what PyTorch uses) would reach PyTorch's ~2x on these layers if XLA:CPU really
dispatched to it. Medians of 5 runs per setting; the settings run one after another, and the
no-flag setting runs first and last so that drift shows.

The oneDNN/XNNPACK flags cannot reach these convolutions: jaxlib 0.10 already hands them to
YNNPACK ("ynn_fusion" in the compiled HLO), which those flags leave in place. The settings
`ynnpack_dots_only` and `no_ynnpack` take them back to XLA's own kernel, which is what the
project now does per program (`model.xla_cpu_ynnpack`). The `*_no_ynnpack` settings pass the
oneDNN/XNNPACK flags with YNNPACK off, in case it was only hiding them; each setting reports the
libraries its compiled programs hand work to (`libraries_in_programs`, from the program text).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import command_line, write_json  # noqa: E402

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_convolution": "--xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "xnn_convolution": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "ynn_convolution_dot": "--xla_cpu_experimental_ynn_fusion_type="
                           "individual_convolution,individual_dot",
    "no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
    # jaxlib 0.10 runs convolutions and dots in YNNPACK by default, which the library flags
    # above leave in place; these take the convolutions (and the dots) back to XLA's own kernels.
    "ynnpack_dots_only": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "no_ynnpack": "--xla_cpu_experimental_ynn_fusion_type=",
    # The library flags again with YNNPACK out of the way, in case it was only hiding them.
    "onednn_no_ynnpack": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true",
    "onednn_convolution_no_ynnpack": "--xla_cpu_experimental_ynn_fusion_type= "
                                     "--xla_cpu_experimental_onednn_fusion_type="
                                     "individual_convolution",
    "xnn_convolution_no_ynnpack": "--xla_cpu_experimental_ynn_fusion_type= "
                                  "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "default_again": "",  # Brackets the drift of the machine over the run.
}
LAYERS = ((32, 64, 64), (16, 128, 128))
# Marks of each library in a compiled XLA:CPU program's text.
LIBRARY_MARKS = {"onednn": "onednn", "xnnpack": "xnn_fusion", "ynnpack": "ynn_fusion"}


def libraries_in(compiled_text: str) -> list[str]:
    """The libraries (LIBRARY_MARKS) a compiled program hands work to."""
    text = compiled_text.lower()
    return sorted(name for name, mark in LIBRARY_MARKS.items() if mark in text)


def child(batch: int, rounds: int) -> dict:
    """Runs in the subprocess: times each layer with each convolution."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax

    from bench.conv_attempts import VARIANTS, make_step
    from bench.timing import time_calls

    out, libraries = {}, set()
    for size, cin, cout in LAYERS:
        x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
        w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.05
        forward = jax.jit(lambda x, w: VARIANTS["lax"](x, w, 1))  # The forward pass alone.
        for name in ("lax_forward", "lax", "fast_wgrad"):
            step = forward if name == "lax_forward" else make_step(VARIANTS[name], stride=1)
            compiled = step.lower(x, w).compile()  # Timed as inspected, compiled once.
            libraries.update(libraries_in(compiled.as_text()))
            times = time_calls(
                lambda compiled=compiled, x=x, w=w: jax.block_until_ready(compiled(x, w)), rounds)
            out[f"{size}x{size}x{cin}/{name}"] = statistics.median(times)
    return {"median_seconds": out, "libraries_in_programs": sorted(libraries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="bench/results/xla_flags_cpu.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.batch, args.rounds)))
        return
    report = {"command": command_line(__file__),
              "batch": args.batch, "load_average_at_start": list(os.getloadavg()),
              "settings": {}}
    for name, flags in SETTINGS.items():
        env = dict(os.environ, XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", "--batch", str(args.batch),
             "--rounds", str(args.rounds)], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            report["settings"][name] = {"xla_flags": flags, "error": done.stderr[-2000:]}
            print(f"{name:30s} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = result["median_seconds"]
        report["settings"][name] = {"xla_flags": flags, **result}
        print(f"{name:30s} " + "  ".join(f"{k} {v * 1e3:7.1f} ms" for k, v in seconds.items())
              + f"  libraries: {result['libraries_in_programs']}", flush=True)
    # The forward convolution's rate: 2 * output size * 9 * Cin FLOPs.
    flops = {f"{size}x{size}x{cin}": 2 * args.batch * size * size * cout * 9 * cin
             for size, cin, cout in LAYERS}
    for entry in report["settings"].values():
        if "median_seconds" in entry:
            entry["lax_forward_gflop_per_second"] = {
                layer: flops[layer] / 1e9 / entry["median_seconds"][f"{layer}/lax_forward"]
                for layer in flops}
    base = report["settings"]["default"].get("median_seconds", {})
    report["speedup_over_default"] = {
        name: {k: base[k] / v for k, v in entry["median_seconds"].items() if k in base}
        for name, entry in report["settings"].items() if "median_seconds" in entry}
    write_json(args.output, report)


if __name__ == "__main__":
    main()
