"""Encoder export (`amcl_jax/export.py`, `main.py --mode=export`): round trips through
`amcl_jax.load_encoder`, and the torch format loaded by torchvision with `strict=True` giving the
same features as the Flax model.

Nothing is trained: a workdir is written from a freshly initialised train state whose BatchNorm
parameters and statistics are made non-trivial, so a wrong mapping of any of them shows.
"""

import functools
import json
import os
import sys

import _runs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import amcl_jax
from amcl_jax import export, forms, methods, models, optim
from amcl_jax.checkpoints import Checkpointer, load_pretrained
from amcl_jax.errors import UsageError
from amcl_jax.state import create_train_state
from amcl_jax.workdir import CONFIG_FILE

STEP = 3
KNN_TOP1 = 0.625


def _import_torchvision():
    """torchvision; with a wheel built for another torch build (here: the CUDA build of
    torchvision 0.28 beside the CPU build of torch 2.13), its C ops cannot load, and torchvision
    0.28 then fails registering fake kernels for two of them. Only `torchvision.models` is used:
    declaring those two ops' schemas lets it import."""
    torch = pytest.importorskip("torch")
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_torchvision.library = library  # Kept alive: the definitions live with it.
        import torchvision
    return torchvision


def _random_like(shapes, seed: int):
    """Random values for a tree of shapes (nothing compiled): conv/dense kernels He-scaled,
    BatchNorm scale, bias, running mean and variance (> 0) non-trivial, other leaves small."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = jax.tree_util.keystr(path), tuple(leaf.shape)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(shape, leaf.dtype)
        if name.endswith("['kernel']"):
            value = rng.normal(0.0, np.sqrt(2.0 / max(1, np.prod(shape[:-1]))), shape)
        elif name.endswith(("['scale']", "['var']")):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # BatchNorm and Dense biases, running means, optimizer and method state.
            value = rng.normal(0.0, 0.2, shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _write_workdir(workdir: str, **overrides) -> None:
    """config.json, one checkpoint at STEP (with a kNN history entry) and no training."""
    config = tiny_config(**{"model.name": "resnet18", "data.image_size": 16,  # torchvision's.
                            **overrides})
    os.makedirs(workdir)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))
    config = forms.resolve(config)
    method = methods.get_method(config.method)
    model = method.build_model(config)
    tx, _ = optim.build_optimizer(config, total_steps=1)
    shapes = jax.eval_shape(lambda: create_train_state(config, model, method, tx))
    state = _random_like(shapes, 1).replace(step=jnp.asarray(STEP, jnp.int32),
                                            nonfinite_step=jnp.asarray(-1, jnp.int32))
    checkpoints = Checkpointer(config, workdir, is_chief=True)
    checkpoints.history = {"knn": [{"step": STEP, "knn_top1": KNN_TOP1}]}
    checkpoints.save(STEP, state)
    checkpoints.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "run")
    _write_workdir(path)
    return path


def _images(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(4, size, size, 3)).astype(np.float32)


@functools.cache
def _reference(workdir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, features, projections) of the checkpoint's own model, computed once."""
    _, model, variables, _ = load_pretrained(workdir)
    images = _images(16)
    features, projections = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, images)
    return images, np.asarray(features), np.asarray(projections)


def _assert_close(actual, expected):
    """Within 1e-4 of the features' scale (elementwise relative fails on ReLU zeros)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = float(np.max(np.abs(expected)))
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("fmt", ["npz", "msgpack", "safetensors"])
def test_round_trip_through_load_encoder(workdir, tmp_path, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    out = str(tmp_path / f"encoder.{'npz' if fmt == 'npz' else fmt}")
    result = export.export_encoder(workdir, fmt=fmt, out=out)
    assert result["path"] == out and os.path.exists(out)
    with open(os.path.join(tmp_path, "encoder.json")) as f:
        description = json.load(f)
    assert description["format"] == fmt and description["step"] == STEP
    assert description["method"] == "simclr" and description["model"] == "resnet18"
    assert description["width"] == 0.125 and description["stem"] == "cifar"
    assert description["image_size"] == 16 and description["feature_dim"] == 64
    assert description["knn_top1"] == KNN_TOP1
    assert len(description["normalisation"]["mean"]) == 3
    assert description["num_params"] > 0 and not description["with_heads"]

    apply_fn, variables = amcl_jax.load_encoder(out)
    assert set(variables) == {"params", "batch_stats"}
    images, expected, _ = _reference(workdir)
    features = apply_fn(variables, images)
    assert features.shape == (4, 64)
    _assert_close(features, expected)


def test_with_heads_round_trip(workdir, tmp_path):
    out = str(tmp_path / "model.msgpack")
    result = export.export_encoder(workdir, fmt="msgpack", with_heads=True, out=out)
    assert result["with_heads"] and result["num_params_with_heads"] > result["num_params"]
    assert result["config"]["method"] == "simclr"
    images, expected_features, expected_projections = _reference(workdir)
    apply_fn, variables = amcl_jax.load_encoder(out, heads=True)
    features, projections = apply_fn(variables, images)
    _assert_close(features, expected_features)
    _assert_close(projections, expected_projections)
    encoder_fn, encoder_variables = amcl_jax.load_encoder(out)  # The encoder alone, too.
    _assert_close(encoder_fn(encoder_variables, images), expected_features)


def test_torch_export_loads_in_torchvision_strictly_with_the_same_features(workdir, tmp_path):
    torchvision = _import_torchvision()
    import torch

    result = export.export_encoder(workdir, fmt="torch", out=str(tmp_path / "encoder"))
    assert result["path"].endswith("encoder.pt") and result["base_channels"] == 8
    model = torchvision_model = export.torchvision_resnet(result["description_path"])
    assert isinstance(torchvision_model, torchvision.models.ResNet)
    state = torch.load(result["path"], weights_only=True)
    assert "conv1.weight" in state and "layer2.0.downsample.0.weight" in state
    assert not any(k.startswith("fc.") for k in state)
    model.load_state_dict(state, strict=True)
    model.eval()
    images, expected, _ = _reference(workdir)
    with torch.no_grad():
        features = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    _assert_close(features, expected)
    loaded = export.load_torchvision(result["path"])  # The same in one call.
    with torch.no_grad():
        _assert_close(loaded(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy(), features)


@pytest.mark.parametrize("name,width,stem,size", [
    ("resnet18", 1.0, "cifar", 16),      # torchvision's own resnet18() + the documented swap.
    ("resnet50", 0.125, "cifar", 16),    # Bottlenecks, scaled channel counts.
    ("resnet18", 0.125, "imagenet", 32),  # 7x7 stride-2 stem and the max-pool.
])
def test_torch_state_dict_matches_torchvision(name, width, stem, size):
    _import_torchvision()
    import torch
    import torch.nn as nn
    from torchvision.models import resnet18

    encoder = models.build_encoder(name, width=width, stem=stem, dtype=jnp.float32,
                                   cpu_fusion_barriers=False)
    images = _images(size, seed=1)
    variables = _random_like(
        jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), images[:1], train=False)), 3)
    expected = np.asarray(jax.jit(lambda v, x: encoder.apply(v, x, train=False))(
        variables, images))
    state = {k: torch.from_numpy(np.array(v)) for k, v in
             export.torch_state_dict(variables, model=name, step=STEP).items()}
    if width == 1.0:  # The README's recipe, with nothing from amcl_jax.
        model = resnet18()
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = model.fc = nn.Identity()
    else:
        base = export.base_channels(name, width)
        model = export.torchvision_resnet({"model": name, "stem": stem, "base_channels": base})
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        features = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    _assert_close(features, expected)


def test_torch_export_refuses_a_vit(tmp_path):
    path = str(tmp_path / "vit")
    os.makedirs(path)
    config = tiny_config(**{"model.name": "vit_s"})
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    with pytest.raises(UsageError, match="model.name='vit_s'"):
        export.export_encoder(path, fmt="torch")


def test_bad_arguments_are_one_line_errors(workdir, tmp_path):
    with pytest.raises(UsageError, match="--format='onnx'"):
        export.export_encoder(workdir, fmt="onnx")
    with pytest.raises(UsageError, match="--out="):
        export.export_encoder(workdir, fmt="npz", out=str(tmp_path / "x.pt"))
    npz = export.export_encoder(workdir, fmt="npz", out=str(tmp_path / "e.npz"))["path"]
    with pytest.raises(UsageError, match="without --with_heads"):
        amcl_jax.load_encoder(npz, heads=True)


def test_main_export_mode(workdir, tmp_path):
    out = str(tmp_path / "cli" / "encoder.npz")
    command = [sys.executable, "main.py", "--mode=export", f"--workdir={workdir}",
               "--format=npz", f"--out={out}", f"--step={STEP}"]
    result = _runs.run_script(command, _runs.cpu_env(1), 120)
    assert result.returncode == 0, _runs.stderr_excerpt(result.stderr)
    assert out in result.stdout
    with open(export.description_path(out)) as f:
        assert json.load(f)["step"] == STEP
