"""Data parallelism in effect, read from the compiled program: on N devices with N times the
global batch, each device runs the encoder on its own share of every view (the same per-device
FLOPs and memory as one device with one share), and no image or feature map crosses devices.

Equal numbers on 8 devices (test_distributed.py) prove equal maths, not split work; these tests
read XLA's cost and memory analyses and the optimised HLO of the real train step, for 8 fake CPU
devices and, through libtpu, for a TPU v5e slice compiled ahead of time on this machine.
"""

import importlib.util
import json
import subprocess
import sys

import _runs
import numpy as np
import pytest

from amcl_jax import compile as compile_lib
from amcl_jax import hlo as hlo_lib
from amcl_jax import methods, sharding

WORKER = "tests/_data_parallel_worker.py"


def _worker(*args: str, devices: int = 1) -> dict:
    """The worker's last JSON line."""
    return _worker_lines(*args, devices=devices)[-1]


def _worker_lines(*args: str, devices: int = 1) -> list[dict]:
    result = _runs.run_script([sys.executable, WORKER, *args], _runs.worker_env(devices), 900)
    assert result.returncode == 0, _runs.stderr_excerpt(result.stderr)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _check_weak_scaling(report: dict) -> None:
    case, one, many = report["case"], report["one"], report["many"]
    # Each device computes its own share: the same FLOPs as one device with one share (the
    # global negatives' similarities grow with N, a small part at these sizes).
    assert many["flops"] <= 1.10 * one["flops"], (case, many["flops"] / one["flops"])
    assert many["flops"] >= 0.90 * one["flops"], (case, many["flops"] / one["flops"])
    assert many["peak"] <= 1.10 * one["peak"], (case, many["peak"] / one["peak"])
    assert not many["activation_collectives"], (case, many["activation_collectives"])
    if "vit" not in case:  # A ViT has no convolution to read the batch from; FLOPs above.
        # Both views in one pass (4 images of each), or one view per pass (the authors'
        # MoCo: queries from view 1, keys from view 2).
        per_pass = 4 if case.startswith("moco/amcl=True/authors") else 2 * 4
        assert many["encoder_images_per_device"] == one["encoder_images_per_device"], case
        assert many["encoder_images_per_device"] == per_pass, case
    assert many["all_reduce"] >= 1, case  # The gradient reduction is there.
    assert report["devices"] > 1


# Every registered method (its AMCL form where it has one: the authors' top-k losses gather the
# most across devices), and the project's form on a ViT: one worker process compiles them all.
def test_every_method_splits_its_batch_over_8_cpu_devices():
    reports = {report.pop("name"): report for report in _worker_lines("cpu", devices=8)}
    assert set(reports) == {*methods.available(), "simclr_vit"}
    for case, report in reports.items():
        assert report["devices"] == 8, case
        assert report["case"].startswith(case.removesuffix("_vit") + "/"), (case, report)
        _check_weak_scaling(report)


def test_the_feature_extractor_splits_its_batch_over_8_cpu_devices():
    # The kNN monitor's and the evaluations' feature extractor: one share per device.
    report = _worker("features", devices=8)
    assert report["devices"] == 8 and report["encoder_images_per_device"] == 4
    assert not report["activation_collectives"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu (requirements-dev.txt: jax[tpu]) is not installed")
def test_simclr_amcl_splits_its_batch_over_a_v5e_slice():
    report = _worker("v5e")
    assert report["devices"] == 4 and report["case"] == "simclr/amcl=True/authors/resnet18"
    _check_weak_scaling(report)


def test_sharded_parameters_give_the_replicated_numbers_in_less_memory():
    report = _worker("fsdp", devices=8)
    replicated, sharded = report["sharded_leaves"]
    assert replicated == 0 and sharded > 0
    assert report["argument_bytes"][1] < 0.5 * report["argument_bytes"][0]
    # ... and the work stays split: each device gathers the parameters where it uses them,
    # instead of GSPMD moving the batch to a split parameter (2.3x the FLOPs and 3.7x the
    # temporaries here before `step._whole_parameters`; ViT-L on v5e:16x16 asked for 944 GB).
    replicated_flops, sharded_flops = report["flops"]
    assert sharded_flops <= 1.05 * replicated_flops, report["flops"]
    assert report["temp_bytes"][1] <= 1.05 * report["temp_bytes"][0], report["temp_bytes"]
    assert not report["activation_collectives"], report["activation_collectives"]
    np.testing.assert_allclose(report["loss"][1], report["loss"][0], rtol=1e-6)
    assert report["relative_param_error"] < 1e-6, report
    assert report["max_param_difference"] < 1e-6, report


# --------------------------------------------------------------------------------------------
# The view stacking itself
# --------------------------------------------------------------------------------------------
def test_stack_views_is_the_plain_order_on_one_device_and_unstack_inverts_it():
    views = np.arange(3 * 8 * 2, dtype=np.float32).reshape(3, 8, 2)
    stacked = sharding.stack_views(views, num_views=3)
    np.testing.assert_array_equal(stacked, views.reshape(24, 2))
    np.testing.assert_array_equal(sharding.unstack_views(stacked, 3), views)
    with pytest.raises(ValueError, match="exactly 2 views, got 3"):
        sharding.stack_views(views)


def test_collectives_and_activation_shapes_are_read_from_hlo_text():
    hlo = "\n".join([
        "%ag = f32[2,64,32,32,3]{4,3,2,0,1} all-gather(%x), channel_id=1",
        "%ar = (f32[3,3,3,8]{3,2,1,0}, f32[8]{0}) all-reduce(%g, %h), channel_id=2",
        "%ag2 = f32[8,128]{0,1} all-gather(%z), channel_id=3",
        "%s = (f32[4,4]{1,0}, f32[16,4]{1,0}) all-gather-start(%y), channel_id=4",
        "%c = f32[32,16,16,8]{3,2,1,0} convolution(%a, %b), window={size=3x3}, "
        "dim_labels=b01f_01io->b01f, metadata={op_name=\"jvp(Model)/encoder/conv\"}",
    ])
    found = hlo_lib.collectives(hlo)
    assert found["all-gather"] == {"count": 3, "bytes": 2 * 64 * 32 * 32 * 3 * 4 + 8 * 128 * 4
                                   + 16 * 4 * 4}
    assert found["all-reduce"] == {"count": 1, "bytes": (3 * 3 * 3 * 8 + 8) * 4}
    moving = hlo_lib.activation_collectives(hlo, image_size=32)
    assert len(moving) == 1 and "f32[2,64,32,32,3]" in moving[0]  # Not the gradient reduction.
    # A feature map as the encoder's convolution makes it, gathered: found too.
    hlo += "\n%fm = f32[64,16,16,8]{3,2,1,0} all-gather(%c), channel_id=5"
    assert len(hlo_lib.activation_collectives(hlo, image_size=32)) == 2
    assert hlo_lib.encoder_batch_sizes(hlo) == [32]


def test_collectives_inside_a_loop_count_once_per_iteration():
    # A scanned stack of 12 layers (ViT's nn.scan), inside a loop of 3: each all-reduce in the
    # inner body runs 36 times a step, the one in the outer body 3 times.
    hlo = "\n".join([
        "%inner_cond (p: (s32[], f32[4])) -> pred[] {",
        "  %n = s32[]{:T(128)} constant(12)",
        "  ROOT %lt = pred[] compare(%i, %n), direction=LT",
        "}",
        "%inner_body (p: (s32[], f32[4])) -> (s32[], f32[4]) {",
        "  %ar = f32[4]{0} all-reduce(%x), channel_id=1",
        "}",
        "%outer_cond (p: (s32[], f32[4])) -> pred[] {",
        "  %m = s32[] constant(3)",
        "}",
        "%outer_body (p: (s32[], f32[4])) -> (s32[], f32[4]) {",
        "  %w = (s32[], f32[4]) while(%t), condition=%inner_cond, body=%inner_body",
        "  %ag = f32[8]{0} all-gather(%y), channel_id=2",
        "}",
        "ENTRY %main (a: f32[4]) -> f32[4] {",
        "  %w2 = (s32[], f32[4]) while(%t0), condition=%outer_cond, body=%outer_body",
        "  %ar2 = f32[2]{0} all-reduce(%z), channel_id=3",
        "}",
    ])
    found = hlo_lib.collectives(hlo)
    assert found["all-reduce"] == {"count": 36 + 1, "bytes": 36 * 16 + 8}
    assert found["all-gather"] == {"count": 3, "bytes": 3 * 32}


# --------------------------------------------------------------------------------------------
# The compile-only command
# --------------------------------------------------------------------------------------------
def _compile_command(*more: str) -> list[str]:
    return [sys.executable, "-m", "amcl_jax.compile", *_runs.TINY_FLAGS, *more]


def test_compile_command_writes_the_figures_for_fake_cpu_devices(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(_compile_command("--topology=cpu:2", f"--out={out}"),
                            cwd=_runs.ROOT, env=_runs.run_env(1), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, _runs.stderr_excerpt(result.stderr)
    record = json.loads((out / "compile.json").read_text())
    assert record["topology"] == "cpu:2" and record["devices"] == 2
    assert record["batch_per_device_per_view"] == 4
    assert record["encoder_images_per_device"] == 8  # Both views of its 4 images.
    assert not record["activation_collectives"]
    memory = record["per_device"]["memory"]
    assert set(memory) == {"argument", "temp", "output", "alias", "peak"}
    assert memory["peak"] >= memory["temp"] > 0
    assert record["per_device"]["flops"] > 0 and record["per_device"]["bytes_accessed"] > 0
    assert record["collectives"]["all-reduce"]["count"] >= 1  # The gradient reduction.
    assert record["roofline_step_seconds"] is None  # No published peak for a CPU.
    assert "convolution(" in (out / "train_step.hlo.txt").read_text()
    assert "per device:" in result.stdout


@pytest.mark.parametrize("topology, message", [
    ("v9:2x2", "--topology='v9:2x2' is not a topology"),
    ("cpu:0", "cpu:N needs a device count N >= 1"),
    ("cpu:3", "batch_size=8 is not divisible by the 3 devices"),
])
def test_compile_command_refuses_a_bad_topology_in_one_line(topology, message):
    result = subprocess.run(_compile_command(f"--topology={topology}"), cwd=_runs.ROOT,
                            env=_runs.run_env(1), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_a_step_over_the_chips_memory_is_one_line_with_the_levers():
    result = {"topology": "v5e:1x1", "global_batch_per_view": 4096,
              "batch_per_device_per_view": 4096, "model_dtype": "float32", "remat": False,
              "shard_params": False,
              "per_device": {"fits": False, "hbm_bytes": 16 * 1024**3,
                             "memory": {"peak": 40 * 1024**3, "argument": 1024**3}}}
    line = compile_lib.does_not_fit(result)
    assert "needs 40.00 GiB per device and a device has 16.00 GiB (2.5x)" in line
    assert "batch_size (now 4096" in line and "model.dtype=bfloat16" in line
    assert "model.remat=True" in line


def test_xlas_out_of_memory_refusal_becomes_one_line_with_the_levers():
    from conftest import tiny_config

    error = RuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (257.76G) exceeds available HBM (15.75G).")
    topology = compile_lib.Topology("v5e:1x1", [object()], compile_lib.CHIPS["v5e"], 1)
    line = compile_lib.out_of_memory_line(error, tiny_config(batch_size=32768), topology)
    assert line.startswith("the step does not fit on v5e:1x1: needs 257.76G of temporaries "
                           "per device and a device has 15.75G; lower batch_size (now 32768")
    assert compile_lib.out_of_memory_line(ValueError("other"), tiny_config(), topology) is None
