"""The training loop against its bare train step: does the loop around the step cost throughput?

    python bench/loop.py --output bench/results/loop_cpu.json   # views on the host and the device

`bench/run.py` times the jitted step alone, on a batch already on the device. A user's run is
`train_and_evaluate`: every step it takes a batch of two augmented views, made either by the
tf.data pipeline on the host's cores while the device computes (`data.augment_on="host"`, then
copied to the device) or by a jitted function on the device itself from the split kept there
(`"device"`, `amcl_jax/data/device_augment.py`), and dispatches the step without waiting for
the previous one (metrics are fetched every `log_every_steps`). This measures that loop end to
end for each `--augment_on` (default both), on a folder of random 32x32 PNGs written for the
run (`image_folder`, the same source path as the offline CIFAR-10 archive), and divides its
step rate by the bare step's rate measured in the same process with the same config:

    loop_over_step_throughput = bare step seconds (median) / loop seconds per step

The loop runs 2 x `steps` updates logged every `steps` updates; the first interval holds the
compilation, the second is timed (the log record's `steps_per_sec`). The bare step is timed
`rounds` times before the first loop and `rounds` times after the last, which brackets the
machine's drift. Evaluation and checkpoints happen only after the timed interval. On CPU both
ways of making views share the cores with the step (the device is the CPU), so the ratio also
says what the augmentation takes from it; on an accelerator the device views take its time
instead, and the host's only per-step work is the batch's indices and the dispatch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import command_line, timed_interval, versions, write_json  # noqa: E402
from bench.jax_step import make_config, make_jax_step  # noqa: E402


def write_image_folder(root: str, *, num_train: int, num_test: int, size: int = 32,
                       num_classes: int = 10, seed: int = 0) -> str:
    """`<root>/{train,test}/c<k>/<i>.png` of random uint8 images, classes in turn; returns root.
    Written with Pillow (no TensorFlow needed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        for k in range(num_classes):
            os.makedirs(os.path.join(root, split, f"c{k}"), exist_ok=True)
        images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            path = os.path.join(root, split, f"c{i % num_classes}", f"{i:06d}.png")
            Image.fromarray(image).save(path)
    return root


def loop_config(*, batch_per_view: int, steps: int, data_dir: str, width: float = 1.0,
                dtype: str = "float32", eval_examples: int = 256, augment_on: str = "host",
                model: str = "resnet18") -> ml_collections.ConfigDict:
    """The benchmark's SimCLR config, run by `train_and_evaluate` on an image folder for 2 x
    `steps` updates, logged every `steps`, views made where `augment_on` says; kNN and
    checkpoints only at the end."""
    config = make_config(batch_per_view=batch_per_view, overrides={"amcl.enabled": False},
                         model=model, width=width, dtype=dtype)
    config.data.dataset = "image_folder"
    config.data.data_dir = data_dir
    config.data.augment_on = augment_on
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
                 dtype: str = "float32", num_train: int = 2048, workdir: str | None = None,
                 augment_on: str = "host", model: str = "resnet18") -> dict:
    """Loop (views made where `augment_on` says, run in `workdir`) and bare step of the same
    SimCLR config, in this process, as one flat dict; see the module doc."""
    report = measure_loops(batch_per_view=batch_per_view, steps=steps, rounds=rounds,
                           width=width, dtype=dtype, num_train=num_train,
                           augment_on=(augment_on,), workdirs={augment_on: workdir},
                           model=model)
    return {**{k: v for k, v in report.items() if k != "by_augment_on"},
            **report["by_augment_on"][augment_on]}


def measure_loops(*, batch_per_view: int, steps: int, rounds: int, width: float = 1.0,
                  dtype: str = "float32", num_train: int = 2048,
                  augment_on: Sequence[str] = ("host", "device"),
                  workdirs: dict[str, str | None] | None = None, model: str = "resnet18"
                  ) -> dict:
    """One bare step and one loop per `augment_on` value, all of the same SimCLR config;
    `by_augment_on[value]` holds that loop's figures. `workdirs[value]` (default a scratch
    folder) is where that loop runs."""
    from amcl_jax.train import train_and_evaluate

    num_train = max(num_train, 2 * batch_per_view)
    loops = {}
    with tempfile.TemporaryDirectory(prefix="amcl_loop_") as scratch:
        data_dir = write_image_folder(os.path.join(scratch, "images"), num_train=num_train,
                                      num_test=256)
        # The kNN bank is the training split: k and the bank at most its size.
        config = loop_config(batch_per_view=batch_per_view, steps=steps, data_dir=data_dir,
                             width=width, dtype=dtype, eval_examples=min(256, num_train),
                             model=model)
        bare_step, _ = make_jax_step(config)  # Built (and compiled) with the loops' config.
        bare_before = [bare_step() for _ in range(rounds)]
        for where in augment_on:
            config.data.augment_on = where
            workdir = (workdirs or {}).get(where) or os.path.join(scratch, f"run_{where}")
            start = time.perf_counter()
            train_and_evaluate(config, workdir)
            loop_wall = time.perf_counter() - start
            loop_seconds = timed_interval(os.path.join(workdir, "metrics.jsonl"), 2 * steps)
            loops[where] = {"augment_on": where, "loop_seconds_per_step": loop_seconds,
                            "loop_wall_seconds_incl_compile_and_eval": loop_wall,
                            "loop_images_per_second": 2 * batch_per_view / loop_seconds}
        bare_after = [bare_step() for _ in range(rounds)]
    bare = statistics.median(bare_before + bare_after)
    for entry in loops.values():
        entry["loop_over_step_throughput"] = bare / entry["loop_seconds_per_step"]
    return {
        "batch_per_view": batch_per_view, "steps_timed": steps, "width": width, "dtype": dtype,
        "data": f"image_folder of {num_train} random 32x32 PNGs",
        "bare_step_seconds_before": bare_before, "bare_step_seconds_after": bare_after,
        "bare_step_median_seconds": bare,
        "bare_images_per_second": 2 * batch_per_view / bare,
        "by_augment_on": loops,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_per_view", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed loop updates")
    parser.add_argument("--rounds", type=int, default=3,
                        help="bare steps timed before and after the loops")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--augment_on", default="host,device",
                        help="comma-separated: where the loops' views are made (host: tf.data, "
                             "device: amcl_jax/data/device_augment.py), one loop each")
    parser.add_argument("--output", default="bench/results/loop_cpu.json")
    args = parser.parse_args(argv)
    augment_on = args.augment_on.split(",")
    if not augment_on or set(augment_on) - {"host", "device"}:
        parser.error(f"--augment_on={args.augment_on!r}: host, device or both")
    import jax

    report = {"command": command_line(__file__, argv),
              "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
              "cpu_count": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
              "versions": versions(),
              "scale": f"ResNet-18 CIFAR stem at width {args.width}, {args.batch_per_view} per "
                       f"view (2 views), {args.dtype}, {args.steps} timed updates per loop",
              **measure_loops(batch_per_view=args.batch_per_view, steps=args.steps,
                              rounds=args.rounds, width=args.width, dtype=args.dtype,
                              augment_on=augment_on)}
    report["load_average_at_end"] = list(os.getloadavg())  # Other processes share the cores.
    write_json(args.output, report)
    for where, entry in report["by_augment_on"].items():
        print(f"views on the {where}: loop {entry['loop_seconds_per_step']:.3f} s/step, bare "
              f"step {report['bare_step_median_seconds']:.3f} s: loop / step throughput "
              f"{entry['loop_over_step_throughput']:.3f}")
    return report


if __name__ == "__main__":
    main()
