"""The training loop against its bare train step: does the loop around the step cost throughput?

    python bench/loop.py --output bench/results/loop_cpu.json

`bench/run.py` times the jitted step alone, on a batch already on the device. A user's run is
`train_and_evaluate`: every step it takes a batch from the tf.data pipeline (two augmented
views made on the host's cores while the device computes), copies it to the device and
dispatches the step without waiting for the previous one (metrics are fetched every
`log_every_steps`). This measures that loop end to end, on a folder of random 32x32 PNGs
written for the run (`image_folder`, the same source path as the offline CIFAR-10 archive), and
divides its step rate by the bare step's rate measured in the same process with the same config:

    loop_over_step_throughput = bare step seconds (median) / loop seconds per step

The loop runs 2 x `steps` updates logged every `steps` updates; the first interval holds the
compilation, the second is timed (the log record's `steps_per_sec`). The bare step is timed
`rounds` times before and `rounds` times after the loop, which brackets the machine's drift.
Evaluation and checkpoints happen only after the timed interval. On CPU the pipeline shares the
cores with the step, so the ratio also says what the augmentation takes from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import command_line, timed_interval, write_json  # noqa: E402
from bench.jax_step import make_config, make_jax_step  # noqa: E402


def write_image_folder(root: str, *, num_train: int, num_test: int, size: int = 32,
                       num_classes: int = 10, seed: int = 0) -> str:
    """`<root>/{train,test}/c<k>/<i>.png` of random uint8 images, classes in turn; returns root."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        for k in range(num_classes):
            os.makedirs(os.path.join(root, split, f"c{k}"), exist_ok=True)
        images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            path = os.path.join(root, split, f"c{i % num_classes}", f"{i:06d}.png")
            tf.io.write_file(path, tf.io.encode_png(image))
    return root


def loop_config(*, batch_per_view: int, steps: int, data_dir: str, width: float = 1.0,
                dtype: str = "float32", eval_examples: int = 256) -> ml_collections.ConfigDict:
    """The benchmark's SimCLR config, run by `train_and_evaluate` on an image folder for 2 x
    `steps` updates, logged every `steps`; kNN and checkpoints only at the end."""
    config = make_config(batch_per_view=batch_per_view, overrides={"amcl.enabled": False},
                         width=width, dtype=dtype)
    config.data.dataset = "image_folder"
    config.data.data_dir = data_dir
    config.total_steps = 2 * steps
    config.log_every_steps = steps
    config.eval.every_steps = 2 * steps
    config.checkpoint.every_steps = 2 * steps
    config.checkpoint.max_to_keep = 1
    config.eval.batch_size = min(config.eval.batch_size, eval_examples)
    config.eval.max_bank_examples = eval_examples
    config.eval.max_query_examples = eval_examples
    config.eval.knn_k = min(config.eval.knn_k, eval_examples)
    return config


def measure_loop(*, batch_per_view: int, steps: int, rounds: int, width: float = 1.0,
                 dtype: str = "float32", num_train: int = 2048,
                 workdir: str | None = None) -> dict:
    """Loop and bare step of the same SimCLR config, in this process; see the module doc."""
    from amcl_jax.train import train_and_evaluate

    with tempfile.TemporaryDirectory(prefix="amcl_loop_") as scratch:
        workdir = workdir or os.path.join(scratch, "run")
        data_dir = write_image_folder(os.path.join(scratch, "images"),
                                      num_train=max(num_train, 2 * batch_per_view),
                                      num_test=256)
        config = loop_config(batch_per_view=batch_per_view, steps=steps, data_dir=data_dir,
                             width=width, dtype=dtype)
        bare_step, _ = make_jax_step(config)  # Built (and compiled) with the loop's config.
        bare_before = [bare_step() for _ in range(rounds)]
        start = time.perf_counter()
        train_and_evaluate(config, workdir)
        loop_wall = time.perf_counter() - start
        loop_seconds = timed_interval(os.path.join(workdir, "metrics.jsonl"), 2 * steps)
        bare_after = [bare_step() for _ in range(rounds)]
    bare = statistics.median(bare_before + bare_after)
    return {
        "batch_per_view": batch_per_view, "steps_timed": steps, "width": width, "dtype": dtype,
        "data": f"image_folder of {max(num_train, 2 * batch_per_view)} random 32x32 PNGs",
        "bare_step_seconds_before": bare_before, "bare_step_seconds_after": bare_after,
        "bare_step_median_seconds": bare,
        "loop_seconds_per_step": loop_seconds,
        "loop_wall_seconds_incl_compile_and_eval": loop_wall,
        "loop_images_per_second": 2 * batch_per_view / loop_seconds,
        "bare_images_per_second": 2 * batch_per_view / bare,
        "loop_over_step_throughput": bare / loop_seconds,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_per_view", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed loop updates")
    parser.add_argument("--rounds", type=int, default=3,
                        help="bare steps timed before and after the loop")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--output", default="bench/results/loop_cpu.json")
    args = parser.parse_args(argv)
    import jax

    report = {"command": command_line(__file__, argv),
              "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
              "load_average_at_start": list(os.getloadavg()),
              **measure_loop(batch_per_view=args.batch_per_view, steps=args.steps,
                             rounds=args.rounds, width=args.width, dtype=args.dtype)}
    write_json(args.output, report)
    print(f"loop {report['loop_seconds_per_step']:.3f} s/step, bare step "
          f"{report['bare_step_median_seconds']:.3f} s: loop / step throughput "
          f"{report['loop_over_step_throughput']:.3f}")
    return report


if __name__ == "__main__":
    main()
