"""The benchmark's parts: the PyTorch reference mirrors our model; the memory helper works."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amcl_jax import models
from bench.jax_step import loss_peak_bytes

WIDTH = 0.125  # 8 base channels: the counts still exercise every layer kind.
TEST_MODEL = "_resnet_test"  # Where ResNet-18 itself is not the subject: a third of its compile.


def _jax_num_params(width: float) -> int:
    encoder = models.build_encoder("resnet18", width=width, stem="cifar", dtype=jnp.float32)
    projector = models.MultiHeadMLP(num_heads=1, hidden_dim=512, out_dim=128, batch_norm=False)
    x = jnp.zeros((2, 32, 32, 3))
    enc = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), x, train=False))
    feats = jnp.zeros((2, models.encoder_feature_dim("resnet18", width)))
    proj = jax.eval_shape(lambda: projector.init(jax.random.PRNGKey(0), feats, train=False))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves((enc["params"], proj)))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_torch_reference_has_our_parameter_count():
    import torch

    from bench import torch_reference

    model = torch_reference.SimCLRResNet18(width=WIDTH)
    assert torch_reference.num_parameters(model) == _jax_num_params(WIDTH)
    z = model(torch.zeros(4, 3, 32, 32))
    assert z.shape == (4, 128)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_torch_nt_xent_matches_ours():
    import torch

    from amcl_jax import losses
    from bench import torch_reference

    rng = np.random.default_rng(0)
    z_a, z_b = rng.normal(size=(2, 6, 16)).astype(np.float32)
    ours = float(losses.nt_xent(jnp.asarray(z_a), jnp.asarray(z_b), 0.5)[0])
    theirs = float(torch_reference.nt_xent(torch.from_numpy(z_a), torch.from_numpy(z_b), 0.5))
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [
    {"loss": "ntxent"},
    {"loss": "amcl", "negatives": "max"},
    {"loss": "amcl", "negatives": "logsumexp", "chunk_size": 4},
    {"loss": "amcl", "negatives": "topk"},
])
def test_loss_peak_bytes_is_positive(kwargs):
    stats = loss_peak_bytes(batch_per_view=8, dim=16, **kwargs)
    assert stats["peak_bytes"] > 0
    assert stats["argument_size_in_bytes"] > 0


def _resnet18_cifar_conv_flops(batch: int, base: int, size: int) -> int:
    """Closed form: ResNet-18 with the CIFAR stem (3x3 stride 1, no max-pool), base channels."""
    flops = 2 * batch * size * size * base * 9 * 3  # stem
    cin, hw = base, size
    for stage in range(4):
        cout = base * 2**stage
        stride = 1 if stage == 0 else 2
        hw //= stride
        out = batch * hw * hw * cout
        flops += 2 * out * 9 * cin  # first conv of the first block
        flops += 3 * 2 * out * 9 * cout  # its second conv and the second block's two
        if stride != 1 or cin != cout:
            flops += 2 * out * cin  # 1x1 projection shortcut
        cin = cout
    return flops


def test_matmul_flops_of_convolutions_dots_conds_and_scans_in_closed_form():
    from bench.flops import forward_flops

    x = jnp.zeros((2, 9, 9, 6))
    w = jnp.zeros((3, 3, 3, 8))  # two feature groups of 3 input channels

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", feature_group_count=2,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    conv_flops = 2 * (2 * 5 * 5 * 8) * (3 * 3 * 3)
    assert forward_flops(conv, x, w) == conv_flops
    a, b = jnp.zeros((4, 5, 7)), jnp.zeros((4, 7, 3))
    dot_flops = 2 * 4 * 5 * 3 * 7
    assert forward_flops(jnp.matmul, a, b) == dot_flops

    def nested(x, w, a, b):
        y = jax.lax.cond(x.sum() > 0, lambda: conv(x, w).sum(), lambda: x.sum())
        z, _ = jax.lax.scan(lambda c, _: (c + jnp.matmul(a, b).sum(), None), 0.0, None,
                            length=3)
        return jax.jit(lambda y: y + z)(y)  # a nested pjit

    assert forward_flops(nested, x, w, a, b) == conv_flops + 3 * dot_flops


def test_model_flops_of_the_resnet18_simclr_step():
    from bench.flops import model_flops_per_step
    from bench.jax_step import VARIANTS, make_config

    config = make_config(batch_per_view=2, overrides=VARIANTS["simclr"], width=0.125,
                         image_size=16)
    flops = model_flops_per_step(config, batch_per_view=2)
    features = models.encoder_feature_dim("resnet18", 0.125)
    projector = 2 * 4 * (features * 512 + 512 * 128)  # one head, 4 images
    assert flops["forward"] == _resnet18_cifar_conv_flops(4, 8, 16) + projector
    assert flops["step"] == 3 * flops["forward"]


def test_nominal_peak_flops_by_device_kind():
    from types import SimpleNamespace

    from bench.flops import nominal_peak_flops

    def gpu(kind):
        return SimpleNamespace(platform="gpu", device_kind=kind)

    sxm = nominal_peak_flops("float32", gpu("NVIDIA H100 80GB HBM3"))
    assert (sxm["flops_per_second"], sxm["basis"]) == (494.7e12, "tf32")
    assert nominal_peak_flops("bfloat16", gpu("NVIDIA H100 PCIe"))["flops_per_second"] == 756e12
    assert nominal_peak_flops("bfloat16", gpu("NVIDIA H200"))["flops_per_second"] == 989.4e12
    assert nominal_peak_flops("float32", gpu("NVIDIA T4"))["flops_per_second"] is None
    assert nominal_peak_flops("float32", jax.devices("cpu")[0])["flops_per_second"] is None


def test_run_adds_utilisation_from_model_flops_and_peaks():
    from types import SimpleNamespace

    from bench.flops import model_flops_per_step
    from bench.jax_step import VARIANTS, make_config
    from bench.run import add_utilisation

    args = SimpleNamespace(model="_resnet_test", width=0.125, dtype="float32")
    steps = {"simclr": {"median_step_seconds": 2.0}}
    peak = {"nominal": {"flops_per_second": 1e12}, "measured_matmul_best_flops_per_second": 4e11}
    add_utilisation(steps, 8, peak, args)
    model_flops = model_flops_per_step(
        make_config(batch_per_view=8, overrides=VARIANTS["simclr"], model="_resnet_test",
                    width=0.125), 8)["step"]
    entry = steps["simclr"]
    assert entry["model_flops_per_step"] == model_flops
    assert entry["mfu"] == pytest.approx(model_flops / 2.0 / 1e12)
    assert entry["matmul_utilisation"] == pytest.approx(model_flops / 2.0 / 4e11)
    peak["nominal"]["flops_per_second"] = None
    assert add_utilisation(steps, 8, peak, args)["simclr"]["mfu"] is None


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_torch_reference_step_in_bfloat16_and_dtype_check():
    from bench import torch_reference

    step, _ = torch_reference.make_train_step(batch_per_view=2, width=WIDTH, image_size=8,
                                              channels_last=True, dtype="bfloat16",
                                              device="cpu")
    assert np.isfinite(step())
    with pytest.raises(ValueError, match="dtype"):
        torch_reference.make_train_step(batch_per_view=2, channels_last=False, dtype="float16")


def test_run_end_to_end_writes_ratios_utilisation_and_results_md(tmp_path):
    """`bench/run.py` in full mode at a toy scale: the JSON has every ratio, the utilisation of
    each step, and RESULTS.md links to the PNG where it was written."""
    import json
    import os

    from bench import run

    md = tmp_path / "bench" / "RESULTS.md"
    out = tmp_path / "out.json"
    run.main(["--batch_sizes", "2", "--model", "_resnet_test", "--width", "0.125",
              "--steps", "1", "--warmup", "0",
              "--jax_variants", "simclr,amcl_logsumexp", "--pipeline_seconds", "0.2",
              "--pipeline_examples", "32", "--pipeline_batch", "8", "--memory_batch", "8",
              "--memory_chunk_sizes", "4", "--default_chunk_size", "4", "--no_torch",
              "--no_loop",
              "--results_md", str(md), "--output", str(out)])
    report = json.loads(out.read_text())
    assert set(report["ratios"]) == set(run.GOALS)
    assert report["ratios"]["jax_over_torch_throughput"]["value"] is None  # --no_torch
    assert report["loop"] is None  # --no_loop (the loop has its own test)
    measured = report["peak_flops"]["measured_matmul"]["jax"]["flops_per_second"]
    assert measured > 0 and report["peak_flops"]["nominal"]["flops_per_second"] is None  # CPU
    for entry in report["steps_by_batch"]["2"].values():
        assert entry["model_flops_per_step"] > 0 and entry["mfu"] is None
        assert entry["matmul_utilisation"] == pytest.approx(
            entry["model_flops_per_step"] / entry["median_step_seconds"] / measured)
    text = md.read_text()
    assert "## Utilisation (float32)" in text
    link = text.split("![throughput vs batch](")[1].split(")")[0]
    assert link == "results/throughput_vs_batch.png" and os.path.exists(md.parent / link)


def test_loop_benchmark_times_train_and_evaluate_against_its_bare_step(tmp_path):
    """`bench/loop.py` at a toy scale: the loop really ran (its metrics.jsonl has the timed
    interval), and the ratio is the bare step's median over the loop's seconds per step."""
    import json
    import statistics

    from bench import loop

    workdir = tmp_path / "run"
    report = loop.measure_loop(batch_per_view=4, steps=2, rounds=1, width=WIDTH, num_train=40,
                               workdir=str(workdir), model=TEST_MODEL)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().split("\n")
               if line]
    assert [r["step"] for r in records] == [2, 4]
    assert report["loop_seconds_per_step"] == pytest.approx(1 / records[1]["steps_per_sec"])
    bare = statistics.median(report["bare_step_seconds_before"]
                             + report["bare_step_seconds_after"])
    assert report["loop_over_step_throughput"] == pytest.approx(
        bare / report["loop_seconds_per_step"])
    assert report["loop_images_per_second"] == pytest.approx(8 / report["loop_seconds_per_step"])
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["dataset"] == "image_folder"
    with pytest.raises(ValueError, match="no record of step 3"):
        loop.timed_interval(str(workdir / "metrics.jsonl"), 3)


def test_jax_step_without_donation_aliases_nothing_and_matches_the_donated_step():
    """The donation attempt's variant: the same update (same loss, same new state) with the
    state's buffers not aliased to the outputs; the donated step aliases the whole state."""
    from bench.jax_step import make_config, make_jax_step

    config = make_config(batch_per_view=2, overrides={"amcl.enabled": False}, model=TEST_MODEL,
                         width=WIDTH, image_size=8)
    donated, _ = make_jax_step(config)
    kept, _ = make_jax_step(config, donate=False)
    assert donated.memory_stats()["alias_size_in_bytes"] > 0
    assert kept.memory_stats()["alias_size_in_bytes"] == 0
    assert donated.last_loss() == pytest.approx(kept.last_loss(), rel=1e-6)


def test_streaming_benchmark_times_both_sources_of_the_same_images(tmp_path):
    """`bench/streaming.py` at a toy scale: both ways read the same split, the enlarged copies
    are JPEGs of the asked size, and the ratio is the two measured rates'."""
    import json

    from bench import loop, streaming

    source = loop.write_image_folder(str(tmp_path / "folder"), num_train=20, num_test=2)
    output = tmp_path / "streaming.json"
    streaming.main([f"--data_dir={source}", "--batch=8", "--seconds=0.2", "--large_size=40",
                    "--large_examples=12", "--large_batch=4", f"--output={output}"])
    report = json.loads(output.read_text())
    for scale, count in (("cifar", 20), ("imagenet_like", 12)):
        result = report[scale]
        for way in ("in_memory", "streamed"):
            assert result[way]["num_examples"] == count and result[way]["batches"] >= 1
        assert result["streamed_over_in_memory"] == pytest.approx(
            result["streamed"]["images_per_second"] / result["in_memory"]["images_per_second"])
    assert report["cifar"]["in_memory"]["bytes_held"] == 20 * 32 * 32 * 3
    assert report["imagenet_like"]["in_memory"]["bytes_held"] == 12 * 40 * 40 * 3
    assert report["imagenet_like"]["image_size"] == 224
    assert 0 < report["imagenet_like"]["mean_file_bytes"] < 40 * 40 * 3


def test_quickstart_benchmark_summarises_seeds_and_resumes(tmp_path, monkeypatch):
    """bench/quickstart.py: seeds in the outer loop, the report rewritten after every run with
    each variant's mean and sample std, and --resume skipping the runs already there."""
    import json
    import statistics

    from bench import quickstart

    calls = []

    def fake_run(args, seed, main_py):
        calls.append((tuple(args), seed))
        final = 0.8 + 0.01 * seed + (0.05 if "amcl=false" in args[0] else 0.0)
        return {"wall_seconds": 1.0, "knn_top1_init": 0.7, "knn_top1": final,
                "knn_top1_best": final}

    monkeypatch.setattr(quickstart, "run_one", fake_run)
    out = tmp_path / "qs.json"
    quickstart.main(["--seeds", "0,1,2", "--variants", "simclr,amcl_project", "--output",
                     str(out), "--set", "total_steps=2"])
    assert [seed for _, seed in calls] == [0, 0, 1, 1, 2, 2]  # Seeds outermost.
    assert all("--config.total_steps=2" in args for args, _ in calls)
    report = json.loads(out.read_text())
    simclr = report["results"]["simclr"]["summary"]["knn_top1"]
    assert simclr["mean"] == pytest.approx(0.86)
    assert simclr["std"] == pytest.approx(statistics.stdev([0.85, 0.86, 0.87]))
    assert simclr["seeds"] == 3
    calls.clear()
    quickstart.main(["--seeds", "0,1,2,3", "--variants", "simclr,amcl_project", "--output",
                     str(out), "--resume"])
    assert [seed for _, seed in calls] == [3, 3]
    report = json.loads(out.read_text())
    assert report["results"]["amcl_project"]["summary"]["knn_top1"]["seeds"] == 4
    with pytest.raises(SystemExit):
        quickstart.main(["--variants", "no_such_variant", "--output", str(out)])


def test_temperatures_figure_reads_per_head_series(tmp_path):
    import json

    from bench import temperatures

    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / "metrics.jsonl", "w") as f:
        for step, tau in ((5, 0.9), (10, 0.5)):
            f.write(json.dumps({"step": step, "loss": 1.0, "tau_pos_mean": tau,
                                "tau_pos_mean/head0": tau, "tau_pos_mean/head1": tau / 2,
                                "tau_pos_min/head0": tau / 4, "tau_neg_mean": 1.0,
                                "pos_sim": 0.5, "neg_sim": 0.1}) + "\n")
    output = tmp_path / "out" / "temps"
    temperatures.main(["--run", f"authors={workdir}", "--output", str(output)])
    assert (tmp_path / "out" / "temps.png").stat().st_size > 1000
    report = json.loads((tmp_path / "out" / "temps.json").read_text())
    summary = report["summary"]["authors"]
    assert summary["tau_pos_mean/head1"] == {"first": 0.45, "last": 0.25, "min": 0.25, "max": 0.45}
    assert "loss" not in summary
    with pytest.raises(SystemExit):
        temperatures.main(["--run", str(workdir), "--output", str(output)])
    # A run without temperatures (a method without AMCL) beside one with them, and labels and
    # folders holding "=" as reproduce's row names do.
    plain = tmp_path / "simsiam-base=x" / "seed0"
    plain.mkdir(parents=True)
    (plain / "metrics.jsonl").write_text(json.dumps({"step": 5, "pos_sim": 0.7}) + "\n")
    temperatures.main(["--run", f"amcl=1={workdir}", "--run", f"base=x={plain}",
                       "--output", str(output)])
    report = json.loads((tmp_path / "out" / "temps.json").read_text())
    assert report["runs"] == ["amcl=1", "base=x"]
    assert report["summary"]["base=x"] == {"pos_sim": {"first": 0.7, "last": 0.7, "min": 0.7,
                                                       "max": 0.7}}
