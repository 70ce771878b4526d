"""Optimisation lever "layouts": does XLA:CPU's convolution care which layout the program names?

    python bench/layouts.py --output bench/results/layouts_cpu.json

PyTorch's fastest CPU step is its channels_last one (NHWC in memory, oneDNN's preferred form).
This compiles value + gradients (input and kernel) of the 3x3 convolution of ResNet-18's first
two stages, 128 images, once with NHWC/HWIO dimension numbers (what the project's Flax model
uses) and once with NCHW/OIHW (the input given in NCHW), under the project's compiler options;
it records the physical layout of every convolution XLA compiled, how many copies/transposes the
program holds, and the median time of each. The dimension numbers are the program's logical
layout; XLA's layout assignment picks the physical one.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from amcl_jax.models.fast_conv import xla_compiler_options  # noqa: E402
from bench.common import command_line, write_json  # noqa: E402
from bench.timing import time_calls  # noqa: E402

LAYERS = ((32, 64), (16, 128))  # (H = W, channels) of the stride-1 3x3 convolutions.
LAYOUTS = {"NHWC": ("NHWC", "HWIO", "NHWC"), "NCHW": ("NCHW", "OIHW", "NCHW")}


def value_and_grads(layout: str):
    numbers = LAYOUTS[layout]

    def loss(x, w):
        y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers)
        return jnp.sum(jnp.square(y))

    return jax.value_and_grad(loss, argnums=(0, 1))


def compiled_facts(text: str) -> dict:
    """Physical shapes of the compiled convolutions, and the count of copies/transposes."""
    convs = re.findall(r"= (f32\[[\d,]+\]\{[\d,]+\}) convolution\(", text)
    moves = len(re.findall(r"= \S+ (?:copy|transpose)\(", text))
    return {"convolutions": convs, "copies_and_transposes": moves}


def measure(batch: int, rounds: int) -> dict:
    options = xla_compiler_options("dot")
    out = {}
    for size, channels in LAYERS:
        x = jax.random.normal(jax.random.key(0), (batch, size, size, channels))
        w = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) * 0.05
        inputs = {"NHWC": (x, w),
                  "NCHW": (jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1)))}
        for layout, args in inputs.items():
            step = jax.jit(value_and_grads(layout), compiler_options=options)
            facts = compiled_facts(step.lower(*args).compile().as_text())
            times = time_calls(lambda step=step, args=args: jax.block_until_ready(step(*args)),
                               rounds)
            out[f"{size}x{size}x{channels}/{layout}"] = {
                "median_seconds": statistics.median(times), "seconds": times, **facts}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default="bench/results/layouts_cpu.json")
    args = parser.parse_args(argv)
    layers = measure(args.batch, args.rounds)
    report = {"command": command_line(__file__, argv),
              "batch": args.batch, "load_average_at_start": list(os.getloadavg()),
              "layers": layers,
              "nchw_over_nhwc_time": {
                  f"{size}x{size}x{c}": layers[f"{size}x{size}x{c}/NCHW"]["median_seconds"]
                  / layers[f"{size}x{size}x{c}/NHWC"]["median_seconds"] for size, c in LAYERS}}
    write_json(args.output, report)
    for name, entry in layers.items():
        print(f"{name:16s} {1e3 * entry['median_seconds']:7.1f} ms  "
              f"{entry['copies_and_transposes']:2d} copies/transposes  "
              f"convolutions {', '.join(entry['convolutions'])}")
    return report


if __name__ == "__main__":
    main()
