"""Tests for amcl_jax.models: ResNets, projector and temperature net."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from amcl_jax.models import (
    BasicBlock,
    Bottleneck,
    BoundTemperature,
    MultiHeadMLP,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    TemperatureNet,
    build_encoder,
    encoder_feature_dim,
    feature_dim,
)

# ---------------------------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------------------------


def _init(model, x):
    """Variables of `model` for input `x`; jitted (one compile beats op-by-op dispatch)."""
    return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)


def _init_shapes(model, x):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


@pytest.mark.parametrize(
    ("constructor", "name", "stem", "size"),
    [
        (ResNet18, "resnet18", "cifar", 8),
        (ResNet18, "resnet18", "imagenet", 16),
        (ResNet34, "resnet34", "cifar", 8),
        (ResNet50, "resnet50", "imagenet", 16),
    ],
)
def test_resnet_output_shape_and_dtype(constructor, name, stem, size):
    model = constructor(width=0.125, stem=stem)
    x = jnp.ones((2, size, size, 3))
    # Shapes only (no compile) keeps the deeper nets cheap; one net runs for real below.
    variables = _init_shapes(model, x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (2, feature_dim(name, 0.125))
    assert out.dtype == jnp.float32
    assert model.num_features == feature_dim(name, 0.125)


def _tiny_resnet(**kwargs):
    """Two stages of one BasicBlock: every layer kind of ResNet-18 at a fraction of the cost."""
    return ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, width=0.125, **kwargs)


def test_resnet_train_updates_batch_stats():
    model = _tiny_resnet()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = _init(model, x)
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_resnet_width_changes_channels():
    x = jnp.ones((1, 8, 8, 3))
    narrow = _init_shapes(ResNet18(width=0.125), x)["params"]["conv_init"]["kernel"]
    wide = _init_shapes(ResNet18(width=0.25), x)["params"]["conv_init"]["kernel"]
    assert narrow.shape == (3, 3, 3, 8)
    assert wide.shape == (3, 3, 3, 16)
    assert feature_dim("resnet18", 0.25) == 128
    assert feature_dim("resnet50", 0.125) == 256
    assert feature_dim("resnet18", 0.001) == 8  # base channels never drop below 1


def test_resnet_bfloat16_compute_float32_params_and_features():
    model = _tiny_resnet(dtype=jnp.bfloat16)
    x = jnp.ones((2, 8, 8, 3))
    variables = _init(model, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert out.dtype == jnp.float32


def test_resnet_rejects_unknown_stem():
    with pytest.raises(ValueError, match="model.stem"):
        _init_shapes(ResNet18(width=0.125, stem="tiny"), jnp.ones((1, 8, 8, 3)))


def test_build_encoder_registry():
    model = build_encoder("resnet18", width=0.125, stem="cifar", dtype=jnp.float32)
    assert isinstance(model, ResNet) and model.stage_sizes == (2, 2, 2, 2)
    assert encoder_feature_dim("resnet50", 0.5) == 1024
    with pytest.raises(ValueError, match=r"model\.name.*resnet18"):
        build_encoder("vgg", width=1.0, stem="cifar", dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"model\.name"):
        encoder_feature_dim("vgg", 1.0)


@pytest.mark.parametrize(
    ("stage_sizes", "block_cls", "stem"),
    [((1, 1), BasicBlock, "cifar"), ((1,), Bottleneck, "imagenet")],
)
def test_cpu_fusion_barriers_keep_values_and_gradients_and_sit_where_they_should(
        stage_sizes, block_cls, stem):
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    make = lambda on: ResNet(stage_sizes=stage_sizes, block_cls=block_cls, width=0.125,
                             stem=stem, cpu_fusion_barriers=on)
    variables = _init(make(False), x)

    def loss(on, params):
        out, updates = make(on).apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, train=True, mutable=["batch_stats"])
        return jnp.sum(out**2), updates

    programs = {on: jax.jit(jax.value_and_grad(functools.partial(loss, on), has_aux=True))
                for on in (False, True)}
    (value_off, stats_off), grads_off = programs[False](variables["params"])
    (value_on, stats_on), grads_on = programs[True](variables["params"])
    np.testing.assert_allclose(value_on, value_off, rtol=1e-6)
    for on, off in zip(jax.tree.leaves((grads_on, stats_on)),
                       jax.tree.leaves((grads_off, stats_off)), strict=True):
        np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-7)

    # One conditional per barrier in the forward pass and one in the backward: after the stem and
    # on each block's inner activations (1 for a BasicBlock, 2 for a Bottleneck) and output.
    per_block = 2 if block_cls is BasicBlock else 3
    barriers = 1 + sum(stage_sizes) * per_block
    texts = {on: program.lower(variables["params"]).compile().as_text()
             for on, program in programs.items()}
    assert texts[True].count(" conditional(") == 2 * barriers
    assert texts[False].count(" conditional(") == 0
    # Evaluation (no backward pass) never gets them.
    features = jax.jit(lambda x: make(True).apply(variables, x, train=False))
    assert " conditional(" not in features.lower(x).compile().as_text()


# ---------------------------------------------------------------------------------------------
# MultiHeadMLP without BatchNorm (SimCLR's and MoCo's projector)
# ---------------------------------------------------------------------------------------------


def test_projector_params_have_head_axis_and_heads_are_independent():
    projector = MultiHeadMLP(num_heads=3, hidden_dim=16, out_dim=8, batch_norm=False)
    features = jax.random.normal(jax.random.key(0), (4, 10))
    params = jax.jit(projector.init, static_argnames="train")(
        jax.random.key(1), features, train=True)["params"]
    for leaf in jax.tree.leaves(params):
        assert leaf.shape[0] == 3

    @jax.jit
    def outputs_and_head0_grads(params):
        head0 = lambda p: jnp.sum(projector.apply({"params": p}, features, train=True)[0])
        return projector.apply({"params": params}, features, train=True), jax.grad(head0)(params)

    out, grads = outputs_and_head0_grads(params)
    assert out.shape == (3, 4, 8)
    assert out.dtype == jnp.float32
    # Same input, different params per head -> different outputs.
    assert not np.allclose(out[0], out[1])
    assert not np.allclose(params["heads"]["dense_0"]["kernel"][0],
                           params["heads"]["dense_0"]["kernel"][1])

    for leaf in jax.tree.leaves(grads):
        assert np.any(leaf[0] != 0)
        np.testing.assert_array_equal(leaf[1:], 0)


def test_projector_bfloat16_output_float32():
    projector = MultiHeadMLP(num_heads=2, hidden_dim=8, out_dim=4, num_layers=3,
                             batch_norm=False, dtype=jnp.bfloat16)
    features = jnp.ones((2, 6))
    params = projector.init(jax.random.key(0), features, train=False)["params"]
    # Names and shapes of checkpoints written before the projectors were one class.
    assert jax.tree.map(jnp.shape, params) == {"heads": {
        "dense_0": {"kernel": (2, 6, 8), "bias": (2, 8)},
        "dense_1": {"kernel": (2, 8, 8), "bias": (2, 8)},
        "dense_2": {"kernel": (2, 8, 4), "bias": (2, 4)}}}
    out = jax.jit(lambda p, x: projector.apply({"params": p}, x, train=False))(params, features)
    assert out.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# TemperatureNet
# ---------------------------------------------------------------------------------------------

C, M, D, HIDDEN = 3, 5, 4, 8


def _uv(key=0, rows_u=M, rows_v=M):
    ku, kv = jax.random.split(jax.random.key(key))
    return (jax.random.normal(ku, (C, rows_u, D)), jax.random.normal(kv, (C, rows_v, D)))


def _temperature(shared=False, bounds=(1e-5, 2.0)):
    net = TemperatureNet(num_heads=C, hidden_dim=HIDDEN, bounds=bounds, shared=shared)
    u, v = _uv()
    return net, jax.jit(net.init)(jax.random.key(2), u, v)["params"]


@pytest.mark.parametrize("shared", [False, True])
def test_temperature_shape_bounds_and_pair_grid(shared):
    net, params = _temperature(shared, bounds=(0.05, 1.0))
    u, v = _uv(3, rows_u=4, rows_v=6)

    @jax.jit
    def evaluate(temperature, u, v):
        # Every (a, b) pair through __call__: rows of u repeated, rows of v tiled.
        pairs = temperature(jnp.repeat(u, 6, axis=1), jnp.tile(v, (1, 4, 1)))
        return temperature(u, v[:, :4]), temperature.pair_grid(u, v), pairs

    tau, grid, pairs = evaluate(BoundTemperature(net, params), u, v)
    assert tau.shape == (C, 4)
    assert tau.dtype == jnp.float32
    assert np.all(tau > 0.05) and np.all(tau < 1.0)
    assert grid.shape == (C, 4, 6)
    np.testing.assert_allclose(grid, pairs.reshape(C, 4, 6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_pair_grid_gradient_equals_autodiff_of_the_per_pair_network(shared):
    """pair_grid's hand-written gradient (relu_pair_logits) = plain autodiff through __call__ on
    every (a, b) pair, for the params and both inputs."""
    net, params = _temperature(shared)
    u, v = _uv(7, rows_u=4, rows_v=6)
    weights = jax.random.normal(jax.random.key(8), (C, 4, 6))

    def via_grid(params, u, v):
        return jnp.sum(weights * jnp.log(BoundTemperature(net, params).pair_grid(u, v)))

    def via_pairs(params, u, v):
        tau = BoundTemperature(net, params)(jnp.repeat(u, 6, axis=1), jnp.tile(v, (1, 4, 1)))
        return jnp.sum(weights * jnp.log(tau.reshape(C, 4, 6)))

    got = jax.jit(jax.grad(via_grid, argnums=(0, 1, 2)))(params, u, v)
    want = jax.jit(jax.grad(via_pairs, argnums=(0, 1, 2)))(params, u, v)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-4, atol=1e-6)


def test_temperature_param_shapes_shared_vs_per_head():
    _, per_head = _temperature(shared=False)
    _, shared = _temperature(shared=True)
    assert per_head["mlp"]["first"]["kernel"].shape == (C, 2 * D, HIDDEN)
    assert per_head["mlp"]["out"]["kernel"].shape == (C, HIDDEN, 1)
    assert shared["mlp"]["first"]["kernel"].shape == (2 * D, HIDDEN)
    assert shared["mlp"]["out"]["kernel"].shape == (HIDDEN, 1)
    first = per_head["mlp"]["first"]["kernel"]
    assert not np.allclose(first[0], first[1])


@pytest.mark.parametrize("shared", [False, True])
def test_temperature_matches_numpy_reference(shared):
    net, params = _temperature(shared)
    u, v = _uv(4)
    tau = jax.jit(net.apply)({"params": params}, u, v)
    p = jax.tree.map(np.asarray, params["mlp"])
    for c in range(C):
        pick = (lambda x: x) if shared else (lambda x, c=c: x[c])
        w1, b1 = pick(p["first"]["kernel"]), pick(p["first"]["bias"])
        w2, b2 = pick(p["out"]["kernel"]), pick(p["out"]["bias"])
        pair = np.concatenate([np.asarray(u[c]), np.asarray(v[c])], axis=-1)  # (M, 2D)
        logits = (np.maximum(pair @ w1 + b1, 0) @ w2 + b2)[:, 0]
        expected = 1e-5 + (2.0 - 1e-5) / (1 + np.exp(-logits))
        np.testing.assert_allclose(tau[c], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_temperature_saturated_gradient_is_finite(scale):
    net, params = _temperature()
    params["mlp"]["out"]["kernel"] = jnp.full_like(params["mlp"]["out"]["kernel"], scale)
    params["mlp"]["first"]["bias"] = jnp.full_like(params["mlp"]["first"]["bias"], 10.0)
    u, v = _uv(5)

    def loss(params, u, v):
        tau = BoundTemperature(net, params)(u, v)
        return jnp.sum(1.0 / tau + jnp.log(tau)) + jnp.sum(
            BoundTemperature(net, params).pair_grid(u, v))

    tau = jax.jit(net.apply)({"params": params}, u, v)
    np.testing.assert_allclose(tau, 2.0 if scale > 0 else 1e-5, rtol=1e-4)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, u, v)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))


def test_temperature_rejects_bad_bounds_and_shapes():
    u, v = _uv()
    for bounds in [(0.0, 1.0), (1.0, 0.5), (-1.0, 1.0)]:
        with pytest.raises(ValueError, match="temperature_bounds"):
            jax.eval_shape(TemperatureNet(num_heads=C, bounds=bounds).init, jax.random.key(0),
                           u, v)
    with pytest.raises(ValueError, match="C=3"):
        jax.eval_shape(TemperatureNet(num_heads=C).init, jax.random.key(0), u[:2], v[:2])


def test_bound_temperature_under_lax_map_checkpoint_and_jit():
    net, params = _temperature()
    u, v = _uv(6, rows_u=4, rows_v=6)

    @jax.jit
    def chunked_grid(temperature, u, v):
        chunks = u.reshape(C, 2, 2, D).transpose(1, 0, 2, 3)  # two chunks of 2 rows
        out = lax.map(jax.checkpoint(lambda chunk: temperature.pair_grid(chunk, v)), chunks)
        return out.transpose(1, 0, 2, 3).reshape(C, 4, 6)

    temperature = BoundTemperature(net, params)
    whole_grid = jax.jit(lambda temperature, u, v: temperature.pair_grid(u, v))
    np.testing.assert_allclose(chunked_grid(temperature, u, v), whole_grid(temperature, u, v),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Per-device BatchNorm and bf16 BatchNorm heads
# ---------------------------------------------------------------------------------------------
def test_grouped_batch_norm_equals_flax_batch_norm_on_each_device_shard():
    """G groups = what G devices would see: rows [v B + g B/G, v B + (g+1) B/G) of each view v,
    normalised by their own statistics; running statistics move towards the group means."""
    import flax.linen as nn

    from amcl_jax.models import BatchNorm, make_norm

    views, batch, groups, features = 2, 8, 4, 3
    rows = batch // groups
    x = jax.random.normal(jax.random.key(0), (views * batch, 2, 2, features)) * 3 + 1
    grouped = make_norm(train=True, groups=groups, group_rows=rows)()
    assert isinstance(grouped, BatchNorm)
    variables = grouped.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda v: v + 0.5, variables)  # Non-trivial scale/bias/statistics.
    y, updated = grouped.apply(variables, x, mutable=["batch_stats"])

    reference = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    assert jax.tree.map(jnp.shape, reference.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, variables)
    expected = np.zeros(x.shape, np.float32)
    means, variances = [], []
    for g in range(groups):
        index = np.concatenate([v * batch + g * rows + np.arange(rows) for v in range(views)])
        out, stats = reference.apply(variables, x[index], mutable=["batch_stats"])
        expected[index] = out
        means.append(stats["batch_stats"]["mean"])
        variances.append(stats["batch_stats"]["var"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], np.mean(means, 0), rtol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["var"], np.mean(variances, 0), rtol=1e-6)
    # Inference mode: the running statistics, exactly as Flax's.
    inference = make_norm(train=False, groups=groups, group_rows=rows)()
    np.testing.assert_allclose(
        inference.apply(variables, x),
        nn.BatchNorm(use_running_average=True).apply(variables, x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="batch_norm_groups=4"):
        grouped.apply(variables, x[:6], mutable=["batch_stats"])
    assert make_norm(train=True, groups=1).func is nn.BatchNorm


def test_per_device_batch_norm_keeps_the_parameter_tree():
    """Checkpoints move between modes: the same variable names and shapes."""
    x = jnp.zeros((4, 8, 8, 3))
    plain = build_encoder("resnet18", width=0.125, stem="cifar", dtype=jnp.float32)
    grouped = build_encoder("resnet18", width=0.125, stem="cifar", dtype=jnp.float32,
                            batch_norm_groups=2, batch_norm_group_rows=2)
    assert jax.tree.map(jnp.shape, _init_shapes(plain, x)) == jax.tree.map(
        jnp.shape, _init_shapes(grouped, x))
    variables = _init(grouped, x)
    _, updated = jax.jit(lambda v, x: grouped.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jax.random.normal(jax.random.key(2), (8, 8, 8, 3)))
    assert jax.tree.structure(updated["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])


def test_batch_norm_mlp_heads_compute_in_bfloat16():
    head = MultiHeadMLP(num_heads=2, hidden_dim=8, out_dim=4, num_layers=3, batch_norm=True,
                        last_batch_norm=True, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (6, 5))
    variables = _init(head, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    jaxpr = str(jax.make_jaxpr(lambda v: head.apply(v, x, train=True,
                                                    mutable=["batch_stats"]))(variables))
    assert "dot_general" in jaxpr and "bf16" in jaxpr
    out, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    full = MultiHeadMLP(num_heads=2, hidden_dim=8, out_dim=4, num_layers=3, batch_norm=True,
                        last_batch_norm=True)
    reference, _ = full.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.dtype == jnp.float32 and out.shape == (2, 6, 4)
    np.testing.assert_allclose(out, reference, atol=0.1)


@pytest.mark.parametrize("name", ["resnet18", "vit_s"])
def test_remat_keeps_the_parameters_and_the_numbers(name):
    """`model.remat` recomputes activations in the backward pass: the same parameter tree (a
    checkpoint moves across the switch), features and gradients."""
    import chex

    from amcl_jax import models

    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
    width = 0.125 if name.startswith("resnet") else 0.0625
    plain = models.build_encoder(name, width=width, stem="cifar", dtype=jnp.float32,
                                 cpu_fusion_barriers=False)
    remat = models.build_encoder(name, width=width, stem="cifar", dtype=jnp.float32,
                                 cpu_fusion_barriers=False, remat=True)
    variables = jax.jit(lambda x: plain.init(jax.random.PRNGKey(1), x, train=False))(x)
    assert (jax.tree.structure(_init_shapes(remat, x)) == jax.tree.structure(variables))

    def loss(params, model):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out))

    # Jitted: remat's checkpoints dispatched op by op take far longer than one compile.
    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    value, grads = value_and_grad(variables["params"], plain)
    value_remat, grads_remat = value_and_grad(variables["params"], remat)
    np.testing.assert_allclose(value_remat, value, rtol=1e-5)
    # atol: float32 rounding of gradients up to ~10 (compiled, either program sums in its own
    # order: ~1e-6 apart on entries near 0); a remat bug moves them by far more.
    chex.assert_trees_all_close(grads_remat, grads, rtol=1e-4, atol=1e-5)
