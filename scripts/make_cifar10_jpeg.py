"""Build the CIFAR-10 JPEG archive the results use, from an official CIFAR-10 archive.

    python scripts/make_cifar10_jpeg.py --source=cifar-10-python.tar.gz --out=cifar10-jpeg.tar.gz

`--source`: the official python archive (cifar-10-python.tar.gz) or binary archive
(cifar-10-binary.tar.gz, the one TFDS downloads into <data_dir>/downloads), from
https://www.cs.toronto.edu/~kriz/cifar.html. Output (docs/data.md):

    train/<class>/NNNN.jpg   5,000 per class, NNNN counting each class's images in the order of
    test/<class>/NNNN.jpg    1,000 per class   data_batch_1..5 (train) and test_batch (test)

classes in label order (airplane ... truck). Every step is deterministic, so the same source gives
the same bytes:
- JPEG: Pillow's defaults, written out (quality 75, 4:2:0 chroma subsampling, baseline, standard
  Huffman tables, a JFIF 1.01 header with density 1:1 and nothing else), libjpeg-turbo's encoder;
- tar: GNU format; members train, train/<class>, its files, the next class, ..., then test; every
  member mtime 2020-01-01 00:00:00 UTC, uid/gid 0 with empty user and group names, mode 0664
  (files) and 0775 (directories);
- gzip: `gzip -n -6` (GNU gzip: no name, mtime 0, OS byte 3). Without a `gzip` program, zlib at
  level 6 with the same header: the same tar, but a different compressed stream (and checksum).
The script prints the archive's sha256 and whether it is the reference archive's (REFERENCE_SHA256).
Under a minute for the 60,000 images on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib

import numpy as np
from PIL import Image

# sha256 of the archive the project's CIFAR-10 results were measured on (docs/data.md).
REFERENCE_SHA256 = "d877bdec11f54282b92da36e9f045bd305d663b1223e3822baff39ca9ff6690a"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
MTIME = 1577836800  # 2020-01-01 00:00:00 UTC.
FILE_MODE, DIR_MODE = 0o664, 0o775
GZIP_LEVEL = 6
PYTHON_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_source(path: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """({"train": (images, labels), "test": ...}, class names) of an official CIFAR-10 archive.

    images: (N, 32, 32, 3) uint8 RGB in the archive's order; labels: (N,) int64.
    """
    with tarfile.open(path) as archive:
        files = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            if name not in files:
                raise ValueError(f"{path}: no {name!r}; expected the official CIFAR-10 python "
                                 "or binary archive")
            return archive.extractfile(files[name]).read()

        splits = {}
        if "batches.meta" in files:  # The python version: pickled dicts.
            meta = pickle.loads(read("batches.meta"), encoding="bytes")
            names = tuple(n.decode() for n in meta[b"label_names"])
            for split, batches in PYTHON_BATCHES.items():
                dicts = [pickle.loads(read(b), encoding="bytes") for b in batches]
                rows = np.concatenate([np.asarray(d[b"data"], np.uint8) for d in dicts])
                labels = np.concatenate([np.asarray(d[b"labels"], np.int64) for d in dicts])
                splits[split] = (rows, labels)
        else:  # The binary version: records of 1 label byte and 3,072 pixel bytes.
            names = tuple(read("batches.meta.txt").decode().split())
            for split, batches in PYTHON_BATCHES.items():
                records = np.concatenate([np.frombuffer(read(f"{b}.bin"), np.uint8)
                                          .reshape(-1, 3073) for b in batches])
                splits[split] = (records[:, 1:], records[:, 0].astype(np.int64))
    if names != CLASSES:
        raise ValueError(f"{path}: class names {names}, expected CIFAR-10's {CLASSES}")
    # A row is the red, green and blue 32 x 32 planes in turn.
    return {split: (rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
            for split, (rows, labels) in splits.items()}, names


def encode_jpeg(image: np.ndarray) -> bytes:
    """image: (32, 32, 3) uint8 RGB -> JPEG bytes (Pillow's defaults, spelled out)."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, "JPEG", quality=75, subsampling="4:2:0",
                                       optimize=False, progressive=False)
    return buffer.getvalue()


def _member(name: str, size: int | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    if size is None:
        info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
    else:
        info.size, info.mode = size, FILE_MODE
    return info


def write_tar(splits: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> int:
    """The uncompressed archive at `path`; returns the number of images."""
    count = 0
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        for split in ("train", "test"):
            images, labels = splits[split]
            archive.addfile(_member(split))
            for label, name in enumerate(CLASSES):
                archive.addfile(_member(f"{split}/{name}"))
                for index, image in enumerate(images[labels == label]):
                    data = encode_jpeg(image)
                    archive.addfile(_member(f"{split}/{name}/{index:04d}.jpg", len(data)),
                                    io.BytesIO(data))
                    count += 1
    return count


def gzip_file(source: str, target: str, use_gzip_program: bool = True) -> str:
    """`gzip -n -6 < source > target`; zlib's level 6 when there is no gzip program. Returns
    which compressor ran."""
    program = shutil.which("gzip") if use_gzip_program else None
    with open(target, "wb") as out:
        if program:
            with open(source, "rb") as data:
                subprocess.run([program, "-n", f"-{GZIP_LEVEL}", "-c"], stdin=data, stdout=out,
                               check=True)
            return "gzip"
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # gzip header, mtime 0.
        with open(source, "rb") as data:
            while chunk := data.read(1 << 20):
                out.write(compressor.compress(chunk))
        out.write(compressor.flush())
    return "zlib"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_archive(source: str, out: str, use_gzip_program: bool = True) -> dict:
    """Build `out` from the official archive `source`; {"images", "compressor", "sha256"}."""
    splits, _ = read_source(source)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as scratch:
        tar_path = os.path.join(scratch, "cifar10-jpeg.tar")
        images = write_tar(splits, tar_path)
        compressor = gzip_file(tar_path, out + ".partial", use_gzip_program)
    os.replace(out + ".partial", out)
    return {"images": images, "compressor": compressor, "sha256": sha256(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="cifar-10-python.tar.gz or cifar-10-binary.tar.gz (official)")
    parser.add_argument("--out", default="cifar10-jpeg.tar.gz")
    parser.add_argument("--no_gzip_program", action="store_true",
                        help="compress with zlib even where a gzip program exists")
    args = parser.parse_args(argv)
    result = make_archive(args.source, args.out, not args.no_gzip_program)
    same = result["sha256"] == REFERENCE_SHA256
    print(f"{args.out}: {result['images']} images, compressed with {result['compressor']}, "
          f"sha256 {result['sha256']} ({'the' if same else 'not the'} reference archive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
