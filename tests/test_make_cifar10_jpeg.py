"""scripts/make_cifar10_jpeg.py on tiny fake official CIFAR-10 archives (the python and the binary
version, in their official formats): layout and member order, tar and gzip metadata, JPEG
settings, and the same bytes on every run and from either source."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 2


@pytest.fixture(scope="module")
def make():
    spec = importlib.util.spec_from_file_location(
        "make_cifar10_jpeg", os.path.join(ROOT, "scripts", "make_cifar10_jpeg.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(count: int, seed: int) -> np.ndarray:
    """Smooth colour gradients (JPEG keeps them close), each image distinct: (N, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, 32)
    base = rng.uniform(0, 255, (count, 1, 1, 3))
    rows, columns = rng.uniform(-120, 120, (2, count, 1, 1, 3))
    image = base + rows * grid[None, :, None, None] + columns * grid[None, None, :, None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _fake_data():
    """{"train": (images, labels), "test": ...} with the classes interleaved, as in CIFAR-10."""
    data = {}
    for seed, (split, per_class) in enumerate((("train", TRAIN_PER_CLASS),
                                               ("test", TEST_PER_CLASS))):
        labels = np.tile(np.arange(10), per_class)[::-1].copy()
        data[split] = (_images(len(labels), seed), labels)
    return data


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def _rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R, G, B planes.


def _python_archive(path, data, class_names) -> None:
    """cifar-10-python.tar.gz's format: pickled dicts, the training images over 5 batches."""
    images, labels = data["train"]
    with tarfile.open(path, "w:gz") as archive:
        _add(archive, "cifar-10-batches-py/batches.meta",
             pickle.dumps({b"label_names": [n.encode() for n in class_names]}))
        for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
            _add(archive, f"cifar-10-batches-py/data_batch_{i}", pickle.dumps(
                {b"data": _rows(images[part]), b"labels": labels[part].tolist()}))
        images, labels = data["test"]
        _add(archive, "cifar-10-batches-py/test_batch",
             pickle.dumps({b"data": _rows(images), b"labels": labels.tolist()}))


def _binary_archive(path, data) -> None:
    """cifar-10-binary.tar.gz's format: records of a label byte and 3,072 pixel bytes."""
    def records(images, labels) -> bytes:
        return np.concatenate([labels[:, None].astype(np.uint8), _rows(images)], 1).tobytes()

    images, labels = data["train"]
    with tarfile.open(path, "w:gz") as archive:
        _add(archive, "cifar-10-batches-bin/batches.meta.txt",
             "\n".join(("airplane automobile bird cat deer dog frog horse ship truck").split())
             .encode() + b"\n\n")
        for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
            _add(archive, f"cifar-10-batches-bin/data_batch_{i}.bin",
                 records(images[part], labels[part]))
        _add(archive, "cifar-10-batches-bin/test_batch.bin", records(*data["test"]))


def test_archive_layout_metadata_and_determinism(make, tmp_path):
    data = _fake_data()
    source = tmp_path / "cifar-10-python.tar.gz"
    _python_archive(source, data, make.CLASSES)
    first = make.make_archive(str(source), str(tmp_path / "a.tar.gz"))
    second = make.make_archive(str(source), str(tmp_path / "b.tar.gz"))
    assert first == second and first["images"] == 10 * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())

    compressed = (tmp_path / "a.tar.gz").read_bytes()
    # gzip header: no file name or other flags, mtime 0; GNU gzip's OS byte is 3 (Unix).
    assert compressed[:3] == b"\x1f\x8b\x08" and compressed[3] == 0
    assert compressed[4:8] == b"\0\0\0\0" and compressed[8] == 0
    if first["compressor"] == "gzip":
        assert compressed[9] == 3

    expected = []
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        expected.append(split)
        for name in make.CLASSES:
            expected += [f"{split}/{name}"] + [f"{split}/{name}/{i:04d}.jpg"
                                                for i in range(per_class)]
    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == expected
        for member in members:
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
                make.MTIME, 0, 0, "", "")
            assert member.mode == (make.DIR_MODE if member.isdir() else make.FILE_MODE)
        jpegs = {m.name: archive.extractfile(m).read() for m in members if m.isfile()}
    with tarfile.open(tmp_path / "a.tar.gz") as archive:  # GNU format: "ustar  \0" magic.
        assert archive.fileobj.read(512)[257:265] == b"ustar  \0"

    # Each class's images keep the source's order, and JPEG keeps them close.
    reference_header = io.BytesIO()
    Image.new("RGB", (32, 32)).save(reference_header, "JPEG")  # Pillow's defaults.
    reference_header = reference_header.getvalue()
    reference_header = reference_header[:reference_header.index(b"\xff\xda")]
    for split in ("train", "test"):
        images, labels = data[split]
        for label, name in enumerate(make.CLASSES):
            for index, source_index in enumerate(np.flatnonzero(labels == label)):
                payload = jpegs[f"{split}/{name}/{index:04d}.jpg"]
                assert payload[:len(reference_header)] == reference_header
                decoded = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"), np.float32)
                errors = np.abs(images.astype(np.float32) - decoded).mean(axis=(1, 2, 3))
                assert errors.argmin() == source_index
                assert errors.min() < 6.0


def test_binary_archive_gives_the_same_bytes_and_bad_sources_are_named(make, tmp_path):
    data = _fake_data()
    _python_archive(tmp_path / "python.tar.gz", data, make.CLASSES)
    _binary_archive(tmp_path / "binary.tar.gz", data)
    from_python = make.make_archive(str(tmp_path / "python.tar.gz"), str(tmp_path / "p.tar.gz"))
    from_binary = make.make_archive(str(tmp_path / "binary.tar.gz"), str(tmp_path / "b.tar.gz"))
    assert from_python["sha256"] == from_binary["sha256"]

    # The tar inside does not depend on the compressor (zlib where there is no gzip program).
    zlib_made = make.make_archive(str(tmp_path / "python.tar.gz"), str(tmp_path / "z.tar.gz"),
                                  use_gzip_program=False)
    assert zlib_made["compressor"] == "zlib"
    import gzip

    assert gzip.decompress((tmp_path / "z.tar.gz").read_bytes()) == gzip.decompress(
        (tmp_path / "p.tar.gz").read_bytes())

    _python_archive(tmp_path / "other.tar.gz", data, [f"c{i}" for i in range(10)])
    with pytest.raises(ValueError, match="class names"):
        make.make_archive(str(tmp_path / "other.tar.gz"), str(tmp_path / "o.tar.gz"))
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz") as archive:
        _add(archive, "readme.txt", b"not CIFAR-10")
    with pytest.raises(ValueError, match="official CIFAR-10"):
        make.make_archive(str(tmp_path / "empty.tar.gz"), str(tmp_path / "e.tar.gz"))
