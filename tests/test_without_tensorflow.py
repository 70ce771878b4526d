"""The training path that needs no TensorFlow: views made on the devices, in-memory sources.

`_without_tensorflow.py` makes `import tensorflow`, `tensorflow_datasets` and `clu` fail, as on
a machine without them; `main.py` must still train, evaluate kNN, checkpoint, log and resume.
"""

import json
import os
import subprocess
import sys

import _runs
import numpy as np

WRAPPER = os.path.join("tests", "_without_tensorflow.py")


def _run_without_tensorflow(args, timeout=400):
    result = subprocess.run([sys.executable, WRAPPER, *args], cwd=_runs.ROOT,
                            env=_runs.run_env(1), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (result.stdout[-3000:], _runs.stderr_excerpt(result.stderr))
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["blocked_modules_imported"] == [], report
    return result


def test_main_trains_evaluates_checkpoints_and_resumes_without_tensorflow(tmp_path):
    """At a resize, as the quickstart loads its 8x8 digits at 16 (here 12, cropped to 8): JAX
    resizes them where TensorFlow is not installed."""
    workdir = str(tmp_path / "run")
    resized = ("--config.data.augment_on=device", "--config.data.load_size=12")
    main = _runs.main_command(workdir, 3, *resized)[1:]
    first = _run_without_tensorflow(main)
    assert "kNN top-1" in first.stdout
    summary = _runs.summary(workdir)
    assert summary["steps"] == 3 and 0 <= summary["knn_top1"] <= 1
    assert sorted(_runs.losses(workdir)) == [1, 2, 3]
    assert all(np.isfinite(list(_runs.losses(workdir).values())))
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))

    more = _runs.main_command(workdir, 4, *resized)[1:]
    resumed = _run_without_tensorflow(more)
    assert "Resumed from checkpoint at step 3" in resumed.stdout
    assert sorted(_runs.losses(workdir)) == [1, 2, 3, 4]


def test_npz_and_image_folders_load_without_tensorflow(tmp_path):
    code = r"""
import os, sys, json
import numpy as np
from PIL import Image
from amcl_jax.data import load_split
root = sys.argv[1]
rng = np.random.default_rng(0)
for split in ("train", "test"):
    for name in ("cat", "dog"):
        os.makedirs(os.path.join(root, "folder", split, name))
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
                os.path.join(root, "folder", split, name, f"{i}.png"))
with open(os.path.join(root, "folder", "train", "cat", "broken.png"), "w") as f:
    f.write("not an image")
native, labels, classes = load_split("image_folder", "train", data_dir=os.path.join(root, "folder"))
resized = load_split("image_folder", "test", data_dir=os.path.join(root, "folder"),
                     image_size=8)[0]
np.savez(os.path.join(root, "data.npz"), train_images=native, train_labels=labels,
         test_images=native[:2, ..., 0], test_labels=labels[:2], num_classes=5)
both, both_labels, npz_classes = load_split("cifar10", "train+test",
                                            data_dir=os.path.join(root, "data.npz"))
print(json.dumps({"native": native.shape, "labels": labels.tolist(), "classes": classes,
                  "resized": resized.shape, "npz": both.shape, "npz_classes": npz_classes,
                  "npz_equal": bool(np.array_equal(both[:6], native))}))
"""
    script = tmp_path / "load.py"
    script.write_text(code)
    result = _run_without_tensorflow([str(script), str(tmp_path)], timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["native"] == [6, 10, 12, 3] and report["labels"] == [0, 0, 0, 1, 1, 1]
    assert report["classes"] == 2 and report["resized"] == [6, 8, 8, 3]
    assert report["npz"] == [8, 10, 12, 3] and report["npz_classes"] == 5
    assert report["npz_equal"]
