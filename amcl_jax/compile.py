"""Compile the real train step for a topology without running it, and read what the compiler says.

    python -m amcl_jax.compile --config=configs/cifar10_amcl_simclr.py --topology=v5e:2x2 \\
        --config.model.dtype=bfloat16 --out=runs/compile/v5e_2x2
    python -m amcl_jax.compile --config=configs/cifar10_simclr.py --topology=cpu:8 --out=DIR

`--topology` is a TPU slice (`v4:2x2x1`, `v5e:16x16`, `v5p:4x4x4`, `v6e:8x8`, ...), compiled
ahead of time on any machine through libtpu (`pip install "jax[tpu]"`), or `cpu:N` for N fake
CPU devices. `config.batch_size` is the global batch per view, split over every device. It writes
`OUT/compile.json` and `OUT/train_step.hlo.txt` (the optimised HLO) and prints the figures:

- `per_device.memory`: XLA's buffer assignment for one device (arguments, temporaries, outputs,
  aliased bytes and the peak) against the chip's HBM; a step that does not fit exits 1 with one
  line saying by how much and what to change;
- `per_device.flops`, `per_device.bytes_accessed`: XLA's cost analysis of one device's program;
- `collectives`: every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute
  of the step, counted with the bytes of their results;
- `encoder_images_per_device`: the batch dimension of the encoder's forward convolutions, and
  `activation_collectives`: collectives of rank >= 4 (images or feature maps): data parallelism
  in effect means `encoder_images_per_device` = views x batch / devices and no such collective;
- `roofline_step_seconds`: max(FLOPs / peak bfloat16 FLOP/s, bytes accessed / HBM bandwidth)
  per device from `CHIPS` (published figures, sources below), a lower bound that ignores the
  interconnect, and the projected seconds per epoch and for the config's whole run.

An NVIDIA target cannot be compiled without a GPU with jax 0.10 (the CUDA plugin needs a driver
to register, so no "cuda" topology exists): compile on the GPU machine itself with
`--topology=local` (every local device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

from amcl_jax.hlo import activation_collectives, collectives, encoder_batch_sizes

# Published per-chip figures: dense bfloat16 FLOP/s, HBM bytes and HBM bandwidth (bytes/s).
# Sources: https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s, 32 GiB, 1,228 GB/s per chip of
# two TensorCores), https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s, 16 GiB, 819 GB/s),
# https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s, 95 GiB, 2,765 GB/s),
# https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s, 32 GiB, 1,640 GB/s).
GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bf16_flops_per_second: float
    hbm_bytes: int
    hbm_bytes_per_second: float
    source: str


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 1228e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", 918e12, 32 * GiB, 1640e9, "https://cloud.google.com/tpu/docs/v6e"),
}
# Training-split sizes for the epoch projection (`data.max_train_examples` caps them).
TRAIN_EXAMPLES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 105_000,
                  "imagenet2012": 1_281_167, "imagenet100": 126_689, "digits": 1_493}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)$")


class TopologyError(ValueError):
    """An unknown or malformed `--topology`."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    devices: list  # jax devices (TPU devices of an abstract topology, or local CPU devices).
    chip: Chip | None  # None for CPU devices: no published peak.
    devices_per_chip: int

    @property
    def hbm_bytes_per_device(self) -> int | None:
        return self.chip.hbm_bytes // self.devices_per_chip if self.chip else None

    @property
    def peak_flops_per_device(self) -> float | None:
        return self.chip.bf16_flops_per_second / self.devices_per_chip if self.chip else None

    @property
    def hbm_bandwidth_per_device(self) -> float | None:
        return self.chip.hbm_bytes_per_second / self.devices_per_chip if self.chip else None


def parse_topology(name: str) -> tuple[str, int | tuple[int, ...]]:
    """("cpu", N), ("local", 0) or (generation, chip grid); TopologyError for anything else."""
    if name == "local":
        return "local", 0
    if name.startswith("cpu:"):
        count = name[4:]
        if not count.isdigit() or int(count) < 1:
            raise TopologyError(f"--topology={name!r}: cpu:N needs a device count N >= 1")
        return "cpu", int(count)
    match = _TOPOLOGY.match(name)
    if not match:
        raise TopologyError(
            f"--topology={name!r} is not a topology; allowed: cpu:N, local, or a TPU slice "
            f"<generation>:<grid> with generation in {sorted(CHIPS)} (e.g. v5e:2x2, v4:2x2x1, "
            f"v5p:4x4x4, v6e:8x8)")
    return match.group(1), tuple(int(x) for x in match.group(2).split("x"))


def prepare_environment(topology: str) -> None:
    """Before JAX starts its backends: `cpu:N` needs N host devices, set through XLA_FLAGS."""
    kind, count = parse_topology(topology)
    if kind == "cpu":
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                       os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def get_topology(name: str) -> Topology:
    import jax

    kind, grid = parse_topology(name)
    if kind == "local":
        return Topology(name, jax.devices(), None, 1)
    if kind == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < grid:
            raise TopologyError(
                f"--topology={name}: this process has {len(devices)} CPU devices; JAX started "
                f"before XLA_FLAGS could ask for {grid} (run it as its own command)")
        return Topology(name, devices[:grid], None, 1)
    # Compiling only: several processes (test workers, a run beside) may load libtpu at once,
    # and its start-up lines about absent TPU hosts say nothing here.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
    os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
    from jax.experimental import topologies

    num_chips = math.prod(grid)
    kwargs = {}
    if num_chips < 4 and kind != "v4":  # Smaller than one host.
        kwargs["chips_per_host_bounds"] = (*grid, 1, 1)[:3]
    elif kind == "v4" and num_chips < 4:
        kwargs["chips_per_host_bounds"] = (*grid, 1, 1)[:3]
    with _quiet_stderr():  # libtpu's lines about TPU hosts that a compile does not need.
        topo = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
    devices = list(topo.devices)
    return Topology(name, devices, CHIPS[kind], max(1, len(devices) // num_chips))


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null (libtpu writes from C++); kept with AMCL_JAX_DEBUG=1."""
    if os.environ.get("AMCL_JAX_DEBUG") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --------------------------------------------------------------------------------------------
# What the compiler reports (the HLO text is read by hlo.py)
# --------------------------------------------------------------------------------------------
def memory(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    argument = int(stats.argument_size_in_bytes)
    output = int(stats.output_size_in_bytes)
    alias = int(stats.alias_size_in_bytes)
    temp = int(stats.temp_size_in_bytes)
    # XLA's own peak where it reports one that covers the temporaries; else the bound.
    peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    if peak < temp:
        peak = argument + output - alias + temp
    return {"argument": argument, "temp": temp, "output": output, "alias": alias, "peak": peak}


def cost(compiled) -> dict[str, float]:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # Older JAX: one dict per program.
        analysis = analysis[0]
    return {"flops": float(analysis.get("flops", 0.0)),
            "bytes_accessed": float(analysis.get("bytes accessed", 0.0))}


def format_bytes(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(num) < 1024 or unit == "PiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.2f} {unit}"
        num /= 1024
    return ""


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def num_train_examples(config) -> int | None:
    known = TRAIN_EXAMPLES.get(config.data.dataset)
    cap = int(config.data.get("max_train_examples", 0) or 0)
    if known is None:
        return cap or None
    return min(known, cap) if cap > 0 else known


def compile_step(config, topology: Topology, *, hlo_path: str | None = None) -> dict[str, Any]:
    """Compiles `config`'s train step for `topology` and returns compile.json's content."""
    import jax

    from amcl_jax import forms, program
    from amcl_jax.config import ConfigError

    config = forms.resolve(config)  # Where a compile starts: the AMCL form's fields filled.
    devices = len(topology.devices)
    batch = int(config.batch_size)
    if batch % devices:
        raise ConfigError(f"batch_size={batch} is not divisible by the {devices} devices of "
                          f"--topology={topology.name}; allowed: multiples of {devices}")
    mesh = program.data_mesh(topology.devices)
    backend = "cpu" if topology.chip is None and topology.name != "local" else (
        "tpu" if topology.chip else None)
    examples = num_train_examples(config)
    steps_per_epoch = max(1, examples // batch) if examples else None
    if config.total_steps >= 0:
        total_steps = int(config.total_steps)
    else:
        total_steps = int(config.num_epochs) * (steps_per_epoch or 1)
    start = time.time()
    programs = program.build(config, mesh, max(total_steps, 1), backend=backend)
    compiled = programs.step.lower(*programs.abstract_step_inputs()).compile()
    seconds = time.time() - start
    hlo = compiled.as_text()
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(hlo)
    mem, flops = memory(compiled), cost(compiled)
    roofline = None
    if topology.chip:
        roofline = max(flops["flops"] / topology.peak_flops_per_device,
                       flops["bytes_accessed"] / topology.hbm_bandwidth_per_device)
    hbm = topology.hbm_bytes_per_device
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(programs.state_shapes.params))
    return {
        "topology": topology.name,
        "chip": topology.chip.name if topology.chip else topology.devices[0].platform,
        "devices": devices,
        "devices_per_chip": topology.devices_per_chip,
        "method": config.method, "amcl": bool(config.amcl.enabled),
        "amcl_form": config.amcl.form if config.amcl.enabled else None,
        "model": config.model.name, "model_dtype": config.model.dtype,
        "remat": bool(config.model.get("remat", False)),
        "shard_params": bool(config.model.get("shard_params", False)),
        "image_size": int(config.data.image_size), "num_params": int(num_params),
        "global_batch_per_view": batch,
        "batch_per_device_per_view": batch // devices,
        "encoder_images_per_device": max(encoder_batch_sizes(hlo), default=None),
        "activation_collectives": activation_collectives(hlo, int(config.data.image_size)),
        "per_device": {
            "memory": mem,
            "hbm_bytes": hbm,
            "fits": None if hbm is None else mem["peak"] <= hbm,
            "flops": flops["flops"],
            "bytes_accessed": flops["bytes_accessed"],
        },
        "collectives": collectives(hlo),
        "roofline_step_seconds": roofline,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "projected_seconds_per_epoch": (roofline * steps_per_epoch
                                        if roofline and steps_per_epoch else None),
        "projected_seconds_total": roofline * total_steps if roofline else None,
        "chip_source": topology.chip.source if topology.chip else None,
        "compile_seconds": round(seconds, 1),
    }


def levers(batch: int, devices: int, *, dtype: str, remat: bool, shard_params: bool) -> str:
    """What to change for a step that does not fit, as one clause."""
    options = [f"lower batch_size (now {batch}, {batch // devices} per device per view)"]
    if dtype != "bfloat16":
        options.append("set model.dtype=bfloat16")
    if not remat:
        options.append("set model.remat=True")
    if not shard_params:
        options.append("set model.shard_params=True (large models)")
    return ", or ".join(options)


def does_not_fit(result: dict[str, Any]) -> str | None:
    """One line for a step whose peak exceeds the device's HBM, with what to change."""
    per_device = result["per_device"]
    if per_device["fits"] is not False:
        return None
    peak, hbm = per_device["memory"]["peak"], per_device["hbm_bytes"]
    batch = result["global_batch_per_view"]
    return (f"the step does not fit on {result['topology']}: it needs {format_bytes(peak)} per "
            f"device and a device has {format_bytes(hbm)} ({peak / hbm:.1f}x); "
            + levers(batch, batch // result["batch_per_device_per_view"],
                     dtype=result["model_dtype"], remat=result["remat"],
                     shard_params=result["shard_params"]))


def out_of_memory_line(error: BaseException, config, topology: Topology) -> str | None:
    """One line for XLA's own refusal (the temporaries alone exceed HBM), or None."""
    text = " ".join(str(error).split())
    if "Ran out of memory" not in text and "RESOURCE_EXHAUSTED" not in text:
        return None
    match = re.search(r"\(([\d.]+[KMGTP]?)\) exceeds available HBM \(([\d.]+[KMGTP]?)\)", text)
    need = f" needs {match.group(1)} of temporaries per device and a device has {match.group(2)}"
    return (f"the step does not fit on {topology.name}:{need if match else ' XLA ran out of'}"
            f"{'' if match else ' device memory'}; "
            + levers(int(config.batch_size), len(topology.devices), dtype=config.model.dtype,
                     remat=bool(config.model.get("remat", False)),
                     shard_params=bool(config.model.get("shard_params", False))))


def summary_lines(result: dict[str, Any]) -> list[str]:
    per_device = result["per_device"]
    mem = per_device["memory"]
    lines = [
        f"{result['method']}{' + AMCL (' + result['amcl_form'] + ')' if result['amcl'] else ''}"
        f", {result['model']} {result['model_dtype']}, {result['image_size']} px, "
        f"{result['global_batch_per_view']} per view on {result['devices']} devices of "
        f"{result['topology']} ({result['batch_per_device_per_view']} per device per view)",
        f"  memory per device: peak {format_bytes(mem['peak'])} (arguments "
        f"{format_bytes(mem['argument'])}, temporaries {format_bytes(mem['temp'])}, outputs "
        f"{format_bytes(mem['output'])}, aliased {format_bytes(mem['alias'])})"
        + (f" of {format_bytes(per_device['hbm_bytes'])} HBM" if per_device["hbm_bytes"] else ""),
        f"  per device: {per_device['flops'] / 1e12:.4g} TFLOP, "
        f"{format_bytes(per_device['bytes_accessed'])} accessed; encoder images per device: "
        f"{result['encoder_images_per_device']}",
        "  collectives: " + ", ".join(f"{k} {v['count']} ({format_bytes(v['bytes'])})"
                                      for k, v in result["collectives"].items() if v["count"]),
    ]
    if result["activation_collectives"]:
        lines.append("  WARNING: images or feature maps cross devices: "
                     + "; ".join(result["activation_collectives"][:4]))
    if result["roofline_step_seconds"]:
        total = result["projected_seconds_total"]
        lines.append(
            f"  roofline step {result['roofline_step_seconds'] * 1e3:.3g} ms; epoch "
            f"{(result['projected_seconds_per_epoch'] or 0) / 60:.3g} min; the run's "
            f"{result['total_steps']} steps {total / 3600:.3g} h")
    return lines


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file, as main.py's (--config.<field>=<value> overrides too).",
        lock_config=True)
    flags.DEFINE_string("topology", None, "cpu:N, local, or a TPU slice such as v5e:2x2, "
                        "v4:2x2x1, v5p:4x4x4, v6e:8x8.")
    flags.DEFINE_string("out", None, "Folder for compile.json and train_step.hlo.txt.")
    flags.DEFINE_bool("debug", False, "Show the traceback of an error.")
    return flags.FLAGS


def _parse(flag_values, argv: list[str]) -> list[str]:
    from absl import flags

    from amcl_jax.errors import fail

    try:
        return flag_values(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}", 2)
    except (AttributeError, KeyError) as e:  # --config.<typo>=...
        fail(f"the config has no field {str(e).splitlines()[0]}", 2)
    return []


def main(argv: list[str] | None = None) -> int:
    """`python -m amcl_jax.compile --config=... [--config.<field>=...] --topology=... --out=DIR`."""
    from amcl_jax.errors import debug_enabled, exit_on_error, fail

    argv = list(sys.argv if argv is None else argv)
    flag_values = _define_flags()
    _parse(flag_values, argv)
    if flag_values.config is None:
        fail("--config is required, e.g. --config=configs/cifar10_amcl_simclr.py", 2)
    if not flag_values.topology:
        fail("--topology is required: cpu:N, local, or a TPU slice such as v5e:2x2", 2)
    try:
        prepare_environment(flag_values.topology)
    except TopologyError as e:
        fail(str(e), 2)
    from amcl_jax.config import ConfigError, validate_config

    out, topology = flag_values.out, None
    try:
        config = flag_values.config
        validate_config(config)
        topology = get_topology(flag_values.topology)
        if out:
            os.makedirs(out, exist_ok=True)
        result = compile_step(config, topology,
                              hlo_path=os.path.join(out, "train_step.hlo.txt") if out else None)
    except (ConfigError, TopologyError) as e:
        fail(str(e), 2)
    except Exception as e:  # noqa: BLE001 (XLA's out-of-memory refusal is a runtime error)
        line = out_of_memory_line(e, config, topology) if topology else None
        if line is None or flag_values.debug or debug_enabled(argv):
            exit_on_error(e, resume_hint="the same command",
                          debug=flag_values.debug or debug_enabled(argv))
        fail(line, 1)
    except KeyboardInterrupt as e:
        exit_on_error(e, resume_hint="the same command",
                      debug=flag_values.debug or debug_enabled(argv))
    if out:
        with open(os.path.join(out, "compile.json"), "w") as f:
            json.dump(result, f, indent=2)
    print("\n".join(summary_lines(result)), flush=True)
    problem = does_not_fit(result)
    if problem:
        fail(problem, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
