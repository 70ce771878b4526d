"""Diagnosis: where the CPU train step's time goes, in JAX and in PyTorch, op by op.

    python bench/profile_step.py --output bench/results/profile_step_cpu.json

Profiles `--steps` ResNet-18 SimCLR train steps (as `bench/run.py`, 64 images per view, fp32) of
the project's jitted step with `jax.profiler` (one trace event per XLA:CPU thunk, mapped to its
HLO instruction and the `op_name` of its metadata) and of the PyTorch reference (channels_last)
with `torch.profiler`, and splits each into the same buckets:

- `conv_forward`: the convolution layers' forward pass (XLA convolutions, or the im2col /
  Winograd matmuls `model.conv_impl` puts in their place; oneDNN's `mkldnn_convolution`);
- `conv_backward`: their input and weight gradients (`convolution_backward` in PyTorch);
- `batch_norm`: BatchNorm forward and backward (XLA fuses part of it into neighbouring ops, so
  its share there is a lower bound);
- `other`: ReLU, residual adds, projector, loss, optimizer, copies.

The convolution layers' forward FLOPs (2 * output size * kh * kw * Cin, summed over every conv)
give each framework's forward convolution rate in GFLOP/s. The question it answers: is the gap
to PyTorch in the convolution kernels, in the rest of the step, or spread over both?

`thunk_kind_seconds` sums the JAX thunks by instruction kind (the HLO name without its number,
e.g. "transpose_copy_fusion", "wrapped_reduce-window"), the view that showed the weight gradients'
transposed copies recomputing BatchNorm chains (`model.cpu_fusion_barriers`; compare
`--no_fusion_barriers`); `conditionals_in_program` counts those barriers in the compiled step.

`attributed_share` is the buckets' sum over the step's wall time. The split holds where it is
near 1, as with YNNPACK convolutions (`--xla_cpu_ynnpack jaxlib`, the setting of
`bench/results/profile_step_cpu.json`). XLA's own convolution thunks (the project's default
"dot") hand their work to the intra-op thread pool and their trace events do not cover it: the
share falls well below 1 (`bench/results/profile_step_dot_cpu.json`) and the buckets are not a
split of the step; per-layer timings (`bench/conv_attempts.py --xla_cpu_ynnpack dot`) are.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from amcl_jax import methods  # noqa: E402
from amcl_jax.models import XLA_CPU_YNNPACK  # noqa: E402
from bench.common import command_line, write_json  # noqa: E402
from bench.jax_step import VARIANTS, make_config, make_jax_step  # noqa: E402

BUCKETS = ("conv_forward", "conv_backward", "batch_norm", "other")
_INSTRUCTION_NAME = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the op_name of its metadata ("" where it has none)."""
    out = {}
    for line in hlo_text.splitlines():
        name = _INSTRUCTION_NAME.match(line)
        if name:
            op_name = _OP_NAME.search(line)
            out[name.group(1)] = op_name.group(1) if op_name else ""
    return out


def conv_forward_flops(config, batch: int) -> int:
    """2 * output size * kh * kw * Cin summed over every `nn.Conv` of the model's forward pass."""
    model = methods.get_method(config.method).build_model(config)
    size = config.data.image_size
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    flops = []

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            kh, kw, cin, _ = context.module.variables["params"]["kernel"].shape
            flops.append(2 * out.size * kh * kw * cin)
        return out

    with nn.intercept_methods(count):
        jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return int(sum(flops))


def jax_bucket(op_name: str) -> str:
    """The bucket of an HLO instruction from its metadata op_name (flax module path)."""
    backward = "transpose(" in op_name
    if re.search(r"/Conv_\d+/|/conv_general_dilated", op_name):
        return "conv_backward" if backward else "conv_forward"
    if "BatchNorm" in op_name:
        return "batch_norm"
    return "other"


def profile_jax(config, steps: int) -> dict:
    step, _ = make_jax_step(config)
    step()
    op_names = hlo_op_names(step.compiled_text())
    trace_dir = tempfile.mkdtemp(prefix="profile_step_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    wall = sum(step() for _ in range(steps))
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
        events = json.load(f)
    shutil.rmtree(trace_dir, ignore_errors=True)
    events = events["traceEvents"] if isinstance(events, dict) else events
    seconds = collections.Counter()
    unmatched = collections.Counter()
    kinds = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and name in op_names:
            kinds[thunk_kind(name)] += event["dur"] * 1e-6 / steps
        if event.get("ph") != "X" or name not in op_names:
            if event.get("ph") == "X" and not name.startswith(("$", "Thunk", "Pjit")):
                unmatched[name] += event["dur"] * 1e-6 / steps
            continue
        seconds[jax_bucket(op_names[name])] += event["dur"] * 1e-6 / steps
    return {"step_seconds": wall / steps,
            "bucket_seconds": {b: seconds[b] for b in BUCKETS},
            "attributed_share": sum(seconds[b] for b in BUCKETS) / (wall / steps),
            "unmatched_event_seconds": dict(unmatched.most_common(5)),
            "thunk_kind_seconds": {k: round(v, 4) for k, v in kinds.most_common(8)},
            "conditionals_in_program": step.compiled_text().count(" conditional(")}


def thunk_kind(name: str) -> str:
    """An HLO instruction's kind from its name: "transpose_copy_fusion.28" -> its prefix."""
    return re.sub(r"\.\d+$", "", name)


def torch_bucket(name: str) -> str | None:
    if name == "aten::mkldnn_convolution":
        return "conv_forward"
    if name == "aten::convolution_backward":
        return "conv_backward"
    if name.startswith("aten::native_batch_norm"):
        return "batch_norm"
    return "other" if name.startswith("aten::") else None


def profile_torch(batch: int, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from bench import torch_reference

    step, _ = torch_reference.make_train_step(batch_per_view=batch, channels_last=True)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    seconds = collections.Counter()
    for event in prof.key_averages():
        bucket = torch_bucket(event.key)
        if bucket is not None:  # self time: nested aten ops are counted once
            seconds[bucket] += event.self_cpu_time_total * 1e-6 / steps
    return {"step_seconds": wall / steps, "bucket_seconds": {b: seconds[b] for b in BUCKETS}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per view")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per framework")
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--output", default="bench/results/profile_step_cpu.json")
    parser.add_argument("--xla_cpu_ynnpack", default=None, choices=tuple(XLA_CPU_YNNPACK),
                        help="model.xla_cpu_ynnpack (default: the config's default)")
    parser.add_argument("--no_fusion_barriers", action="store_true",
                        help="model.cpu_fusion_barriers=False (default: the config's, True)")
    args = parser.parse_args(argv)
    config = make_config(batch_per_view=args.batch, overrides=VARIANTS["simclr"])
    if args.xla_cpu_ynnpack is not None:
        config.model.xla_cpu_ynnpack = args.xla_cpu_ynnpack
    if args.no_fusion_barriers:
        config.model.cpu_fusion_barriers = False
    flops = conv_forward_flops(config, 2 * args.batch)
    report = {"command": command_line(__file__, argv),
              "batch_per_view": args.batch, "steps": args.steps,
              "conv_impl": config.model.conv_impl,
              "xla_cpu_ynnpack": config.model.xla_cpu_ynnpack,
              "cpu_fusion_barriers": config.model.cpu_fusion_barriers, "jax": jax.__version__,
              "load_average_at_start": list(os.getloadavg()),
              "conv_forward_gflop_per_step": flops / 1e9, "frameworks": {}}
    runs = {"jax": lambda: profile_jax(config, args.steps)}
    if not args.no_torch:
        runs["torch"] = lambda: profile_torch(args.batch, args.steps)
    for framework, run in runs.items():
        result = run()
        buckets = result["bucket_seconds"]
        total = sum(buckets.values())
        result["bucket_share"] = {b: buckets[b] / total for b in BUCKETS} if total else {}
        if buckets["conv_forward"]:
            result["conv_forward_gflop_per_second"] = flops / 1e9 / buckets["conv_forward"]
        report["frameworks"][framework] = result
        print(framework, json.dumps(result, indent=1), flush=True)
    if "torch" in report["frameworks"]:
        jax_b = report["frameworks"]["jax"]["bucket_seconds"]
        torch_b = report["frameworks"]["torch"]["bucket_seconds"]
        report["jax_over_torch_seconds"] = {b: jax_b[b] / torch_b[b] for b in BUCKETS
                                            if torch_b[b]}
    write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
