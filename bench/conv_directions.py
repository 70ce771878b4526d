"""Diagnosis: each ResNet-18 convolution's forward, input and weight gradients, XLA vs oneDNN.

    python bench/conv_directions.py --output bench/results/conv_directions_cpu.json

For every convolution shape of the ResNet-18 CIFAR step (`--batch` images: two views of 64),
times separately, as the project compiles them (`model.xla_cpu_ynnpack="dot"`: XLA's own
convolution kernel): the forward pass, the input gradient and the weight gradient of
`lax.conv_general_dilated` (each its own jitted program; XLA drops the unused forward of a
gradient), and the same three of PyTorch's oneDNN convolution (channels_last, `F.conv2d` and
`aten.convolution_backward` with one output each), medians of `--rounds`. The per-step figures
weigh each shape by its count in ResNet-18 (the stem's input gradient is never computed in
training). It answers which convolutions, and which direction, hold the JAX step back; the
`model.conv_impl="xla_cpu"` formulations (`models/fast_conv.py`) came from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from amcl_jax.models import xla_compiler_options  # noqa: E402
from bench.common import command_line, write_json  # noqa: E402
from bench.timing import time_calls  # noqa: E402

# (input size, Cin, Cout, stride, kernel) -> count in ResNet-18 with the CIFAR stem.
LAYERS: dict[tuple[int, int, int, int, int], int] = {
    (32, 3, 64, 1, 3): 1,  # stem
    (32, 64, 64, 1, 3): 4,
    (32, 64, 128, 2, 3): 1,
    (32, 64, 128, 2, 1): 1,  # projection shortcut
    (16, 128, 128, 1, 3): 3,
    (16, 128, 256, 2, 3): 1,
    (16, 128, 256, 2, 1): 1,
    (8, 256, 256, 1, 3): 3,
    (8, 256, 512, 2, 3): 1,
    (8, 256, 512, 2, 1): 1,
    (4, 512, 512, 1, 3): 3,
}
DIRECTIONS = ("forward", "input_grad", "weight_grad")


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    return 1e3 * statistics.median(time_calls(fn, rounds))


def jax_directions(x, w, stride: int, rounds: int) -> dict[str, float]:
    pad = (w.shape[0] - 1) // 2
    options = xla_compiler_options("dot")

    def forward(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    g = jax.numpy.ones(jax.eval_shape(forward, x, w).shape, x.dtype)
    programs = {
        "forward": jax.jit(forward, compiler_options=options),
        "input_grad": jax.jit(lambda w, g: jax.vjp(lambda x: forward(x, w), x)[1](g)[0],
                              compiler_options=options),
        "weight_grad": jax.jit(lambda x, g: jax.vjp(lambda w: forward(x, w), w)[1](g)[0],
                               compiler_options=options),
    }
    args = {"forward": (x, w), "input_grad": (w, g), "weight_grad": (x, g)}
    return {name: _median_ms(lambda p=program, a=args[name]: jax.block_until_ready(p(*a)),
                             rounds) for name, program in programs.items()}


def torch_directions(x, w, stride: int, rounds: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    pad = (w.shape[0] - 1) // 2
    cl = torch.channels_last
    tx = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    tw = torch.from_numpy(np.asarray(w)).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    with torch.no_grad():
        tg = torch.ones_like(F.conv2d(tx, tw, None, stride, pad)).contiguous(memory_format=cl)

        def backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                tg, tx, tw, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, mask)

        return {"forward": _median_ms(lambda: F.conv2d(tx, tw, None, stride, pad), rounds),
                "input_grad": _median_ms(backward([True, False, False]), rounds),
                "weight_grad": _median_ms(backward([False, True, False]), rounds)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default="bench/results/conv_directions_cpu.json")
    args = parser.parse_args(argv)
    load_at_start = list(os.getloadavg())
    try:
        import torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    layers, per_step = [], {"jax": dict.fromkeys(DIRECTIONS, 0.0),
                            "torch": dict.fromkeys(DIRECTIONS, 0.0)}
    for (size, cin, cout, stride, kernel), count in LAYERS.items():
        x = jax.numpy.asarray(rng.normal(size=(args.batch, size, size, cin)).astype(np.float32))
        w = jax.numpy.asarray(
            (rng.normal(size=(kernel, kernel, cin, cout)) * 0.05).astype(np.float32))
        entry = {"input": [args.batch, size, size, cin], "cout": cout, "stride": stride,
                 "kernel": kernel, "count_in_resnet18": count,
                 "jax_ms": jax_directions(x, w, stride, args.rounds)}
        if torch is not None:
            entry["torch_ms"] = torch_directions(x, w, stride, args.rounds)
            entry["jax_over_torch_time"] = {d: entry["jax_ms"][d] / entry["torch_ms"][d]
                                            for d in DIRECTIONS}
        for framework in ("jax", "torch"):
            for direction in DIRECTIONS:
                if f"{framework}_ms" in entry and not (cin == 3 and direction == "input_grad"):
                    per_step[framework][direction] += count * entry[f"{framework}_ms"][direction]
        layers.append(entry)
        print(f"{size}x{size}x{cin}->{cout} s{stride} k{kernel}: jax "
              + "/".join(f"{entry['jax_ms'][d]:.0f}" for d in DIRECTIONS) + " ms"
              + ("  torch " + "/".join(f"{entry['torch_ms'][d]:.0f}" for d in DIRECTIONS)
                 + " ms" if torch is not None else ""), flush=True)
    report = {"command": command_line(__file__, argv),
              "batch": args.batch, "rounds": args.rounds, "jax": jax.__version__,
              "torch": torch.__version__ if torch is not None else None,
              "load_average_at_start": load_at_start, "layers": layers,
              "per_step_ms": per_step if torch is not None else {"jax": per_step["jax"]}}
    write_json(args.output, report)
    print(json.dumps(report["per_step_ms"], indent=1))
    return report


if __name__ == "__main__":
    main()
