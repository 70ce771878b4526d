"""Faults that end in one `error:` line and nothing after it: a mistyped data path (before the
workdir is written or anything is downloaded), SIGTERM or Ctrl-C while loading data (the
workdir's lock is released), a full disk while saving a checkpoint, a workdir whose checkpoints
are all damaged, and a zero-sized projector."""

import os
import shutil
import signal
import subprocess
import sys

import _runs
import pytest

from amcl_jax import errors, workdir
from amcl_jax.data import load_split


def _ends_in_one_error_line(stderr: str) -> str:
    """The `error:` line, asserting it is the only one, the last line, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors_ = [line for line in lines if line.startswith("error:")]
    assert stderr.count("Traceback") == 0, _runs.stderr_excerpt(stderr)
    assert len(errors_) == 1 and lines[-1] == errors_[0], _runs.stderr_excerpt(stderr)
    return errors_[0]


def _main(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return _runs.run_script([sys.executable, "main.py", *args], _runs.run_env(1), timeout)


# ---- A mistyped data path: one line before anything is written or downloaded. ----
@pytest.mark.parametrize("name,download", [
    ("missing/cifar.tar.gz", "true"),  # an archive that does not exist
    ("missing/data.npz", "true"),
    ("missing/tfds", "true"),  # a TFDS data_dir whose parent does not exist either
    ("tfds_typo", "false"),  # a folder that does not exist, downloads off
])
def test_a_missing_data_dir_is_one_line_before_the_workdir_is_written(tmp_path, name, download):
    data_dir, run = tmp_path / name, tmp_path / "run"
    result = _main("--config=configs/quickstart.py", "--config.data.dataset=cifar10",
                   f"--config.data.data_dir={data_dir}", f"--config.data.download={download}",
                   f"--workdir={run}", timeout=120)
    assert result.returncode == errors.USAGE, _runs.stderr_excerpt(result.stderr)
    line = _ends_in_one_error_line(result.stderr)
    assert line.startswith(f"error: config.data.data_dir='{data_dir}' is invalid: it "), line
    assert "allowed: an image folder" in line and ".npz" in line, line
    assert not run.exists() and not data_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # Nothing created anywhere.


def test_load_split_refuses_a_missing_data_dir_before_downloading(tmp_path):
    """The loader checks too (evaluations and library callers): no TFDS folder is created
    inside a mistyped path, and a download goes only into a folder whose parent exists."""
    for data_dir, match in [(tmp_path / "no" / "cifar.tar.gz", "names a file that does not"),
                            (tmp_path / "no" / "tfds", "nor does its parent folder"),
                            (tmp_path / "no_folder", "does not exist")]:
        with pytest.raises(ValueError, match=f"data.data_dir='{data_dir}' is invalid: .*{match}"):
            load_split("cifar10", "train", data_dir=str(data_dir),
                       download=data_dir.name != "no_folder")
        with pytest.raises(ValueError, match="data.data_dir"):
            load_split("cifar10", "test", data_dir=str(data_dir), download=False)
    not_an_archive = tmp_path / "notes.txt"
    not_an_archive.write_text("not data")
    with pytest.raises(ValueError, match="is a file, but neither a .npz file nor an archive"):
        load_split("cifar10", "train", data_dir=str(not_an_archive), download=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---- SIGTERM or Ctrl-C while loading data: the lock is released, one line. ----
SLOW_LOADING = """if True:
    import runpy, signal, sys, time
    # Ctrl-C as in a terminal's foreground command, also when the tests run as a background
    # job (whose shell starts it, and so this process, with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, ".")
    from amcl_jax.data import inputs
    load_data = inputs.load_data

    def slow_load_data(*args, **kwargs):
        print("loading data", flush=True)
        time.sleep(120)
        return load_data(*args, **kwargs)

    inputs.load_data = slow_load_data
    sys.argv = sys.argv[1:]
    runpy.run_path("main.py", run_name="__main__")
"""


@pytest.mark.parametrize("signum,code,said", [(signal.SIGTERM, errors.TERMINATED, "SIGTERM"),
                                              (signal.SIGINT, errors.INTERRUPTED, "interrupted")])
def test_a_signal_while_loading_data_releases_the_lock_in_one_line(tmp_path, signum, code, said):
    run = str(tmp_path / "run")
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_LOADING, *_runs.main_command(run)[1:]], cwd=_runs.ROOT,
        env=_runs.run_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "loading data\n"
        assert os.path.exists(os.path.join(run, workdir.LOCK_FILE))
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, _runs.stderr_excerpt(stderr)
    line = _ends_in_one_error_line(stderr)
    assert said in line and "run the same command to resume" in line, line
    assert not os.path.exists(os.path.join(run, workdir.LOCK_FILE))


# ---- A full disk while saving a checkpoint. ----
def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs a user namespace to mount a tmpfs")
def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path):
    """The workdir lies on a 300 KiB tmpfs (mounted in a user namespace, so no root needed):
    config.json and the logs fit, the first checkpoint does not. Orbax's writer threads fail
    many times over; the run ends in one line, with nothing after it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = " ".join(f"'{arg}'" for arg in _runs.main_command(str(disk / "run"), 3))
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=300k tmpfs '{disk}' && exec {command}"],
        cwd=_runs.ROOT, env=_runs.run_env(1), capture_output=True, text=True, timeout=300)
    assert result.returncode == errors.RUNTIME, _runs.stderr_excerpt(result.stderr)
    line = _ends_in_one_error_line(result.stderr)
    assert line.startswith("error: no space left on the device") and "resume" in line, line
    assert "Event loop is closed" not in result.stderr
    assert "never retrieved" not in result.stderr


# ---- Every checkpoint damaged: training and evaluation end in one line. ----
def test_a_workdir_whose_checkpoints_are_all_damaged_ends_in_one_line(tmp_path):
    run = _runs.copy_workdir(_runs.baseline(), str(tmp_path / "damaged"))
    checkpoints = os.path.join(run, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    for step in steps:  # The array files gone: TensorStore's NOT_FOUND on every read.
        shutil.rmtree(os.path.join(checkpoints, str(step), "state", "d"))
    training = _runs.run_script(_runs.main_command(run), _runs.run_env(1), 300)
    assert training.returncode == errors.RUNTIME, _runs.stderr_excerpt(training.stderr)
    line = _ends_in_one_error_line(training.stderr)
    assert line.startswith(f"error: no checkpoint in {checkpoints} could be restored"), line
    assert "never retrieved" not in training.stderr and "Event loop" not in training.stderr

    evaluation = _main("--mode=knn", f"--workdir={run}")
    assert evaluation.returncode == errors.RUNTIME, _runs.stderr_excerpt(evaluation.stderr)
    line = _ends_in_one_error_line(evaluation.stderr)
    assert line.startswith(f"error: the checkpoint at step {steps[-1]} in {checkpoints} cannot "
                           "be restored (ValueError: NOT_FOUND"), line
    assert "never retrieved" not in evaluation.stderr and "Event loop" not in evaluation.stderr


def test_the_silencer_drops_tensorstore_errors_of_futures_never_retrieved():
    """asyncio's report of a failed future whose exception carries no Orbax frame (set by
    TensorStore's C++ code): its raw status line is dropped, other reports still print."""
    script = """if True:
        import asyncio, logging
        from amcl_jax import errors
        logging.basicConfig()
        errors.silence_checkpoint_noise()
        for message in ("NOT_FOUND: Error reading local file", "a future of another library"):
            loop = asyncio.new_event_loop()
            future = loop.create_future()
            future.set_exception(ValueError(message))
            del future
            loop.close()
    """
    result = subprocess.run([sys.executable, "-c", script], cwd=_runs.ROOT, capture_output=True,
                            text=True, timeout=120)
    assert "NOT_FOUND" not in result.stderr, result.stderr
    assert "a future of another library" in result.stderr, result.stderr


# ---- A config field named in its own error. ----
def test_a_zero_projector_out_dim_is_refused_by_its_own_name(tmp_path):
    result = _main("--config=configs/quickstart.py", "--config.projector.out_dim=0",
                   f"--workdir={tmp_path / 'run'}", timeout=120)
    assert result.returncode == errors.USAGE, _runs.stderr_excerpt(result.stderr)
    line = _ends_in_one_error_line(result.stderr)
    assert line.startswith("error: config.projector.out_dim=0 is invalid: must be an integer >= 1")
    assert not (tmp_path / "run").exists()
