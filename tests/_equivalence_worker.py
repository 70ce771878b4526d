"""Run by test_distributed.py with 8 CPU devices: every method's loss, gradients, BatchNorm
statistics and method state on a global batch sharded over 8 devices vs the same batch on 1.

A one-convolution encoder (conftest.ConvEncoder, 8 channels) stands in for the ResNet to keep
compilation short; it has a BatchNorm, so global statistics are checked too. Prints one JSON line.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from conftest import register_conv_encoder
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amcl_jax import forms, methods
from amcl_jax.config import get_default_config

CONV_ENCODER = register_conv_encoder()


def tiny_config(method, amcl, dtype="float32", batch_norm_groups=1, form="authors"):
    config = get_default_config()
    config.method = method
    config.amcl.enabled = amcl
    config.amcl.form = form
    config.model.name = CONV_ENCODER
    config.model.dtype = dtype
    config.model.batch_norm_groups = batch_norm_groups
    config.data.image_size = 8
    config.batch_size = 16
    config.projector.hidden_dim = 16
    config.projector.out_dim = 8
    config.predictor.hidden_dim = 16
    config.amcl.temperature_hidden_dim = 8
    config.amcl.chunk_size = 8
    config.moco.queue_size = 64
    config.barlow_twins.temperature_rank = 4
    config.total_steps = 10
    return forms.resolve(config)


def initial(config):
    """(variables, extra) of `config`'s model, made once (one program) and shared by its runs:
    8 and 1 devices, per-device BatchNorm and bfloat16 (neither changes the parameters)."""
    method = methods.get_method(config.method)
    model = method.build_model(config)

    def make(rng):
        variables = model.init(rng, jnp.zeros((2, 8, 8, 3)), train=False)
        return variables, method.init_extra(config, variables, jax.random.fold_in(rng, 1))

    return jax.device_get(jax.jit(make)(jax.random.PRNGKey(0)))


def loss_and_grads(config, devices, start):
    """(loss, metrics, grads, batch_stats, extra) of one global batch, sharded over `devices`,
    from `start` ((variables, extra): `initial(config)`)."""
    method = methods.get_method(config.method)
    model = method.build_model(config)
    rng = jax.random.PRNGKey(0)
    variables, extra = start
    views = jax.random.normal(jax.random.PRNGKey(2), (2, config.batch_size, 8, 8, 3))
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())

    def fn(params, batch_stats, extra, views):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # As train_step traces it.
            return _fn(params, batch_stats, extra, views)

    def _fn(params, batch_stats, extra, views):
        def loss_fn(p):
            out = method.apply_loss(model, config, p, batch_stats, extra, views, rng)
            return out.loss, out
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, out.metrics, grads, out.batch_stats, out.extra

    put = lambda tree: jax.device_put(tree, replicated)
    step = jax.jit(fn, in_shardings=(replicated, replicated, replicated,
                                     NamedSharding(mesh, P(None, "data"))),
                   out_shardings=replicated)
    result = step(put(variables["params"]), put(variables.get("batch_stats", {})), put(extra),
                  jax.device_put(views, NamedSharding(mesh, P(None, "data"))))
    return jax.device_get(result)


def loss_error(a, b) -> float:
    """|a - b| / max(|b|, 1): relative for large losses, absolute near zero (SimSiam's and
    BYOL's losses sit near their bounds, where a relative error is rounding over a difference)."""
    a, b = float(np.asarray(a, np.float64)), float(np.asarray(b, np.float64))
    return abs(a - b) / max(abs(b), 1.0)


def max_relative_error(a, b) -> float:
    """||a - b|| / ||b|| over the whole tree (0 for empty trees)."""
    flat = [np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)]
                           or [np.zeros(0)]) for t in (a, b)]
    return float(np.linalg.norm(flat[0] - flat[1]) / max(np.linalg.norm(flat[1]), 1e-12))


def main():
    assert jax.device_count() == 8, jax.devices()
    report = {"equivalence": {}}
    # Every method in its AMCL form where it has one (temperatures included), plain otherwise,
    # and plain SimCLR (NT-Xent).
    # The AMCL methods in both forms ("/project" marks the project's form).
    cases = [(name, methods.get_method(name).supports_amcl, "authors")
             for name in methods.available()]
    cases += [(name, True, "project") for name in methods.available()
              if methods.get_method(name).supports_amcl]
    cases.append(("simclr", False, "authors"))
    results, starts = {}, {}
    for name, amcl, form in cases:
        config = tiny_config(name, amcl, form=form)
        start = starts[name, amcl, form] = initial(config)
        eight = results[name, amcl, form] = loss_and_grads(config, jax.devices(), start)
        one = loss_and_grads(config, jax.devices()[:1], start)
        suffix = "/project" if form == "project" else ""
        report["equivalence"][f"{name}/amcl={amcl}{suffix}"] = {
            "loss": loss_error(eight[0], one[0]),
            "grads": max_relative_error(eight[2], one[2]),
            "batch_stats": max_relative_error(eight[3], one[3]),
            "extra": max_relative_error(eight[4], one[4]),
            "has_batch_stats": bool(jax.tree.leaves(eight[3])),
        }
    # Per-device BatchNorm (-1: one group per device = 8 here) on 8 devices equals the same 8
    # groups on 1 device, and differs from global statistics. SimSiam: BatchNorm in the encoder,
    # the projector and the predictor.
    report["per_device_batch_norm"] = {}
    for name, amcl in (("simclr", True), ("simsiam", True), ("moco", True)):
        start = starts[name, amcl, "authors"]
        eight = loss_and_grads(tiny_config(name, amcl, batch_norm_groups=-1), jax.devices(),
                               start)
        one = loss_and_grads(tiny_config(name, amcl, batch_norm_groups=8), jax.devices()[:1],
                             start)
        report["per_device_batch_norm"][f"{name}/amcl={amcl}"] = {
            "loss": loss_error(eight[0], one[0]),
            "grads": max_relative_error(eight[2], one[2]),
            "batch_stats": max_relative_error(eight[3], one[3]),
            "differs_from_global": max_relative_error(eight[0],
                                                      results[name, amcl, "authors"][0]),
        }
    # bfloat16: params, gradients, loss and temperatures stay float32; the loss stays close. For
    # the SimCLR heads and for the BatchNorm MLP heads of the other methods.
    # Barlow Twins also in the project's form, whose bounded temperatures (0.5, 2) do not
    # amplify bfloat16's rounding of C by up to 1 / lower as the authors' bounds can.
    report["bfloat16"] = {}
    for name, form in (("simclr", "authors"), ("simsiam", "authors"),
                       ("barlow_twins", "authors"), ("barlow_twins", "project")):
        full = results[name, True, form]  # The float32 run of the equivalence cases above.
        half = loss_and_grads(tiny_config(name, True, "bfloat16", form=form), jax.devices(),
                              starts[name, True, form])
        report["bfloat16"][f"{name}/{form}"] = {
            "loss_dtype": str(half[0].dtype),
            "grad_dtypes": sorted({str(g.dtype) for g in jax.tree.leaves(half[2])}),
            "metric_dtypes": sorted({str(np.asarray(m).dtype)
                                     for m in jax.tree.leaves(half[1])}),
            # Relative to the loss, or to 1 where the loss is a small difference of O(1) terms
            # (the authors' -s+/tau+ + mean_k s_k/tau_k, each term about s / tau ~ 1).
            "loss_relative_difference": float(abs(half[0] - full[0]) / max(abs(full[0]), 1.0)),
        }
    print(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
