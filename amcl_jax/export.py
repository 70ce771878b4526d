"""Export a pretrained encoder for use outside this project, and load it back.

    python main.py --mode=export --workdir=W [--format=npz|msgpack|torch|safetensors]
        [--with_heads] [--step=N] [--out=PATH]

writes the encoder of W's checkpoint (newest step by default) with its BatchNorm statistics to
`PATH` (default `W/export/encoder_step<N>.<ext>`, `model_step<N>` with heads) and a description
next to it, `PATH` with `.json` instead of the extension: method, model name, width and stem,
image size, the input normalisation, step, kNN top-1 (when W's summary.json or the checkpoint's
history has it for that step), format and parameter count.

Formats:
- npz, safetensors: one array per leaf, named by its path in the Flax variables joined with "/"
  ("params/conv_init/kernel", "batch_stats/bn_init/mean"); msgpack: `flax.serialization` of
  the same nested dict. `load_encoder(path)` returns (apply_fn, variables).
- torch (ResNets only): a PyTorch `state_dict` with torchvision's names (conv1.weight,
  bn1.running_mean, layer1.0.conv1.weight, ..., layer2.0.downsample.0.weight; no fc). At width 1
  `torchvision.models.resnet18()` / `resnet34()` / `resnet50()` loads it with `strict=True` after
  `model.fc = nn.Identity()` and, for the CIFAR stem (`model.stem="cifar"`),
  `model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); model.maxpool = nn.Identity()`.
  `torchvision_resnet(description)` builds that model for any width (torchvision's classes with
  every channel count scaled) and `load_torchvision(path)` loads the file into it.

Why the torch weights give the same features: the ResNets here pad every convolution
symmetrically by k // 2 (as PyTorch does; not Flax's "SAME", which pads stride-2 convolutions
on the bottom/right only), put the stride of a Bottleneck on its 3x3 convolution (torchvision's
v1.5), and use BatchNorm epsilon 1e-5. Flax's BatchNorm momentum 0.9 is PyTorch's momentum 0.1;
one difference remains for further training only: Flax's running variance averages the biased
batch variance, PyTorch's the unbiased one. Inputs: RGB in [0, 1], then (x - mean) / std with the
description's `normalisation`; (B, H, W, 3) for JAX, (B, 3, H, W) for PyTorch.

`--with_heads` adds every other part of the model (projection heads, predictor and AMCL
temperature network where the method has them) and the run's config to the description; in npz,
msgpack and safetensors the variables are then the whole model's (the encoder under "encoder"),
`load_encoder(path, heads=True)` rebuilds it. In the torch format they are extra keys
"heads.<flax path>" in Flax layout (Dense kernels (in, out), a leading head axis): take them out
of the state_dict before `load_state_dict(..., strict=True)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from amcl_jax import nested
from amcl_jax.errors import UsageError

FORMATS = ("npz", "msgpack", "torch", "safetensors")
EXTENSIONS = {"npz": ".npz", "msgpack": ".msgpack", "torch": ".pt", "safetensors": ".safetensors"}
DESCRIPTION_VERSION = 1
HEADS_PREFIX = "heads."

# model.name -> (Flax block class name, blocks per stage, convolutions per block, width factor).
_TORCH_RESNETS = {
    "resnet18": ("BasicBlock", (2, 2, 2, 2), 2, 1),
    "resnet34": ("BasicBlock", (3, 4, 6, 3), 2, 1),
    "resnet50": ("Bottleneck", (3, 4, 6, 3), 3, 1),
    "resnet50w2": ("Bottleneck", (3, 4, 6, 3), 3, 2),
    "resnet50w4": ("Bottleneck", (3, 4, 6, 3), 3, 4),
}


# --------------------------------------------------------------------------------------------
# Flat names <-> nested variables
# --------------------------------------------------------------------------------------------
def flatten(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    """{"a/b/c": array} of a nested dict of arrays."""
    return {name: np.asarray(value) for name, value in nested.flatten(tree, "/").items()}


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """The nested dict of `flatten`'s output."""
    return nested.unflatten(flat, "/")


def num_params(params: dict[str, Any]) -> int:
    return int(sum(np.size(v) for v in flatten(params).values()))


# --------------------------------------------------------------------------------------------
# PyTorch / torchvision
# --------------------------------------------------------------------------------------------
def _check_torch_model(name: str) -> None:
    if name not in _TORCH_RESNETS:
        raise UsageError(f"--format=torch exports the ResNets only ({', '.join(_TORCH_RESNETS)}); "
                         f"this run's model.name={name!r}: use --format=npz, msgpack or "
                         "safetensors")


def base_channels(name: str, width: float) -> int:
    """Channels of the stem and first stage of ResNet `name` at `model.width` = width."""
    from amcl_jax.models.resnet import base_channels as resnet_base

    return resnet_base(_TORCH_RESNETS[name][3] * width)


def torch_state_dict(variables: dict[str, Any], *, model: str, step: int = 0
                     ) -> dict[str, np.ndarray]:
    """The encoder variables {"params", "batch_stats"} of ResNet `model` as torchvision names and
    layouts (numpy; conv kernels (kh, kw, in, out) -> (out, in, kh, kw)). fc is not included.

    `step` fills BatchNorm's `num_batches_tracked` (read by PyTorch only with momentum=None).
    """
    _check_torch_model(model)
    block, stages, convs, _ = _TORCH_RESNETS[model]
    params, stats = variables["params"], variables["batch_stats"]
    state: dict[str, np.ndarray] = {}

    def conv(target: str, source: dict) -> None:
        state[f"{target}.weight"] = np.ascontiguousarray(
            np.transpose(np.asarray(source["kernel"], np.float32), (3, 2, 0, 1)))

    def norm(target: str, source: dict, source_stats: dict) -> None:
        state[f"{target}.weight"] = np.asarray(source["scale"], np.float32)
        state[f"{target}.bias"] = np.asarray(source["bias"], np.float32)
        state[f"{target}.running_mean"] = np.asarray(source_stats["mean"], np.float32)
        state[f"{target}.running_var"] = np.asarray(source_stats["var"], np.float32)
        state[f"{target}.num_batches_tracked"] = np.asarray(step, np.int64)

    conv("conv1", params["conv_init"])
    norm("bn1", params["bn_init"], stats["bn_init"])
    index = 0
    for stage, num_blocks in enumerate(stages):
        for position in range(num_blocks):
            source, source_stats = params[f"{block}_{index}"], stats[f"{block}_{index}"]
            target = f"layer{stage + 1}.{position}"
            for i in range(convs):
                conv(f"{target}.conv{i + 1}", source[f"Conv_{i}"])
                norm(f"{target}.bn{i + 1}", source[f"BatchNorm_{i}"],
                     source_stats[f"BatchNorm_{i}"])
            if "conv_proj" in source:
                conv(f"{target}.downsample.0", source["conv_proj"])
                norm(f"{target}.downsample.1", source["norm_proj"], source_stats["norm_proj"])
            index += 1
    mapped = sum(1 for name in state if not name.endswith("num_batches_tracked"))
    total = len(flatten(params)) + len(flatten(stats))
    if mapped != total:  # Another layout than models/resnet.py's: refuse rather than drop.
        raise ValueError(f"model.name={model!r}: {total} encoder arrays but {mapped} mapped to "
                         "torchvision names; the encoder does not have the expected layout")
    return state


def torchvision_resnet(description: dict[str, Any] | str):
    """The torchvision ResNet (`torch.nn.Module`, fc = Identity) that an exported torch state_dict
    loads into with `strict=True`; `description`: the export's JSON (dict or path).

    Width 1 is `torchvision.models.resnet18/34/50()` with the stem swap of the module docstring;
    other widths rebuild the stem and the four stages with torchvision's own blocks at the
    scaled channel counts.
    """
    import torch.nn as nn
    from torchvision.models import resnet as tv

    if isinstance(description, str):
        with open(description) as f:
            description = json.load(f)
    name = description["model"]
    _check_torch_model(name)
    block_name, stages, _, _ = _TORCH_RESNETS[name]
    block = getattr(tv, block_name)
    base = int(description["base_channels"])
    model = tv.ResNet(block, list(stages))
    if base != 64:
        model.inplanes = base
        model.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        model.bn1 = nn.BatchNorm2d(base)
        model.layer1 = model._make_layer(block, base, stages[0])
        model.layer2 = model._make_layer(block, base * 2, stages[1], stride=2)
        model.layer3 = model._make_layer(block, base * 4, stages[2], stride=2)
        model.layer4 = model._make_layer(block, base * 8, stages[3], stride=2)
    if description["stem"] == "cifar":
        model.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def load_torchvision(path: str):
    """The exported torch file at `path` in `torchvision_resnet(its description)`, loaded with
    `strict=True` (any "heads." keys left out), in eval mode."""
    import torch

    description = read_description(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = torchvision_resnet(description)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(HEADS_PREFIX)},
                          strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def description_path(path: str) -> str:
    """The JSON next to an exported file: its path with `.json` instead of the extension."""
    return os.path.splitext(path)[0] + ".json"


def read_description(path: str) -> dict[str, Any]:
    """The description of the export at `path` (the weights file or its JSON)."""
    json_path = path if path.endswith(".json") else description_path(path)
    if not os.path.exists(json_path):
        raise FileNotFoundError(f"{json_path} not found: the description written next to an "
                                "export by --mode=export")
    with open(json_path) as f:
        return json.load(f)


def _output_path(workdir: str, fmt: str, out: str | None, step: int, with_heads: bool) -> str:
    extension = EXTENSIONS[fmt]
    if out is None:
        stem = "model" if with_heads else "encoder"
        return os.path.join(workdir, "export", f"{stem}_step{step}{extension}")
    if os.path.splitext(out)[1] == "":
        return out + extension
    if not out.endswith(extension):
        raise UsageError(f"--out={out!r} does not end in {extension!r}, the extension of "
                         f"--format={fmt}")
    return out


def _knn_top1(workdir: str, step: int) -> dict[str, Any]:
    """{"knn_top1", "knn_top1_source", "knn_protocol"} of the training monitor's evaluation at
    `step` (summary.json, else the checkpoint's history); values None when not known."""
    unknown = {"knn_top1": None, "knn_top1_source": None, "knn_protocol": None}
    history = []
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            history = json.load(f).get("knn_history", [])
        source = "summary.json"
    except (OSError, ValueError, AttributeError):
        source = None
    if not any(e.get("step") == step for e in history):
        try:
            import orbax.checkpoint as ocp

            from amcl_jax.checkpoints import checkpoint_manager

            manager = checkpoint_manager(workdir)
            try:
                meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                history, source = meta["meta"].get("knn", []), "checkpoint meta"
            finally:
                manager.close()
        except Exception:  # noqa: BLE001 (an older checkpoint without meta: simply unknown)
            return unknown
    entry = next((e for e in history if e.get("step") == step), None)
    if entry is None or entry.get("knn_top1") is None:
        return unknown
    return {"knn_top1": float(entry["knn_top1"]), "knn_top1_source": source,
            "knn_protocol": entry.get("protocol")}


def describe(config, *, step: int, fmt: str, with_heads: bool, encoder_params: int,
             total_params: int) -> dict[str, Any]:
    """The export's JSON description (without kNN and paths)."""
    from amcl_jax import data as data_lib
    from amcl_jax.models import encoder_feature_dim

    mean, std = data_lib.dataset_stats(config.data.dataset)
    name = config.model.name
    description = {
        "format": fmt,
        "description_version": DESCRIPTION_VERSION,
        "method": config.method,
        "amcl": bool(config.amcl.enabled),
        "model": name,
        "width": float(config.model.width),
        "stem": config.model.stem,
        "feature_dim": encoder_feature_dim(name, float(config.model.width)),
        "image_size": int(config.data.image_size),
        "dataset": config.data.dataset,
        "normalisation": {"mean": list(mean), "std": list(std),
                          "input": "RGB in [0, 1], then (x - mean) / std"},
        "step": int(step),
        "num_params": encoder_params,
        "with_heads": with_heads,
    }
    if name in _TORCH_RESNETS:
        description["base_channels"] = base_channels(name, float(config.model.width))
    if with_heads:
        description["num_params_with_heads"] = total_params
    if fmt == "torch":
        description["torch"] = (
            "torchvision ResNet state_dict, fc excluded; amcl_jax.export.load_torchvision(path) "
            "or torchvision_resnet(description) + load_state_dict(strict=True)"
            + ("; drop the 'heads.' keys (Flax layout) first" if with_heads else ""))
    return description


def export_encoder(workdir: str, *, fmt: str = "npz", with_heads: bool = False,
                   step: int | None = None, out: str | None = None) -> dict[str, Any]:
    """Writes the encoder (with heads: the whole model) of `workdir`'s checkpoint at `step`
    (newest by default) in format `fmt` and its JSON description; returns the description,
    with "path" and "description_path" added."""
    if fmt not in FORMATS:
        raise UsageError(f"--format={fmt!r} is invalid: allowed are {', '.join(FORMATS)}")
    if out is not None and out.endswith(".json"):
        raise UsageError(f"--out={out!r}: the .json name is the description's; give the weights "
                         f"file (e.g. {os.path.splitext(out)[0] + EXTENSIONS[fmt]!r})")
    if fmt == "safetensors":
        _require("safetensors", fmt)
    if fmt == "torch":
        _require("torch", fmt)
    import jax

    from amcl_jax.checkpoints import load_config, load_pretrained
    from amcl_jax.workdir import atomic_write_json, read_recorded_config

    config = load_config(workdir)
    if fmt == "torch":
        _check_torch_model(config.model.name)
    config, _, variables, step = load_pretrained(workdir, step)
    variables = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), variables)
    params, stats = variables["params"], variables.get("batch_stats", {})
    if "encoder" not in params:
        raise ValueError(f"the checkpoint of {workdir} has no 'encoder' parameters")
    encoder = {"params": params["encoder"], "batch_stats": stats.get("encoder", {})}
    path = _output_path(workdir, fmt, out, step, with_heads)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    if fmt == "torch":
        state = torch_state_dict(encoder, model=config.model.name, step=step)
        if with_heads:
            for section, tree in (("params", params), ("batch_stats", stats)):
                others = {k: v for k, v in tree.items() if k != "encoder"}
                for name, value in flatten(others).items():
                    state[f"{HEADS_PREFIX}{section}.{name.replace('/', '.')}"] = value
        _write_torch(path, state)
    else:
        _write(path, fmt, variables if with_heads else encoder)

    description = describe(config, step=step, fmt=fmt, with_heads=with_heads,
                           encoder_params=num_params(encoder["params"]),
                           total_params=num_params(params))
    description.update(_knn_top1(workdir, step))
    if with_heads:
        description["config"] = read_recorded_config(workdir)
    json_path = description_path(path)
    atomic_write_json(json_path, description)
    return dict(description, path=path, description_path=json_path)


def _require(package: str, fmt: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise UsageError(f"--format={fmt} needs the {package!r} package, which is not installed "
                         f"(pip install {package}); or use --format=npz")


def _replace_into(path: str, write: Callable[[str], None]) -> None:
    """`write(temporary path)`, then the temporary file becomes `path`: all or nothing."""
    tmp = f"{path}.tmp{os.getpid()}{os.path.splitext(path)[1]}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write(path: str, fmt: str, variables: dict[str, Any]) -> None:
    flat = flatten({"params": variables["params"],
                    "batch_stats": variables.get("batch_stats", {})})
    if fmt == "npz":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **flat)
    elif fmt == "msgpack":
        from flax import serialization

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(serialization.msgpack_serialize(unflatten(flat)))
    else:
        from safetensors.numpy import save_file

        def write(tmp: str) -> None:
            save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, tmp,
                      metadata={"producer": "amcl-jax"})
    _replace_into(path, write)


def _write_torch(path: str, state: dict[str, np.ndarray]) -> None:
    import torch

    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    _replace_into(path, lambda tmp: torch.save(tensors, tmp))


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------
def _read(path: str, fmt: str) -> dict[str, Any]:
    if fmt == "npz":
        with np.load(path) as archive:
            tree = unflatten({name: archive[name] for name in archive.files})
    elif fmt == "msgpack":
        from flax import serialization

        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    elif fmt == "safetensors":
        from safetensors.numpy import load_file

        tree = unflatten(load_file(path))
    else:
        raise UsageError(f"{path}: load_encoder reads the npz, msgpack and safetensors formats, "
                         f"not {fmt!r}; load a torch export with load_torchvision(path)")
    tree.setdefault("batch_stats", {})
    return tree


def load_encoder(path: str, *, heads: bool = False
                 ) -> tuple[Callable[[dict, Any], Any], dict[str, Any]]:
    """(apply_fn, variables) of an export written by `export_encoder` (npz, msgpack, safetensors).

    `apply_fn(variables, images)`: images (B, H, W, 3) float32, normalised with the description's
    `normalisation` -> features (B, F) float32 (inference mode: BatchNorm running statistics).
    `heads=True` (an export made with --with_heads): the whole model; apply_fn returns
    (features (B, F), projections (C, B, D)).
    """
    import jax
    import jax.numpy as jnp

    description = read_description(path)
    variables = jax.tree.map(jnp.asarray, _read(path, description["format"]))
    if heads:
        if not description.get("with_heads"):
            raise UsageError(f"{path} holds the encoder only (exported without --with_heads); "
                             "load it with heads=False")
        import ml_collections

        from amcl_jax import forms, methods

        config = forms.resolve(ml_collections.ConfigDict(description["config"]))
        model = methods.get_method(config.method).build_model(config)
        return jax.jit(lambda v, x: model.apply(v, x, train=False)), variables

    from amcl_jax import models

    if description.get("with_heads"):
        variables = {"params": variables["params"]["encoder"],
                     "batch_stats": variables["batch_stats"].get("encoder", {})}
    encoder = models.build_encoder(description["model"], width=description["width"],
                                   stem=description["stem"], dtype=jnp.float32,
                                   cpu_fusion_barriers=False)
    return jax.jit(lambda v, x: encoder.apply(v, x, train=False)), variables
