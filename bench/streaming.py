"""The input pipeline reading image files as it goes (`data.streaming=True`) against the same
images decoded into memory at load.

    python bench/streaming.py --data_dir=../shared/data/cifar10-jpeg.tar.gz \
        --output bench/results/streaming_cpu.json

Times the two-view training pipeline (`amcl_jax.data.train_iterator`, letters "abcde") in
source images per second on this machine's cores, each way, at two scales:

- `cifar`: the training split of an image folder or archive (CIFAR-10's 32x32 JPEGs), 32x32
  views.
- `imagenet_like`: a fixed random sample of `--large_examples` of its images enlarged to
  `--large_size` pixels square (400 by default, about an average ImageNet photo) and written
  as JPEG (quality 90) to a temporary folder, 224x224 views (random resized crops). The
  enlarged images are smoother than photos, so their files are smaller and decode a little
  faster than ImageNet's: the streamed rate is an upper bound for ImageNet files of that size.
  In memory the split is held at `load_size=large_size`; streamed, each file is decoded at its
  native size.

Also recorded: the time to load each way (decoding every file, or listing them) and the bytes
the split holds in memory (the uint8 array, or the paths).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from amcl_jax import data as data_lib  # noqa: E402
from amcl_jax.data._tf import tf  # noqa: E402
from bench.common import command_line, write_json  # noqa: E402
from bench.timing import items_within  # noqa: E402


def pipeline_rate(images, labels, *, image_size: int, batch: int, seconds: float) -> dict:
    """Source images per second of `train_iterator` over `seconds`, after one warm-up batch."""
    iterator = data_lib.train_iterator(
        images, labels, global_batch_size=batch, seed=0, start_step=0, augmentations="abcde",
        image_size=image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
    count, elapsed = items_within(iterator, seconds)
    return {"batches": count, "seconds": elapsed, "images_per_second": count * batch / elapsed}


def compare(source: str, *, load_size: int | None, image_size: int, batch: int,
            seconds: float, cache_dir: str | None) -> dict:
    """Loads the train split of `source` both ways and times the pipeline on each."""
    out = {"image_size": image_size, "batch": batch}
    for streaming in (False, True):
        start = time.perf_counter()
        images, labels, _ = data_lib.load_split(
            "image_folder", "train", data_dir=source, cache_dir=cache_dir,
            image_size=None if streaming else load_size, streaming=streaming)
        load_seconds = time.perf_counter() - start
        held = (sum(len(p) for p in images.paths) if streaming else images.nbytes)
        out["streamed" if streaming else "in_memory"] = {
            "load_seconds": load_seconds, "num_examples": len(images), "bytes_held": int(held),
            **pipeline_rate(images, labels, image_size=image_size, batch=batch,
                            seconds=seconds)}
    out["streamed_over_in_memory"] = (out["streamed"]["images_per_second"]
                                      / out["in_memory"]["images_per_second"])
    return out


def write_large_folder(source: str, root: str, *, count: int, size: int,
                       cache_dir: str | None) -> int:
    """A fixed random sample (seed 0) of `count` training images of `source` enlarged to
    size x size, as JPEGs under `root/train/<class>/`; returns the mean file size in bytes."""
    files, labels, _ = data_lib.load_split("image_folder", "train", data_dir=source,
                                           cache_dir=cache_dir, streaming=True)
    pick = np.random.default_rng(0).permutation(len(files))[:count]
    read, total = files.reader(), 0
    for i, index in enumerate(pick):
        image = data_lib.files.resize_square(read(int(index)), size)
        folder = os.path.join(root, "train", f"c{labels[index]}")
        os.makedirs(folder, exist_ok=True)
        encoded = tf.io.encode_jpeg(image, quality=90)
        tf.io.write_file(os.path.join(folder, f"{i:06d}.jpg"), encoded)
        total += len(encoded.numpy())
    return total // count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/cifar10-jpeg.tar.gz",
                        help="an image folder or archive with a train split")
    parser.add_argument("--cache_dir", default="", help="where archives are extracted")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--large_size", type=int, default=400)
    parser.add_argument("--large_examples", type=int, default=2000)
    parser.add_argument("--large_batch", type=int, default=64)
    parser.add_argument("--output", default="bench/results/streaming_cpu.json")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or None
    report = {"command": command_line(__file__, argv), "machine": platform.processor() or
              platform.machine(), "cpu_count": os.cpu_count(), "tensorflow": tf.__version__}
    report["cifar"] = compare(args.data_dir, load_size=None, image_size=32, batch=args.batch,
                              seconds=args.seconds, cache_dir=cache_dir)
    with tempfile.TemporaryDirectory() as root:
        mean_bytes = write_large_folder(args.data_dir, root, count=args.large_examples,
                                        size=args.large_size, cache_dir=cache_dir)
        report["imagenet_like"] = {
            "file_size": args.large_size, "mean_file_bytes": mean_bytes,
            **compare(root, load_size=args.large_size, image_size=224, batch=args.large_batch,
                      seconds=args.seconds, cache_dir=cache_dir)}
    write_json(args.output, report)
    for scale in ("cifar", "imagenet_like"):
        r = report[scale]
        print(f"{scale}: in memory {r['in_memory']['images_per_second']:.0f} images/s "
              f"(load {r['in_memory']['load_seconds']:.1f} s, "
              f"{r['in_memory']['bytes_held'] / 2**20:.0f} MiB held), streamed "
              f"{r['streamed']['images_per_second']:.0f} images/s "
              f"(load {r['streamed']['load_seconds']:.1f} s, "
              f"{r['streamed']['bytes_held'] / 2**20:.1f} MiB held): "
              f"{r['streamed_over_in_memory']:.2f}x")


if __name__ == "__main__":
    main()
