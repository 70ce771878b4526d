"""Evaluators on a tiny pretrained workdir: linear probe, kNN from a checkpoint, figures, CLI."""

import json
import os
import shutil
import sys

import _runs
import numpy as np
import pytest
from conftest import tiny_config

from amcl_jax import checkpoints, forms, train
from amcl_jax.config import get_default_config
from amcl_jax.evaluate import cli, common, figures, knn_eval, linear_probe, monitor
from amcl_jax.state import params_sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_digits_config():
    return tiny_config(**{
        "data.dataset": "digits", "data.load_size": 8, "data.augmentations": "ae",
        "amcl.num_heads": 2, "total_steps": 2, "log_every_steps": 1, "eval.batch_size": 64,
        "eval.max_bank_examples": 160, "eval.max_query_examples": 64})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pretrained"))
    train.train_and_evaluate(tiny_digits_config(), path)
    return path


def small_probe(**overrides):
    probe = linear_probe.default_probe_config()
    probe.epochs = 2
    probe.batch_size = 32
    probe.max_train_examples = 96
    probe.max_test_examples = 64
    for key, value in overrides.items():
        probe[key] = value
    return probe


def test_probe_reaches_100_percent_on_linearly_separable_features():
    rng = np.random.default_rng(0)
    num_classes, dim = 6, 12
    directions = rng.normal(size=(num_classes, dim)) * 4.0
    labels = rng.integers(0, num_classes, size=600)
    features = (directions[labels] + rng.normal(size=(600, dim))).astype(np.float32)
    probe = linear_probe.default_probe_config()
    probe.epochs = 30
    probe.batch_size = 64
    norm = linear_probe.FeatureNorm("standardize", features[:480])
    params, history = linear_probe.train_linear_classifier(
        np.asarray(norm(features[:480])), labels[:480], num_classes, probe)
    assert history[-1] < history[0]
    metrics = linear_probe.evaluate_classifier(params, np.asarray(norm(features[480:])),
                                               labels[480:])
    assert metrics["top1"] >= 0.99 and metrics["top5"] == 1.0


def test_probe_matches_scikit_learns_logistic_regression_and_logs_each_epoch(capsys):
    """On overlapping clusters (~87% reachable) the probe's test accuracy is within 2 points of
    scikit-learn's LogisticRegression on the same standardised features."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    num_classes, dim = 4, 16
    directions = rng.normal(size=(num_classes, dim)) * 0.7
    labels = rng.integers(0, num_classes, size=1400)
    features = (directions[labels] + rng.normal(size=(1400, dim))).astype(np.float32)
    norm = linear_probe.FeatureNorm("standardize", features[:1000])
    train_x, test_x = np.asarray(norm(features[:1000])), np.asarray(norm(features[1000:]))
    probe = linear_probe.default_probe_config()
    probe.epochs = 20
    probe.batch_size = 64
    params, _ = linear_probe.train_linear_classifier(train_x, labels[:1000], num_classes, probe)
    ours = linear_probe.evaluate_classifier(params, test_x, labels[1000:])["top1"]
    reference = LogisticRegression(max_iter=1000).fit(train_x, labels[:1000])
    theirs = reference.score(test_x, labels[1000:])
    assert 0.8 < theirs < 0.95 and abs(ours - theirs) <= 0.02, (ours, theirs)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("linear probe epoch")]
    assert len(lines) == 20 and lines[-1].startswith("linear probe epoch 20/20")
    assert "elapsed" in lines[0] and "ETA" in lines[0]


@pytest.mark.parametrize("augmentations", ["", "ae"])
def test_linear_probe_never_changes_the_encoder(workdir, augmentations):
    _, _, before, step = checkpoints.load_pretrained(workdir)
    before_hash = params_sha256(before["params"])
    stats_hash = params_sha256(before["batch_stats"])
    result = linear_probe.run_linear_probe(workdir, small_probe(augmentations=augmentations))
    _, _, after, _ = checkpoints.load_pretrained(workdir)
    assert params_sha256(after["params"]) == before_hash == result["encoder_params_sha256"]
    assert params_sha256(after["batch_stats"]) == stats_hash  # Inference-mode BatchNorm.
    on_disk = json.load(open(os.path.join(workdir, "linear_probe.json")))
    assert 0.0 <= on_disk["top1"] <= on_disk["top5"] <= 1.0
    protocol = on_disk["protocol"]
    assert protocol["num_train_examples"] == 96 and protocol["num_test_examples"] == 64
    assert protocol["epochs"] == 2 and protocol["encoder"].startswith("frozen")
    assert on_disk["checkpoint_step"] == step
    assert protocol["features_from"].startswith("augmented") == bool(augmentations)


def test_knn_from_checkpoint_matches_brute_force(workdir):
    result = knn_eval.run_knn(workdir, k=7, temperature=0.2)
    config, model, variables, _ = checkpoints.load_pretrained(workdir)
    fn = common.features_fn_for_layer(model, "backbone")
    bank_x, bank_y, num_classes = common.load_labelled_split(config, "train", 160)
    query_x, query_y, _ = common.load_labelled_split(config, "test", 64)
    bank, bank_y = common.extract(config, fn, variables, bank_x, bank_y)
    queries, query_y = common.extract(config, fn, variables, query_x, query_y)
    expected = knn_eval.brute_force_knn_predict(bank, bank_y, queries, k=7, temperature=0.2,
                                                num_classes=num_classes)
    assert result["knn_top1_final"] == pytest.approx(float(np.mean(expected == query_y)))
    assert result["knn_top1_final_protocol"]["k"] == 7
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert result["knn_top1_best_over_evaluations"] == summary["knn_top1_best"]
    assert result["knn_top1_best_over_evaluations_protocol"]["num_evaluations"] == 2
    recorded = summary["knn_history"][-1]["protocol"]
    assert recorded == {"k": 5, "temperature": 0.1, "bank_split": "train", "bank_size": 160,
                        "query_split": "test", "num_queries": 64}


def test_best_over_evaluations_compares_only_evaluations_of_one_protocol(workdir, tmp_path):
    """A run resumed with another eval.knn_k: its best figure ignores the other k's evaluations."""
    copy = str(tmp_path / "resumed")
    shutil.copytree(workdir, copy)
    path = os.path.join(copy, "summary.json")
    summary = json.load(open(path))
    old = dict(summary["knn_history"][-1]["protocol"], k=50)
    summary["knn_history"] = [
        {"step": 0, "knn_top1": 0.9, "protocol": old},  # Better, but measured with k = 50.
        {"step": 1, "knn_top1": 0.3, "protocol": dict(old, k=5)},
        {"step": 2, "knn_top1": 0.4, "protocol": dict(old, k=5)}]
    json.dump(summary, open(path, "w"))
    result = knn_eval.run_knn(copy, write=False)
    best = result["knn_top1_best_over_evaluations_protocol"]
    assert result["knn_top1_best_over_evaluations"] == 0.4
    assert best["step"] == 2 and best["num_evaluations"] == 2 and best["k"] == 5
    assert len(result["knn_history"]) == 3  # The whole history stays in the result.


def test_comparable_evaluations_keep_one_protocol_and_older_entries():
    k5, k50 = {"k": 5}, {"k": 50}
    history = [{"step": 0, "protocol": k50}, {"step": 2, "protocol": k5}, {"step": 4},
               {"step": 6, "protocol": k5}]
    # Step 4 was written before evaluations recorded their protocol: comparable, as it was.
    assert [e["step"] for e in monitor.comparable_evaluations(history, history[-1])] == [2, 4, 6]
    assert [e["step"] for e in monitor.comparable_evaluations(history, history[0])] == [0, 4]
    legacy = [{"step": 0}, {"step": 2}]
    assert monitor.comparable_evaluations(legacy, legacy[-1]) == legacy


def test_figures_are_written(workdir):
    paths = figures.make_figures(workdir, num_examples=64, batch_size=32, max_anchors=8)
    for path in paths.values():
        assert os.path.getsize(path) > 1000, path
    numbers = json.load(open(os.path.join(workdir, "figures", "figures.json")))
    assert numbers["amcl"] is True and len(numbers["pos_tau"]["mean"]) == 2
    lower, upper = forms.resolve(get_default_config()).amcl.temperature_bounds
    assert all(lower <= t <= upper for t in numbers["neg_tau"]["mean"])


def test_figures_draw_each_methods_own_constant_temperature():
    from amcl_jax import recipes

    constant = lambda method: figures.constant_temperature(recipes.method_config(method, False))
    assert constant("moco") == 0.1 and constant("simclr") == 0.5  # MoCo's, not SimCLR's.
    assert constant("byol") is None  # No temperature in its loss: no line drawn.


def test_knn_mode_on_a_projection_head(workdir, capsys):
    cli.run_mode("knn", workdir, knn_k=3, feature_layer="head1")
    out = capsys.readouterr().out
    assert "kNN top-1 final" in out and "head1" in out and "best over 2" in out
    saved = json.load(open(os.path.join(workdir, "knn.json")))
    assert saved["knn_top1_final_protocol"]["feature_layer"] == "head1"


def test_main_needs_config_only_to_train(workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    missing = _runs.run_script([sys.executable, os.path.join(ROOT, "main.py"),
                                f"--workdir={workdir}"], env, 300)
    assert missing.returncode == 2 and "--config is required" in missing.stderr


def test_imagenet100_folder_is_filtered_to_the_cmc_classes(tmp_path):
    from PIL import Image

    from amcl_jax import data as data_lib
    from amcl_jax.data import imagenet_subsets

    synsets = imagenet_subsets.IMAGENET100_SYNSETS
    assert len(synsets) == len(set(synsets)) == 100
    for index, synset in enumerate(synsets + ("n01440764",)):  # The last one is not in the list.
        folder = tmp_path / "train" / synset
        folder.mkdir(parents=True)
        Image.fromarray(np.full((5, 7, 3), index, np.uint8)).save(folder / "a.JPEG")
    images, labels, num_classes = data_lib.load_split("imagenet100", "train",
                                                      data_dir=str(tmp_path), image_size=4)
    assert num_classes == 100 and images.shape == (100, 4, 4, 3)
    np.testing.assert_array_equal(labels, np.arange(100))
    assert data_lib.dataset_stats("imagenet100") == data_lib.dataset_stats("imagenet2012")
    files, file_labels, _ = data_lib.load_split("imagenet100", "train", data_dir=str(tmp_path),
                                                image_size=4, streaming=True)
    assert isinstance(files, data_lib.ImageFiles) and len(files) == 100
    np.testing.assert_array_equal(file_labels, labels)
    read = files.reader()
    np.testing.assert_array_equal(np.stack([read(i).numpy() for i in range(100)]), images)
    with pytest.raises(ValueError, match="data.streaming=True .*'val'"):
        data_lib.load_split("imagenet100", "val", data_dir=str(tmp_path), streaming=True)
