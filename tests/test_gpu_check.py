"""`tools/gpu_check.py` and `tools/gather_gpu_payload.py` on the CPU, at toy scale.

The GPU check runs once per GPU session, prepared here: its whole logic (every phase, the
budgeted CIFAR-10 runs stopped through the trainer's preemption, the kNN, both reports) runs
with `--toy` on a small image-folder archive, with TensorFlow, TFDS and clu blocked as on the
GPU machine.
"""

import json
import os
import subprocess
import sys
import tarfile

import _runs
import numpy as np
import pytest

WRAPPER = os.path.join("tests", "_without_tensorflow.py")


def _write_archive(path, *, classes=("cat", "dog", "ship"), per_class=None, size=32):
    """A CIFAR-10-like archive: train/<class>/*.jpg and test/<class>/*.jpg (Pillow JPEGs)."""
    from PIL import Image

    per_class = per_class or {"train": 4, "test": 2}
    root = os.path.join(os.path.dirname(path), "folder")
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name in classes:
            os.makedirs(os.path.join(root, split, name))
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    os.path.join(root, split, name, f"{i}.jpg"))
    with tarfile.open(path, "w:gz") as archive:
        for split in per_class:
            archive.add(os.path.join(root, split), arcname=split)
    return path


def test_gpu_check_runs_every_phase_without_tensorflow_and_reports_them(tmp_path):
    archive = _write_archive(str(tmp_path / "cifar10-jpeg.tar.gz"))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, WRAPPER, "tools/gpu_check.py", "--out", str(out), "--toy",
         "--data_dir", archive, "--train_seconds", "1.5", "--dtypes", "float32"],
        cwd=_runs.ROOT, env=_runs.run_env(1), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout[-3000:], _runs.stderr_excerpt(result.stderr))
    blocked = json.loads(result.stderr.strip().splitlines()[-1])
    assert blocked["blocked_modules_imported"] == [], blocked

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["status"] == "done" and report["toy"]
    for key in ("python", "jax", "jaxlib", "flax", "optax", "torch", "torch_cuda"):
        assert key in report["versions"], key
    assert report["versions"]["tensorflow"] is None  # blocked
    assert report["device"]["jax_device_kind"] and report["device"]["jax_backend"] == "cpu"
    phases = report["phases"]
    assert list(phases) == ["steps", "loop", "cifar10", "torch_compile"]
    for name in ("steps", "loop", "cifar10"):
        assert phases[name]["status"] == "ok", (name, phases[name])
        assert phases[name]["seconds"] > 0

    # One dtype: the phase's loop over dtypes is the same for each (bfloat16's own numbers are
    # tested with the models); two would double the test's compilations.
    steps = phases["steps"]["by_dtype"]
    assert sorted(steps) == ["float32"]
    for result_ in steps.values():
        for name in ("simclr", "amcl"):
            step = result_["steps"][name]
            assert step["median_step_seconds"] > 0
            assert step["images_per_second"] == pytest.approx(8 / step["median_step_seconds"])
            assert step["mfu"] is None  # no data-sheet peak for a CPU
            assert 0 < step["matmul_utilisation"]
        assert result_["ratios"]["amcl_over_simclr_step_time"] > 0
    # PyTorch is optional here: its compiled step is skipped without it, else held to the cap.
    compiled = phases["torch_compile"]
    assert compiled["status"] in ("skipped", "ok", "partial", "timeout", "error"), compiled
    if compiled["status"] == "skipped":
        assert compiled["reason"] == "PyTorch not installed"

    loop = phases["loop"]
    assert loop["augment_on"] == "device" and loop["loop_seconds_per_step"] > 0
    assert loop["loop_over_step_throughput"] == pytest.approx(
        loop["bare_step_median_seconds"] / loop["loop_seconds_per_step"])

    pair = phases["cifar10"]
    assert pair["train_seconds_budget"] == 1.5
    assert sorted(pair["runs"]) == ["amcl", "simclr"]
    for name, run in pair["runs"].items():
        assert run["amcl"] == (name == "amcl")
        assert run["stopped_by_budget"] and run["training_seconds"] >= 1.5
        assert run["steps"] >= 1 and run["epochs"] == pytest.approx(run["steps"] * 8 / 12)
        assert 0.0 <= run["knn_top1"] <= 1.0 and np.isfinite(run["final_loss"])
        protocol = run["knn_protocol"]
        assert (protocol["k"], protocol["temperature"]) == (5, 0.1)
        assert (protocol["bank_size"], protocol["num_queries"]) == (12, 6)
        assert run["images_per_second"] is None or run["images_per_second"] > 0

    text = (out / "gpu_check.md").read_text()
    for heading in ("# GPU check", "## Train step", "## Training loop", "## CIFAR-10",
                    "## Versions", "| jax |"):
        assert heading in text, heading


def test_payload_copies_the_data_sizes_it_and_prints_the_command(tmp_path, capsys):
    from tools import gather_gpu_payload as payload

    assert payload.pinned("dm-pix") == "dm-pix==0.4.5"
    assert payload.pinned("ml_collections") == "ml_collections==1.1.0"
    data = tmp_path / "cifar10-jpeg.tar.gz"
    data.write_bytes(b"x" * 3000)
    out = tmp_path / "payload"
    out.mkdir()
    (out / "fake-1.0-py3-none-any.whl").write_bytes(b"w" * 1000)
    argv = ["--data", str(data), "--out", str(out), "--no_download", "--no_import_check"]
    assert payload.main(argv) == 0
    printed = capsys.readouterr().out
    assert (out / "cifar10-jpeg.tar.gz").read_bytes() == data.read_bytes()
    assert "0.00 MiB  total (limit 64 MiB)" in printed
    assert f"--no-deps {out}/*.whl" in printed
    assert f"--data_dir {out}/cifar10-jpeg.tar.gz" in printed
    assert "python tools/gpu_check.py --out $OUT" in printed

    assert payload.main([*argv, "--limit_mib", "0.001"]) == 1
    assert "OVER THE LIMIT" in capsys.readouterr().out


def test_payload_import_check_finds_nothing_missing_beyond_the_payload():
    """The GPU check's modules, loaded without TensorFlow, need the payload's two wheels and
    nothing else the GPU machine lacks; without a wheel, the check names it."""
    from tools import gather_gpu_payload as payload

    needed = payload.imported_distributions()
    assert {"jax", "flax", "ml-collections", "dm-pix"} <= needed
    assert not {"tensorflow", "tensorflow-cpu", "tensorflow-datasets", "clu"} & needed
    assert payload.missing_on_gpu_machine(needed) == []
    assert payload.missing_on_gpu_machine(needed, payload=("ml_collections",)) == ["dm-pix"]
