"""Reliability (issue 7): kill -9 and SIGTERM resume bit-exactly, non-finite values stop the run,
damaged checkpoints fall back to the previous good one, bad input fails in one line."""

import os
import pathlib
import re
import signal
import sys

import _runs
import numpy as np
import pytest

from amcl_jax.config import ConfigError, get_default_config, validate_config
from amcl_jax.data import load_split


def test_kill_9_then_sigterm_then_resume_is_bit_exact(tmp_path):
    workdir = str(tmp_path / "killed")
    env = _runs.run_env(1)
    killed = _runs.Run(workdir, env, tag="a")
    killed.wait_for("step      3/")
    killed.kill()  # SIGKILL: no handler runs, a checkpoint may be half written.
    assert killed.process.returncode == -signal.SIGKILL

    preempted = _runs.Run(workdir, env, tag="b")
    preempted.wait_for("step      6/")
    preempted.signal(signal.SIGTERM)
    assert preempted.wait() == 0, preempted.report()
    assert "Resumed from checkpoint at step" in preempted.stdout
    assert "Preempted: checkpoint saved at step" in preempted.stdout

    finished = _runs.Run(workdir, env, tag="c").check()
    assert "Resumed from checkpoint at step" in finished.stdout
    straight = _runs.summary(_runs.baseline())
    resumed = _runs.summary(workdir)
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert resumed["knn_top1"] == straight["knn_top1"]
    # Metrics logged after the last checkpoint by the killed run are not duplicated.
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == list(range(1, _runs.TOTAL_STEPS + 1))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "nan")
    run = _runs.Run(workdir, _runs.run_env(1), wrapper=("tests/_nonfinite_main.py", "3"))
    assert run.wait() == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite loss at step 3" in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps and max(steps) == 2  # Nothing written at or after the bad step.


def test_the_log_keeps_the_runs_info_lines_and_drops_orbaxs():
    """Orbax logs some 70 INFO lines per checkpoint it writes (17 of its files in one save);
    the command line keeps them out of the log. The baseline run writes a checkpoint at each of
    its steps."""
    import orbax

    workdir = _runs.baseline()
    assert os.listdir(os.path.join(workdir, "checkpoints"))
    orbax_files = {p.name for p in pathlib.Path(orbax.__path__[0]).rglob("*.py")}
    ours = {p.name for p in pathlib.Path(_runs.ROOT, "amcl_jax").rglob("*.py")} | {"main.py"}
    with open(f"{workdir}.run.err") as f:
        stderr = f.read()
    info_files = re.findall(r"^I\d{4} [\d:.]+ +\d+ ([\w.]+\.py):\d+\]", stderr, re.MULTILINE)
    assert "train.py" in info_files, stderr[-3000:]  # Ours stay.
    assert not set(info_files) & (orbax_files - ours), stderr[-3000:]


def _largest_file(folder):
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    return max(files, key=os.path.getsize)


def test_damaged_newest_checkpoints_fall_back_to_the_previous_good_one(tmp_path):
    workdir = _runs.copy_workdir(_runs.baseline(), str(tmp_path / "damaged"))
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    newest, second, good = steps[-1], steps[-2], steps[-3]
    truncated = _largest_file(os.path.join(checkpoints, str(newest), "state"))
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    flipped = _largest_file(os.path.join(checkpoints, str(second), "state"))
    with open(flipped, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)

    run = _runs.Run(workdir, _runs.run_env(1)).check()
    for step in (newest, second):
        assert f"Checkpoint at step {step} is damaged" in run.stdout, run.stdout
        # One line per skipped step, and the failed restores' threads stay quiet.
        assert (run.stdout + run.stderr).count(f"Checkpoint at step {step} is damaged") == 1
        assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", str(step)))
    assert "Event loop is closed" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert f"Resumed from checkpoint at step {good}" in run.stdout
    # Training redid the lost steps exactly.
    assert (_runs.summary(workdir)["params_sha256"]
            == _runs.summary(_runs.baseline())["params_sha256"])


def test_bad_config_argument_is_one_line_without_traceback(tmp_path):
    for args in (["--config=configs/quickstart.py:amcl=maybe"],
                 ["--config=configs/no_such_config.py"],
                 ["--config=configs/quickstart.py", "--config.batch_size=eight"],
                 ["--config=configs/quickstart.py", "--config.data.corrupt_images=maybe"]):
        result = _runs.run_script([sys.executable, "main.py", *args, f"--workdir={tmp_path}"],
                                  _runs.run_env(1), 120)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, args
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (args, result.stderr[-2000:])
    assert "amcl='maybe'" in errors[0] or "corrupt_images" in errors[0]


BAD_VALUES = [
    ("data.corrupt_images", "maybe", "'skip', 'fail'"),
    ("eval.batch_size", 0, "divisible"),
    ("model.dtype", "float16", "'float32', 'bfloat16'"),
    ("checkpoint.every_steps", 0, ">= 1"),
    ("checkpoint.max_to_keep", 0, ">= 1"),
    ("log_every_steps", 0, ">= 1"),
    ("data.num_views", 1, ">= 2"),
    ("data.image_size", 2, ">= 4"),
    ("optimizer.schedule", "linear", "'cosine', 'constant'"),
    ("optimizer.warmup_steps", -1, ">= 0"),
    ("optimizer.weight_decay", -1.0, ">= 0"),
    ("eval.knn_temperature", 0.0, "> 0"),
    ("amcl.chunk_size", 0, ">= 1"),
    ("amcl.omega_dim", 0, "> 0"),
    ("moco.temperature", 0.0, "> 0"),
    ("model.width", 0.0, "> 0"),
]


@pytest.mark.parametrize("field,value,allowed", BAD_VALUES)
def test_bad_value_is_one_line_naming_field_and_allowed_values(field, value, allowed):
    config = get_default_config()
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    assert message.startswith(f"config.{field}=") and allowed in message and "\n" not in message


def _image_folder(root, corrupt):
    import tensorflow as tf

    for index in range(3):
        folder = root / "train" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        image = np.full((6, 6, 3), 40 * index, np.uint8)
        (folder / f"ok{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    png = (root / "train" / "class0" / "ok0.png").read_bytes()
    if corrupt:
        (root / "train" / "class1" / "garbage.png").write_bytes(b"not an image at all")
        (root / "train" / "class0" / "truncated.png").write_bytes(png[: len(png) // 3])
    return str(root)


def test_corrupt_images_are_skipped_and_named_or_fail(tmp_path, capsys):
    folder = _image_folder(tmp_path / "folder", corrupt=True)
    images, labels, classes = load_split("image_folder", "train", data_dir=folder)
    assert images.shape == (3, 6, 6, 3) and classes == 2
    assert sorted(labels.tolist()) == [0, 0, 1]  # ok0, ok2 in class0; ok1 in class1.
    out = capsys.readouterr().out
    assert "skipped 2 image file(s)" in out and "garbage.png" in out and "truncated.png" in out
    with pytest.raises(ValueError, match="cannot decode 2 image file.*garbage.png"):
        load_split("image_folder", "train", data_dir=folder, corrupt_images="fail")
    clean = _image_folder(tmp_path / "clean", corrupt=False)
    images, _, _ = load_split("image_folder", "train", data_dir=clean, corrupt_images="fail")
    assert images.shape == (3, 6, 6, 3)


def test_a_streamed_run_stops_at_an_undecodable_file_in_one_line(tmp_path):
    """Streamed files are decoded when read: the first batch holding a bad one (here the kNN
    bank at step 0) stops the run with one line naming it, exit code 1."""
    import shutil

    folder = _image_folder(tmp_path / "folder", corrupt=True)
    shutil.copytree(os.path.join(folder, "train"), os.path.join(folder, "test"))
    result = _runs.run_script(
        _runs.main_command(str(tmp_path / "run"), 4, "--config.data.dataset=image_folder",
                           f"--config.data.data_dir={folder}", "--config.data.streaming=true",
                           "--config.batch_size=4"),  # The folder holds 5 files.
        _runs.run_env(1), 300)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.search(r"data.streaming=True: cannot decode 2 image file\(s\) of batch 0: .*"
                     r"(garbage|truncated)\.png", errors[0]), errors[0]
    assert "Traceback" not in result.stderr
