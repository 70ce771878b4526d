"""Run by test_data_parallel.py: compiles the real train step (and the feature extractor) of
a method for 1 device with a global batch of b per view and for N devices with N * b, and
prints what the compiler says, one JSON line.

    python tests/_data_parallel_worker.py cpu simclr   # one case; needs 8 CPU devices (XLA_FLAGS)
    python tests/_data_parallel_worker.py cpu          # every case, one JSON line each
    python tests/_data_parallel_worker.py features     # the feature extractor on 8 CPU devices
    python tests/_data_parallel_worker.py v5e          # v5e:1x1 against v5e:2x2, through libtpu
    python tests/_data_parallel_worker.py fsdp         # sharded against replicated parameters

A one-convolution encoder with BatchNorm (conftest.ConvEncoder, 256 channels) stands in for
ResNet-18 on CPU: what the checks read (the convolution's per-device batch, the cross-device
reductions, per-device FLOPs and memory) is the same, at half the compile time of the tests'
two-block ResNet. The v5e case compiles the real ResNet-18.
"""

import json
import sys

import jax
from conftest import register_conv_encoder, tiny_config

from amcl_jax import compile as compile_lib
from amcl_jax import forms, methods, program
from amcl_jax import hlo as hlo_lib

PER_DEVICE = 4  # Images per device per view.
CONV_ENCODER = register_conv_encoder()
# One case per method (its AMCL form where it has one: the authors' top-k losses gather the most
# across devices) and the project's form on a ViT; test_distributed.py checks both forms' numbers.
CASES = {name: (name, methods.get_method(name).supports_amcl, "authors", CONV_ENCODER)
         for name in methods.available()}
CASES["simclr_vit"] = ("simclr", True, "project", "vit_s")


def case_config(name, amcl, form, model, batch):
    size = 16 if model.startswith("vit") else 8
    config = tiny_config(**{"method": name, "amcl.enabled": amcl, "amcl.form": form,
                            "model.name": model, "batch_size": batch, "data.image_size": size,
                            "predictor.hidden_dim": 16, "moco.queue_size": 64,
                            "amcl.chunk_size": 8})
    if model.startswith("vit"):
        config.model.width = 0.0625  # vit_s at 24 channels: compiles in seconds.
    elif model == CONV_ENCODER:
        # 256 channels: the encoder's work outweighs the global negatives' similarities, which
        # grow with N (as in ResNet-18 at width 0.125; MoCo's queue at 64: 5% more FLOPs on 8).
        config.model.width = 32
    return forms.resolve(config)


def topologies(kind):
    if kind == "cpu":
        devices = jax.devices()
        return (compile_lib.Topology("cpu:1", devices[:1], None, 1),
                compile_lib.Topology(f"cpu:{len(devices)}", devices, None, 1))
    return compile_lib.get_topology(f"{kind}:1x1"), compile_lib.get_topology(f"{kind}:2x2")


def features_report(config, topology):
    """The feature extractor (kNN monitor, offline evaluations) on `topology`."""
    mesh = program.data_mesh(topology.devices)
    programs = program.build(config, mesh, 1, backend=None if topology.chip is None else "tpu")
    batch = PER_DEVICE * len(topology.devices)
    hlo = programs.features.lower(*programs.abstract_feature_inputs(batch)).compile().as_text()
    return {"encoder_images_per_device": max(hlo_lib.encoder_batch_sizes(hlo), default=None),
            "activation_collectives": hlo_lib.activation_collectives(
                hlo, config.data.image_size)}


def case_report(kind, case=None):
    """What the compiler says of one case's step on one device and on `kind`'s many."""
    one, many = topologies(kind)
    name, amcl, form, model = CASES[case] if kind == "cpu" else ("simclr", True, "authors",
                                                                 "resnet18")
    report = {"devices": len(many.devices), "case": f"{name}/amcl={amcl}"
              + (f"/{form}" if amcl else "") + f"/{model}"}
    for label, topology in (("one", one), ("many", many)):
        config = case_config(name, amcl, form, model, PER_DEVICE * len(topology.devices))
        result = compile_lib.compile_step(config, topology)
        report[label] = {
            "flops": result["per_device"]["flops"],
            "peak": result["per_device"]["memory"]["peak"],
            "encoder_images_per_device": result["encoder_images_per_device"],
            "activation_collectives": result["activation_collectives"],
            "all_reduce": result["collectives"]["all-reduce"]["count"],
        }
    return report


def main(kind, case=None):
    # Every case in one process when none is named: one interpreter start, not one per case.
    for name in ([case] if case or kind != "cpu" else CASES):
        print(json.dumps({"name": name, **case_report(kind, name)}), flush=True)


def features_main():
    many = topologies("cpu")[1]
    config = case_config("simclr", True, "authors", CONV_ENCODER,
                         PER_DEVICE * len(many.devices))
    print(json.dumps({"devices": len(many.devices), **features_report(config, many)}))


def fsdp_main():
    """One step with `model.shard_params` against replicated parameters, on every device."""
    import jax.flatten_util
    import jax.numpy as jnp
    import numpy as np

    devices = jax.devices()
    mesh = program.data_mesh(devices)
    out = {}
    for shard in (False, True):
        config = case_config("simclr", True, "project", "vit_s", PER_DEVICE * len(devices))
        config.model.width = 0.125  # Head dimension 8: big enough to be split 8 ways.
        config.model.shard_params = shard
        programs = program.build(config, mesh, 10)
        state = jax.jit(programs.init_state, out_shardings=programs.state_shardings)()
        views = jax.device_put(
            jax.random.normal(jax.random.PRNGKey(3), (2, config.batch_size, 16, 16, 3)),
            programs.views_sharding)
        labels = jax.device_put(jnp.zeros((config.batch_size,), jnp.int32),
                                programs.rows_sharding)
        compiled = programs.step.lower(*programs.abstract_step_inputs()).compile()
        state, metrics = programs.step(state, views, labels)
        out[shard] = {
            "params": jax.device_get(state.params), "loss": float(metrics["loss"]),
            "argument_bytes": compile_lib.memory(compiled)["argument"],
            "temp_bytes": compile_lib.memory(compiled)["temp"],
            "flops": compile_lib.cost(compiled)["flops"],
            "activation_collectives": hlo_lib.activation_collectives(
                compiled.as_text(), image_size=16),
            "sharded_leaves": sum(not leaf.sharding.is_fully_replicated
                                  for leaf in jax.tree.leaves(state.params)),
        }
    # Over the whole parameter vector: some leaves' gradients are zero in exact arithmetic
    # (attention key biases), so their own relative error is rounding over rounding.
    sharded, replicated = (jax.flatten_util.ravel_pytree(out[s]["params"])[0]
                           for s in (True, False))
    print(json.dumps({
        "relative_param_error": float(np.linalg.norm(sharded - replicated)
                                      / np.linalg.norm(replicated)),
        "max_param_difference": float(np.max(np.abs(sharded - replicated))),
        "loss": [out[False]["loss"], out[True]["loss"]],
        "argument_bytes": [out[False]["argument_bytes"], out[True]["argument_bytes"]],
        "sharded_leaves": [out[False]["sharded_leaves"], out[True]["sharded_leaves"]],
        "temp_bytes": [out[False]["temp_bytes"], out[True]["temp_bytes"]],
        "flops": [out[False]["flops"], out[True]["flops"]],
        "activation_collectives": out[True]["activation_collectives"],
    }))


if __name__ == "__main__":
    if sys.argv[1] == "fsdp":
        fsdp_main()
    elif sys.argv[1] == "features":
        features_main()
    else:
        main(*sys.argv[1:])
