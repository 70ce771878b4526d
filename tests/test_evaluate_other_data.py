"""Evaluation on other data: another dataset (transfer) or the pretraining data moved, with the
encoder's input contract (image size, normalisation) from the pretraining config; `--config.*`
overrides in evaluation modes apply (evaluation fields) or are refused, naming the field."""

import json
import os
import shutil
import sys

import _runs
import jax
import numpy as np
import pytest
from conftest import tiny_config

from amcl_jax import data as data_lib
from amcl_jax import train
from amcl_jax.config import ConfigError
from amcl_jax.data import inputs, sources
from amcl_jax.errors import UsageError
from amcl_jax.evaluate import common, knn_eval, linear_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINING_CLASSES, OTHER_CLASSES = 10, 4


def _write_npz(path, *, size, num_classes, seed, train=120, test=40):
    """A 'dataset' of class-coloured noisy squares: (N, size, size, 3) uint8 per split."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes, 3))
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count) % num_classes
        noise = rng.integers(-40, 41, size=(count, size, size, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.int32)
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 2-step pretraining on an .npz of 8x8 images (10 classes, CIFAR-10's normalisation),
    whose data are then moved away (config.json names a path that no longer exists), and an
    .npz of another 'dataset': 4 classes at 12x12."""
    root = tmp_path_factory.mktemp("other_data")
    original = _write_npz(root / "pretraining.npz", size=8, num_classes=PRETRAINING_CLASSES,
                          seed=0)
    workdir = str(root / "run")
    train.train_and_evaluate(tiny_config(**{
        "data.data_dir": original, "data.augmentations": "ae", "amcl.num_heads": 2,
        "total_steps": 2, "eval.batch_size": 32, "eval.max_bank_examples": 80,
        "eval.max_query_examples": 40}), workdir)
    moved = str(root / "moved" / "pretraining.npz")
    os.makedirs(os.path.dirname(moved))
    shutil.move(original, moved)
    other = _write_npz(root / "shapes.npz", size=12, num_classes=OTHER_CLASSES, seed=1)
    return {"workdir": workdir, "moved": moved, "other": other}


def _recording_inputs(monkeypatch):
    """Records every image batch the encoder is given (concrete ones: not the shape check)."""
    batches = []
    original = common.features_fn_for_layer

    def wrapped(*args, **kwargs):
        fn = original(*args, **kwargs)

        def record(variables, images):
            if isinstance(images, jax.core.Tracer):  # run_knn's layer check (eval_shape).
                return jax.numpy.zeros((images.shape[0], 1))
            batches.append(np.asarray(images))
            return fn(variables, images)
        return record
    monkeypatch.setattr(common, "features_fn_for_layer", wrapped)
    return batches


def test_knn_on_another_dataset_keeps_the_encoders_input_contract(pretrained, monkeypatch):
    workdir, other = pretrained["workdir"], pretrained["other"]
    batches = _recording_inputs(monkeypatch)
    result = knn_eval.run_knn(workdir, k=3, eval_dataset="shapes", eval_data_dir=other)
    protocol = result["knn_top1_final_protocol"]
    assert protocol["num_classes"] == OTHER_CLASSES and protocol["dataset"] == "shapes"
    assert protocol["pretraining_dataset"] == "cifar10" and protocol["image_size"] == 8
    assert protocol["bank_size"] == 80 and protocol["num_queries"] == 40  # eval.max_*: 80, 40.
    assert result["knn_top1_best_over_evaluations"] is None  # The monitor saw other data.
    # 12x12 images reach the encoder at the pretraining 8x8, normalised with the pretraining
    # dataset's statistics (CIFAR-10's), not those of the evaluation data's name (unknown: 0.5).
    assert all(b.shape[1:] == (8, 8, 3) for b in batches) and batches
    images, labels, _ = data_lib.load_split("shapes", "train", data_dir=other)
    images, _ = inputs.fixed_subset(images, labels, 80)  # The bank, as the monitor caps it.
    mean, std = data_lib.dataset_stats("cifar10")
    expected = (sources.resize_uint8(images[:32], 8) / 255.0 - mean) / std
    np.testing.assert_allclose(batches[0], expected, atol=0.03)
    saved = json.load(open(os.path.join(workdir, "knn_shapes.json")))
    assert saved["knn_top1_final"] == result["knn_top1_final"]
    assert not os.path.exists(os.path.join(workdir, "knn.json"))  # The in-domain file: untouched.


def test_linear_probe_on_another_dataset_has_its_classes(pretrained):
    probe = linear_probe.default_probe_config()
    probe.epochs, probe.batch_size = 2, 32
    result = linear_probe.run_linear_probe(pretrained["workdir"], probe, eval_dataset="shapes",
                                           eval_data_dir=pretrained["other"])
    protocol = result["protocol"]
    assert protocol["num_classes"] == OTHER_CLASSES and protocol["dataset"] == "shapes"
    assert protocol["pretraining_dataset"] == "cifar10" and protocol["image_size"] == 8
    assert protocol["num_train_examples"] == 120 and protocol["num_test_examples"] == 40
    assert result["result_file"] == "linear_probe_shapes.json"
    assert os.path.exists(os.path.join(pretrained["workdir"], "linear_probe_shapes.json"))


def test_moved_data_and_evaluation_overrides(pretrained):
    workdir, moved = pretrained["workdir"], pretrained["moved"]
    with pytest.raises(ConfigError, match=r"data_dir=.*does not exist.*--eval_data_dir"):
        knn_eval.run_knn(workdir)  # config.json's data_dir is gone.
    result = knn_eval.run_knn(workdir, eval_data_dir=moved, config_overrides={
        "eval.max_bank_examples": 50, "data.eval_test_split": "train", "eval.knn_k": 4})
    protocol = result["knn_top1_final_protocol"]
    assert protocol["num_classes"] == PRETRAINING_CLASSES and protocol["dataset"] == "cifar10"
    assert protocol["bank_size"] == 50 and protocol["query_split"] == "train"
    assert protocol["k"] == 4
    assert result["result_file"] == "knn.json"  # The same data: the usual file.
    assert result["knn_top1_best_over_evaluations"] is not None  # The monitor's, comparable.


@pytest.mark.parametrize("kwargs,error,match", [
    ({"config_overrides": {"model.width": 0.5}}, UsageError,
     r"^--config.model.width=0.5 cannot change in an evaluation"),
    ({"config_overrides": {"data.data_dir": "x"}}, UsageError, "--eval_data_dir"),
    ({"config_overrides": {"data.image_size": 16}}, UsageError, "data.image_size"),
    ({"config_overrides": {"eval.knn_k": 3}, "k": 5}, UsageError, "--knn_k=5 and"),
    ({"config_overrides": {"eval.knn_temperature": -1.0}}, ConfigError,
     r"^config.eval.knn_temperature=-1.0 is invalid"),
    ({"eval_dataset": "no_such_dataset"}, ConfigError, r"^--eval_dataset='no_such_dataset'"),
])
def test_refused_and_invalid_evaluation_arguments_name_the_field(pretrained, kwargs, error,
                                                                  match):
    kwargs = {"eval_data_dir": pretrained["moved"], **kwargs}
    if kwargs.get("eval_dataset"):
        kwargs.pop("eval_data_dir")
    before = sorted(os.listdir(pretrained["workdir"]))
    with pytest.raises(error, match=match):
        knn_eval.run_knn(pretrained["workdir"], **kwargs)
    assert sorted(os.listdir(pretrained["workdir"])) == before


def _main(*argv):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return _runs.run_script([sys.executable, "main.py", *argv], env, 600)


def test_command_line_evaluates_other_data_and_refuses_training_fields(pretrained):
    workdir, other = pretrained["workdir"], pretrained["other"]
    done = _main("--mode=knn", f"--workdir={workdir}", "--eval_dataset=shapes",
                 f"--eval_data_dir={other}", "--config=configs/quickstart.py",
                 "--config.eval.knn_k=3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on shapes" in done.stdout and "knn_shapes.json" in done.stdout and "k=3" in done.stdout
    refused = _main("--mode=linear_probe", f"--workdir={workdir}",
                    "--config=configs/quickstart.py", "--config.batch_size=64")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert lines[0].startswith("error: --config.batch_size=64 cannot change"), lines
    wrong_mode = _main("--config=configs/quickstart.py", f"--workdir={workdir}",
                       "--eval_dataset=shapes")
    assert wrong_mode.returncode == 2
    assert "--eval_dataset is read by --mode=knn or --mode=linear_probe only" in wrong_mode.stderr
