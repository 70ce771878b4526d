"""Train-step throughput of the real jitted step: SimCLR vs AMCL-SimCLR (both negative modes).

    python bench/train_step.py --output bench/results/train_step_cpu.json
    python bench/train_step.py --batch_per_view 64 --width 1.0 --steps 10

Builds the same model, optimizer and step as `main.py` (ResNet-18, CIFAR stem, 32x32, fp32 by
default), feeds a fixed random batch, and reports the median step time over `--steps` timed
steps after `--warmup` untimed ones, as images/s (both views counted: 2 x batch per step) and
source images/s (batch per step). Results go to a JSON file with the device and versions.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from amcl_jax import methods, optim  # noqa: E402
from amcl_jax.config import get_default_config  # noqa: E402
from amcl_jax.train import TrainState, train_step  # noqa: E402

VARIANTS = {
    "simclr": {"amcl.enabled": False},
    "amcl_max": {"amcl.enabled": True, "amcl.negatives": "max"},
    "amcl_logsumexp": {"amcl.enabled": True, "amcl.negatives": "logsumexp"},
}


def _config(args, overrides):
    config = get_default_config()
    config.model.name = args.model
    config.model.width = args.width
    config.model.dtype = args.dtype
    config.model.conv_impl = args.conv_impl
    config.batch_size = args.batch_per_view
    config.data.image_size = args.image_size
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def time_variant(args, overrides) -> dict:
    config = _config(args, overrides)
    method = methods.get_method(config.method)
    model = method.build_model(config)
    tx, schedule = optim.build_optimizer(config, total_steps=1000)
    rng = jax.random.PRNGKey(0)
    size = config.data.image_size
    variables = model.init(rng, jnp.zeros((2, size, size, 3)), train=False)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"],
        batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]), extra={},
        rng=rng, nonfinite_step=jnp.full((), -1, jnp.int32),
        nonfinite_what=jnp.zeros((), jnp.int32))
    step = jax.jit(functools.partial(train_step, model=model, method=method, tx=tx,
                                     schedule=schedule, config=config), donate_argnums=(0,))
    views = jax.random.normal(rng, (2, config.batch_size, size, size, 3), jnp.float32)
    compile_start = time.perf_counter()
    state, metrics = step(state, views)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - compile_start
    for _ in range(args.warmup):
        state, metrics = step(state, views)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, views)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "median_step_seconds": median,
        "images_per_second": 2 * config.batch_size / median,
        "source_images_per_second": config.batch_size / median,
        "first_step_seconds_incl_compile": compile_seconds,
        "step_seconds": times,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench/results/train_step.json")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch_per_view", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--conv_impl", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()

    results = {}
    for name in args.variants.split(","):
        results[name] = time_variant(args, VARIANTS[name])
        print(f"{name:16s} {results[name]['images_per_second']:8.2f} images/s "
              f"({results[name]['median_step_seconds']:.3f} s/step)", flush=True)
    if "simclr" in results:
        for name in results:
            if name != "simclr":
                results[name]["step_time_over_simclr"] = (
                    results[name]["median_step_seconds"] / results["simclr"]["median_step_seconds"])
    report = {
        "command": " ".join(sys.argv),
        "args": vars(args),
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "versions": {"jax": jax.__version__, "flax": flax.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
