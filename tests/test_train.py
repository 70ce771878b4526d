"""End to end: the real loop on mock TFDS data and on digits, with resume."""

import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import tiny_config

from amcl_jax import checkpoints, train
from amcl_jax import state as state_lib
from amcl_jax import step as step_lib
from amcl_jax.data._tf import tf
from amcl_jax.evaluate import monitor
from amcl_jax.models import linear_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("amcl,negatives", [(True, "max"), (True, "logsumexp"), (False, "max")])
def test_end_to_end_on_mock_data_then_resume(tmp_path, amcl, negatives):
    workdir = str(tmp_path / "run")
    # The plain SimCLR case also carries the online probe through training, resume and loading.
    probe = not amcl
    # A constant learning rate: the resumed runs' longer schedules leave the compiled programs
    # as they were, so they come from the compilation cache.
    config = tiny_config(**{"amcl.enabled": amcl, "amcl.negatives": negatives,
                            "online_probe.enabled": probe, "optimizer.schedule": "constant",
                            "optimizer.warmup_steps": 0})
    with tfds.testing.mock_data(num_examples=24):
        summary = train.train_and_evaluate(config, workdir)
    assert ("online_probe_top1" in summary) is probe
    if probe:
        assert 0.0 <= summary["online_probe_top1"] <= 1.0
        assert all("online_probe_top1" in e for e in summary["knn_history"])
        # The probe's class count, -1 in the config, is the data's, and config.json records it.
        recorded = json.load(open(os.path.join(workdir, "config.json")))
        assert recorded["online_probe"]["num_classes"] == 10
    assert summary["steps"] == 4 and summary["amcl"] is amcl and summary["method"] == "simclr"
    assert summary["num_devices"] >= 1 and len(summary["params_sha256"]) == 64
    assert 0.0 <= summary["knn_top1"] <= 1.0 and summary["knn_top1_init"] is not None
    on_disk = json.load(open(os.path.join(workdir, "summary.json")))
    assert on_disk["params_sha256"] == summary["params_sha256"]
    records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == [2, 4]
    for key in ("loss", "learning_rate", "tau_pos_mean", "pos_sim", "neg_sim", "steps_per_sec"):
        assert key in records[0], key
    assert ("probe_loss" in records[0] and "probe_train_top1" in records[0]) is probe
    if amcl:
        for key in ("tau_pos_min/head0", "tau_pos_max/head2", "tau_pos_mean/head1"):
            assert key in records[0], key
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                   if d.isdigit())
    assert steps[-1] == 4
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

    # Continue the same run to 6 steps: it resumes at 4 instead of starting over.
    config.total_steps = 6
    with tfds.testing.mock_data(num_examples=24):
        resumed = train.train_and_evaluate(config, workdir)
    records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == [2, 4, 6]
    assert resumed["knn_top1_init"] == summary["knn_top1_init"]

    # The workdir alone gives back the model and its trained parameters.
    loaded_config, model, variables, step = checkpoints.load_pretrained(workdir)
    assert step == 6 and loaded_config.amcl.enabled is amcl
    assert state_lib.params_sha256(variables["params"]) == resumed["params_sha256"]
    features = jax.jit(functools.partial(model.apply, method="features"))(
        variables, np.zeros((3, 8, 8, 3), np.float32))  # One program, not one per operation.
    assert features.shape == (3, 16)  # Two stages at width 0.125: 8 * 2 channels.

    if amcl:
        return
    # Resumed with another kNN k (accepted: eval.* may change): final and best are of that k.
    config.total_steps, config.eval.knn_k = 8, 3
    with tfds.testing.mock_data(num_examples=24):
        changed = train.train_and_evaluate(config, workdir)
    assert [(e["step"], e["protocol"]["k"]) for e in changed["knn_history"]] == [
        (0, 5), (2, 5), (4, 5), (6, 5), (8, 3)]
    assert changed["knn_top1_best"] == changed["knn_top1"] == changed["knn_history"][-1]["knn_top1"]
    assert changed["knn_top1_init"] is None  # Measured with k = 5.



def test_preempted_run_resumes_to_identical_parameters(tmp_path, monkeypatch):
    config = tiny_config(**{"total_steps": 6, "checkpoint.every_steps": 100})
    with tfds.testing.mock_data(num_examples=24):
        straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

    real_iterator = train.data_lib.train_iterator

    def preempt_after_four_batches(*args, **kwargs):
        for count, batch in enumerate(real_iterator(*args, **kwargs)):
            if kwargs["start_step"] + count == 4:
                train.PREEMPTION.request()  # What the SIGTERM handler does.
            yield batch

    workdir = str(tmp_path / "preempted")
    monkeypatch.setattr(train.data_lib, "train_iterator", preempt_after_four_batches)
    with tfds.testing.mock_data(num_examples=24):
        first = train.train_and_evaluate(config, workdir)
        assert first == {"preempted": True, "steps": 5}
        monkeypatch.setattr(train.data_lib, "train_iterator", real_iterator)
        resumed = train.train_and_evaluate(config, workdir)
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert resumed["knn_top1"] == straight["knn_top1"]


def test_a_streamed_image_folder_trains_end_to_end(tmp_path, monkeypatch):
    """`data.streaming=True` reaches every split of a run as files (the pipelines' batches are
    those of the folder in memory, bit for bit: tests/test_data.py)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for name in ("a", "b"):
            os.makedirs(tmp_path / "images" / split / name)
            for k in range(count):
                pixels = rng.integers(0, 256, (10 + k, 12, 3), dtype=np.uint8)
                (tmp_path / "images" / split / name / f"{k}.png").write_bytes(
                    tf.io.encode_png(pixels).numpy())
    read = []  # The images argument of every pipeline the run builds.

    def spy_on(real):
        def spy(images, *args, **kwargs):
            read.append(images)
            return real(images, *args, **kwargs)
        return spy

    for name in ("train_iterator", "eval_iterator"):
        monkeypatch.setattr(train.data_lib, name, spy_on(getattr(train.data_lib, name)))
    # Images of different sizes: only a streamed folder can take them at their native size.
    config = tiny_config(**{"data.dataset": "image_folder", "data.streaming": True,
                            "data.data_dir": str(tmp_path / "images"), "total_steps": 2})
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["steps"] == 2 and 0.0 <= summary["knn_top1"] <= 1.0
    assert np.isfinite(_read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))[-1]["loss"])
    assert read and all(isinstance(images, train.data_lib.ImageFiles) for images in read)
    assert sorted({len(images) for images in read}) == [8, 24]  # test; train (the bank too)

    # A file that stops decoding stops the run resumed past it, naming the file; the
    # checkpoint written before stays.
    for path in (tmp_path / "images" / "train").glob("*/*.png"):
        path.write_bytes(b"damaged")
    config.total_steps = 4
    message = r"data.streaming=True: cannot decode 8 image file\(s\) of batch 2: .*\.png"
    with pytest.raises(train.data_lib.UnreadableImageError, match=message):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    checkpoint_dir = tmp_path / "run" / "checkpoints"
    assert sorted(int(d.name) for d in checkpoint_dir.iterdir() if d.name.isdigit())[-1] == 2


def test_quickstart_config_runs_on_digits(tmp_path):
    sys.path.insert(0, ROOT)
    from configs import quickstart

    config = quickstart.get_config("method=simclr,amcl=true")
    config.total_steps = 3
    config.batch_size = 32
    config.model.width = 0.125
    config.eval.every_steps = 3
    config.eval.max_bank_examples = 200
    config.eval.max_query_examples = 100
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["dataset"] == "digits" and summary["steps"] == 3
    assert summary["knn_top1_init"] > 0.15  # Random features already beat chance (0.1) on digits.


def test_online_probe_learns_separable_features_and_never_moves_the_encoder():
    """The probe alone reaches ~100% on linearly separable features (unlabelled rows ignored);
    inside train_step it changes nothing but itself: the encoder update is the same with it."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 3
    labels = rng.integers(0, 4, size=256)
    features = jnp.asarray(centers[labels] + rng.normal(size=(256, 16)) * 0.3, jnp.float32)
    labels = jnp.asarray(np.where(np.arange(256) % 8 == 0, -1, labels), jnp.int32)
    config = tiny_config(**{"online_probe.enabled": True, "online_probe.num_classes": 4})
    tx = state_lib.probe_optimizer(config, total_steps=200)
    params = state_lib.init_probe(16, 4)
    probe = {"params": params, "opt_state": tx.init(params)}
    update = jax.jit(lambda p: state_lib.probe_update(p, features, labels, tx))
    for _ in range(200):
        probe, metrics = update(probe)
    assert float(metrics["probe_train_top1"]) > 0.99
    logits = linear_classifier.logits(probe["params"], features)
    valid = np.asarray(labels) >= 0
    assert np.mean(np.argmax(logits, -1)[valid] == np.asarray(labels)[valid]) > 0.99

    from amcl_jax import forms, methods, optim
    results = {}
    for enabled in (False, True):
        config = forms.resolve(
            tiny_config(**{"online_probe.enabled": enabled, "online_probe.num_classes": 3}))
        method = methods.get_method("simclr")
        model = method.build_model(config)
        tx, schedule = optim.build_optimizer(config, 4)
        state = jax.jit(functools.partial(  # One program, not one compile per operation.
            state_lib.create_train_state, config, model, method, tx))()
        views = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 3))
        step = jax.jit(functools.partial(step_lib.train_step, model=model, method=method, tx=tx,
                                         schedule=schedule, config=config))
        results[enabled] = step(state, views, jnp.arange(8, dtype=jnp.int32) % 3)
    (plain, _), (probed, probed_metrics) = results[False], results[True]
    assert state_lib.params_sha256(plain.params) == state_lib.params_sha256(probed.params)
    assert not plain.probe and "probe_loss" in probed_metrics
    assert float(jnp.abs(probed.probe["params"]["kernel"]).sum()) > 0  # The probe did move.


class _StopAtTheInputPipeline(Exception):
    pass


def test_per_view_blur_and_solarize_reach_the_views_and_the_callers_config_is_kept(
        tmp_path, monkeypatch):
    """BYOL's asymmetric views (blur 1.0/0.1, solarize 0/0.2) reach the input pipeline, and
    train_and_evaluate writes (online_probe.num_classes, ...) only into its own copy."""
    config = tiny_config(**{"data.dataset": "digits", "data.blur_p": (1.0, 0.1),
                            "data.solarize_p": (0.0, 0.2), "online_probe.enabled": True,
                            "eval.max_bank_examples": 64, "eval.max_query_examples": 32})
    before = config.to_dict()
    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise _StopAtTheInputPipeline

    monkeypatch.setattr(train.data_lib, "train_iterator", record)
    with pytest.raises(_StopAtTheInputPipeline):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert seen["blur_p"] == (1.0, 0.1) and seen["solarize_p"] == (0.0, 0.2)
    assert config.to_dict() == before


def test_logged_metrics_are_the_mean_over_the_logging_interval(tmp_path, monkeypatch):
    """metrics.jsonl holds each interval's mean of the per-step metrics (loss k^2 at step k:
    steps 1-4 log 7.5, not 16), the learning rate of the interval's last step, and its keys."""

    def known_step(state, views, labels=None, **_):
        step = (state.step + 1).astype(jnp.float32)
        return (dataclasses.replace(state, step=state.step + 1),
                {"loss": step ** 2, "learning_rate": 0.1 * step})

    monkeypatch.setattr(step_lib, "train_step", known_step)
    config = tiny_config(**{"data.dataset": "digits", "total_steps": 6, "log_every_steps": 4,
                            "eval.every_steps": 100, "checkpoint.every_steps": 100,
                            "eval.max_bank_examples": 64, "eval.max_query_examples": 32})
    train.train_and_evaluate(config, str(tmp_path / "run"))
    records = _read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in records] == [4, 6]
    np.testing.assert_allclose(records[0]["loss"], np.mean([1, 4, 9, 16]))
    np.testing.assert_allclose(records[1]["loss"], np.mean([25, 36]))
    np.testing.assert_allclose([r["learning_rate"] for r in records], [0.4, 0.6], rtol=1e-6)
    assert set(records[0]) == {"step", "loss", "learning_rate", "steps_per_sec"}


def test_feature_extraction_reports_progress_on_large_banks(monkeypatch, capsys):
    from jax.sharding import Mesh

    config = tiny_config(**{"data.dataset": "digits", "eval.batch_size": 8})
    images = np.zeros((100, 8, 8, 3), np.uint8)
    labels = np.arange(100, dtype=np.int32) % 10
    features_fn = jax.jit(lambda variables, x: x.reshape(x.shape[0], -1))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    monitor.extract_features(features_fn, {}, images, labels, config=config, mesh=mesh)
    assert "features:" not in capsys.readouterr().out  # A small bank: quiet.
    monkeypatch.setattr(monitor, "PROGRESS_MIN_IMAGES", 100)
    features, _ = monitor.extract_features(features_fn, {}, images, labels, config=config,
                                           mesh=mesh)
    lines = [line for line in capsys.readouterr().out.splitlines() if "features:" in line]
    assert features.shape == (100, 192) and len(lines) == 10  # At each tenth.
    assert "100/100 images (100%)" in lines[-1] and "images/s" in lines[-1]
