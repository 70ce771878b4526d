"""Tests for amcl_jax.models: ResNets, the fast-wgrad conv, projector and temperature net."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from amcl_jax.models import (
    XLA_CPU_YNNPACK,
    BasicBlock,
    Bottleneck,
    BoundTemperature,
    MultiHeadProjector,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    TemperatureNet,
    build_encoder,
    conv_general_dilated_fast_wgrad,
    conv_general_dilated_per_shape,
    conv_general_dilated_xla_cpu,
    encoder_feature_dim,
    fast_conv,
    feature_dim,
    fusion_barrier,
    keep_predicate,
    select_conv,
    xla_compiler_options,
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
    model = build_encoder("resnet18", width=0.125, stem="cifar", dtype=jnp.float32,
                          conv_impl="lax")
    assert model.conv is lax.conv_general_dilated
    assert encoder_feature_dim("resnet50", 0.5) == 1024
    with pytest.raises(ValueError, match=r"model\.name.*resnet18"):
        build_encoder("vgg", width=1.0, stem="cifar", dtype=jnp.float32, conv_impl="lax")
    with pytest.raises(ValueError, match=r"model\.name"):
        encoder_feature_dim("vgg", 1.0)


# ---------------------------------------------------------------------------------------------
# fast_wgrad conv
# ---------------------------------------------------------------------------------------------

_DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [
        (3, 1, "SAME", 7),
        (3, 2, ((1, 1), (1, 1)), 9),
        (3, 2, "SAME", 8),
        (1, 2, "VALID", 7),
        (1, 1, ((0, 0), (0, 0)), 5),
        (7, 2, ((3, 3), (3, 3)), 11),
        (3, 1, ((2, 0), (1, -1)), 6),  # asymmetric and negative pads
    ],
)
def test_fast_wgrad_matches_lax(kernel, stride, padding, size):
    lhs = jax.random.normal(jax.random.key(0), (2, size, size + 2, 3))
    rhs = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4))

    def loss(conv, lhs, rhs):
        out = conv(lhs, rhs, (stride, stride), padding, dimension_numbers=_DN)
        return jnp.sum(jnp.sin(out)), out

    (ref_loss, ref_out), ref_grads = jax.value_and_grad(
        lambda a, b: loss(lax.conv_general_dilated, a, b), argnums=(0, 1), has_aux=True)(lhs, rhs)
    (fast_loss, fast_out), fast_grads = jax.value_and_grad(
        lambda a, b: loss(conv_general_dilated_fast_wgrad, a, b), argnums=(0, 1),
        has_aux=True)(lhs, rhs)
    np.testing.assert_allclose(fast_out, ref_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast_grads[0], ref_grads[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast_grads[1], ref_grads[1], rtol=1e-4, atol=1e-4)


def test_fast_wgrad_bfloat16():
    lhs = jax.random.normal(jax.random.key(0), (2, 6, 6, 3), jnp.bfloat16)
    rhs = jax.random.normal(jax.random.key(1), (3, 3, 3, 4), jnp.bfloat16)

    def grads(conv):
        loss = lambda a, b: jnp.sum(conv(a, b, (2, 2), "SAME", dimension_numbers=_DN)
                                    .astype(jnp.float32) ** 2)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(lhs, rhs)

    ref, fast = grads(lax.conv_general_dilated), grads(conv_general_dilated_fast_wgrad)
    for r, f in zip(ref, fast, strict=True):
        assert f.dtype == jnp.bfloat16
        np.testing.assert_allclose(f.astype(np.float32), r.astype(np.float32), rtol=3e-2,
                                   atol=3e-2)


def test_fast_wgrad_falls_back_for_unsupported_layouts():
    lhs = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))  # NCHW
    rhs = jax.random.normal(jax.random.key(1), (4, 3, 3, 3))  # OIHW
    for kwargs in ({}, {"rhs_dilation": (2, 2)}):

        def loss(rhs, conv, kwargs=kwargs):
            return jnp.sum(conv(lhs, rhs, (1, 1), "SAME", **kwargs) ** 2)

        ref = jax.grad(loss)(rhs, lax.conv_general_dilated)
        fast = jax.grad(loss)(rhs, conv_general_dilated_fast_wgrad)
        np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("stage_sizes", "block_cls", "stem"),
    [((1, 1), BasicBlock, "imagenet"), ((1,), Bottleneck, "cifar")],
)
def test_resnet_gradients_fast_wgrad_equal_lax(stage_sizes, block_cls, stem):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    make = lambda conv_impl: ResNet(stage_sizes=stage_sizes, block_cls=block_cls, width=0.125,
                                    stem=stem, conv=select_conv(conv_impl))
    variables = _init(make("lax"), x)

    def grads(conv_impl):
        model = make(conv_impl)

        def loss(params):
            out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                 train=True, mutable=["batch_stats"])
            return jnp.sum(out**2)

        return jax.jit(jax.grad(loss))(variables["params"])

    ref, fast = grads("lax"), grads("fast_wgrad")
    # Every conv of the model took the fast path (none fell back to the plain lax conv).
    closed = jax.make_jaxpr(lambda x: make("fast_wgrad").apply(variables, x, train=False))(x)
    primitives = [eqn.primitive.name for eqn in closed.jaxpr.eqns]
    assert "conv_general_dilated" not in primitives
    assert primitives.count("custom_vjp_call") == len(
        [path for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])
         if "kernel" in jax.tree_util.keystr(path)])
    for r, f in zip(jax.tree.leaves(ref), jax.tree.leaves(fast), strict=True):
        np.testing.assert_allclose(f, r, rtol=1e-3, atol=1e-5)


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


def test_fusion_barrier_is_the_identity_nan_included():
    x = jnp.asarray([[np.nan, -0.0, 1.5], [2.0, np.inf, -3.0]], jnp.float32)
    for value in (x, x.at[0, 0].set(0.5), x.astype(jnp.bfloat16)):
        for keep in (None, jnp.asarray(True), jnp.asarray(False)):
            got = jax.jit(fusion_barrier)(value, keep)
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(np.asarray(got, np.float32),
                                          np.asarray(value, np.float32))
    assert bool(keep_predicate(x[1])) and not bool(keep_predicate(x))
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(fusion_barrier(v) * v))(x[1]),
                                  2 * x[1])


def test_resnet_gradients_per_shape_equal_lax():
    """ResNet-18-like (imagenet stem) at 16x16: every per-shape formulation is used (Winograd on
    4x4 and 2x2, im2col on the stride-2 3x3 convs, fast_wgrad on the 7x7 stem and 1x1 shortcut)."""
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    make = lambda conv_impl: ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, width=0.125,
                                    stem="imagenet", conv=select_conv(conv_impl))
    variables = _init(make("lax"), x)

    def grads(conv_impl):
        def loss(params):
            out, _ = make(conv_impl).apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                mutable=["batch_stats"])
            return jnp.sum(out**2)

        with jax.default_matmul_precision("highest"):
            return jax.jit(jax.grad(loss))(variables["params"])

    for r, f in zip(jax.tree.leaves(grads("lax")), jax.tree.leaves(grads("per_shape")),
                    strict=True):
        np.testing.assert_allclose(f, r, rtol=1e-3, atol=1e-4)


def _sin_loss(conv, lhs, rhs, stride, padding):
    out = conv(lhs, rhs, (stride, stride), padding, dimension_numbers=_DN)
    return jnp.sum(jnp.sin(out)), out


def _assert_conv_matches_lax(conv, lhs, rhs, stride, padding) -> set[str]:
    """`conv`'s output and gradients equal lax's; returns the primitives of its jaxpr."""
    with jax.default_matmul_precision("highest"):
        (_, want_out), want = jax.value_and_grad(
            lambda a, b: _sin_loss(lax.conv_general_dilated, a, b, stride, padding),
            argnums=(0, 1), has_aux=True)(lhs, rhs)
        (_, got_out), got = jax.value_and_grad(
            lambda a, b: _sin_loss(conv, a, b, stride, padding), argnums=(0, 1),
            has_aux=True)(lhs, rhs)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-4, atol=1e-4)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    return {eqn.primitive.name for eqn in jax.make_jaxpr(
        lambda a, b: conv(a, b, (stride, stride), padding, dimension_numbers=_DN))(
            lhs, rhs).jaxpr.eqns}


@pytest.mark.parametrize(
    ("stride", "padding", "size", "formulation"),
    [
        (2, "SAME", 8, "im2col"),
        (2, ((1, 1), (1, 1)), 9, "im2col"),
        (1, ((1, 1), (1, 1)), 4, "winograd"),
        (1, "SAME", 2, "winograd"),
        (1, "SAME", 8, "fast_wgrad"),  # above WINOGRAD_MAX_PIXELS
        (1, "SAME", 3, "fast_wgrad"),  # odd
        (1, "VALID", 4, "fast_wgrad"),
    ],
)
def test_per_shape_conv_matches_lax_and_takes_the_measured_formulation(stride, padding, size,
                                                                       formulation):
    lhs = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    rhs = jax.random.normal(jax.random.key(1), (3, 3, 5, 6))
    primitives = _assert_conv_matches_lax(conv_general_dilated_per_shape, lhs, rhs, stride,
                                          padding)
    took = ("fast_wgrad" if "custom_vjp_call" in primitives else
            "lax" if "conv_general_dilated" in primitives else
            "winograd" if "concatenate" not in primitives else "im2col")
    assert took == formulation, primitives


def test_select_conv():
    assert select_conv("lax") is lax.conv_general_dilated
    assert select_conv("fast_wgrad") is conv_general_dilated_fast_wgrad
    assert select_conv("per_shape") is conv_general_dilated_per_shape
    assert select_conv("xla_cpu") is conv_general_dilated_xla_cpu
    # "auto": per_shape only where YNNPACK runs the convolutions (XLA:CPU, "jaxlib"), else lax.
    cpu = jax.default_backend() == "cpu"
    assert select_conv("auto") is lax.conv_general_dilated
    for setting in ("dot", "none"):
        assert select_conv("auto", setting) is lax.conv_general_dilated
    assert select_conv("auto", "jaxlib") is (
        conv_general_dilated_per_shape if cpu else lax.conv_general_dilated)
    with pytest.raises(ValueError, match=r"model\.conv_impl.*'auto', 'lax', 'fast_wgrad', "
                                         r"'per_shape', 'xla_cpu'"):
        select_conv("cudnn")


# ---------------------------------------------------------------------------------------------
# model.xla_cpu_ynnpack: which XLA:CPU ops YNNPACK runs
# ---------------------------------------------------------------------------------------------
def _conv_and_dot(x, w, m):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN), x.reshape(
        -1, x.shape[-1]) @ m


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
@pytest.mark.parametrize("setting,ynn_conv,ynn_dot",
                         [("jaxlib", True, True), ("dot", False, True), ("none", False, False)])
def test_xla_cpu_ynnpack_sends_convolutions_and_dots_where_it_says(setting, ynn_conv, ynn_dot):
    # YNNPACK takes convolutions from 32 channels on (jaxlib 0.10.2), dots of any size.
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
    m = jax.random.normal(jax.random.key(2), (32, 24))
    options = xla_compiler_options(setting)
    assert (options is None) == (setting == "jaxlib")
    compiled = jax.jit(_conv_and_dot, compiler_options=options).lower(x, w, m).compile()
    text = compiled.as_text()
    # An op YNNPACK runs sits inside a "ynn_fusion" computation; one XLA runs itself is a plain
    # instruction of the entry computation (the two outputs are separate, so nothing fuses them).
    entry = text[text.index("ENTRY"):]
    assert (" convolution(" not in entry) == ynn_conv, entry
    assert (" dot(" not in entry) == ynn_dot, entry
    assert ("ynn_fusion" in text) == (ynn_conv or ynn_dot)
    # Same values whichever library computes them.
    with jax.default_matmul_precision("highest"):
        want = _conv_and_dot(x, w, m)
    for got, ref in zip(compiled(x, w, m), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_xla_cpu_ynnpack_off_cpu_and_bad_values():
    assert set(XLA_CPU_YNNPACK) == {"jaxlib", "dot", "none"}
    for setting in XLA_CPU_YNNPACK:
        assert xla_compiler_options(setting, backend="gpu") is None
        assert xla_compiler_options(setting, backend="tpu") is None
    with pytest.raises(ValueError, match=r"model\.xla_cpu_ynnpack.*'jaxlib', 'dot', 'none'"):
        xla_compiler_options("eigen")


def test_an_option_this_jaxlib_rejects_is_dropped_with_a_warning(monkeypatch):
    assert not fast_conv._cpu_option_accepted("xla_cpu_experimental_ynn_fusion_type",
                                              "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE")
    monkeypatch.setattr(fast_conv, "_cpu_option_accepted", lambda name, value: False)
    assert xla_compiler_options("dot", backend="cpu") is None


# ---------------------------------------------------------------------------------------------
# MultiHeadProjector
# ---------------------------------------------------------------------------------------------


def test_projector_params_have_head_axis_and_heads_are_independent():
    projector = MultiHeadProjector(num_heads=3, hidden_dim=16, out_dim=8)
    features = jax.random.normal(jax.random.key(0), (4, 10))
    params = jax.jit(projector.init)(jax.random.key(1), features)["params"]
    for leaf in jax.tree.leaves(params):
        assert leaf.shape[0] == 3

    @jax.jit
    def outputs_and_head0_grads(params):
        head0 = lambda p: jnp.sum(projector.apply({"params": p}, features)[0])
        return projector.apply({"params": params}, features), jax.grad(head0)(params)

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
    projector = MultiHeadProjector(num_heads=2, hidden_dim=8, out_dim=4, num_layers=3,
                                   dtype=jnp.bfloat16)
    features = jnp.ones((2, 6))
    params = jax.jit(projector.init)(jax.random.key(0), features)["params"]
    assert set(params["heads"]) == {"dense_0", "dense_1", "dense_2"}
    assert jax.jit(projector.apply)({"params": params}, features).dtype == jnp.float32


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
    plain = build_encoder("resnet18", width=0.125, stem="cifar", dtype=jnp.float32,
                          conv_impl="lax")
    grouped = build_encoder("resnet18", width=0.125, stem="cifar", dtype=jnp.float32,
                            conv_impl="lax", batch_norm_groups=2, batch_norm_group_rows=2)
    assert jax.tree.map(jnp.shape, _init_shapes(plain, x)) == jax.tree.map(
        jnp.shape, _init_shapes(grouped, x))
    variables = _init(grouped, x)
    _, updated = grouped.apply(variables, jax.random.normal(jax.random.key(2), (8, 8, 8, 3)),
                               train=True, mutable=["batch_stats"])
    assert jax.tree.structure(updated["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])


def test_batch_norm_mlp_heads_compute_in_bfloat16():
    from amcl_jax.models import MultiHeadMLP

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


@pytest.mark.parametrize(
    ("size", "kernel", "cin", "stride", "padding", "formulation"),
    [
        (16, 3, 5, 2, "SAME", "phase_dgrad"),
        (17, 3, 5, 2, ((1, 1), (1, 1)), "phase_dgrad"),  # odd input
        (16, 3, 5, 2, ((0, 2), (1, 0)), "phase_dgrad"),  # uneven pads
        (16, 3, 5, 3, "VALID", "phase_dgrad"),  # stride 3: 9 phases
        (8, 3, 5, 2, "SAME", "lax"),  # below PHASE_DGRAD_MIN_PIXELS
        (9, 1, 5, 2, "VALID", "slice_dot"),
        (16, 1, 5, 2, "SAME", "slice_dot"),  # 1x1 SAME pads nothing
        (8, 3, 3, 1, "SAME", "im2col"),  # the image stem
        (8, 3, 5, 1, "SAME", "lax"),
        (8, 1, 5, 1, "VALID", "lax"),
    ],
)
def test_xla_cpu_conv_matches_lax_and_takes_its_formulation(size, kernel, cin, stride, padding,
                                                            formulation):
    lhs = jax.random.normal(jax.random.key(0), (2, size, size, cin))
    rhs = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, 6))
    primitives = _assert_conv_matches_lax(conv_general_dilated_xla_cpu, lhs, rhs, stride,
                                          padding)
    took = ("phase_dgrad" if "custom_vjp_call" in primitives else
            "lax" if "conv_general_dilated" in primitives else
            "im2col" if "concatenate" in primitives else "slice_dot")
    assert took == formulation, primitives
    if formulation == "phase_dgrad":  # the input gradient has no zero-dilated convolution
        text = jax.jit(jax.grad(lambda a: _sin_loss(
            conv_general_dilated_xla_cpu, a, rhs, stride, padding)[0])).lower(lhs).as_text()
        dilations = re.findall(r"lhs_dilate = \[(\d+), (\d+)\]", text)
        assert dilations and all(d == ("1", "1") for d in dilations), dilations
        want_text = jax.jit(jax.grad(lambda a: _sin_loss(  # lax's own transpose dilates
            lax.conv_general_dilated, a, rhs, stride, padding)[0])).lower(lhs).as_text()
        assert any(d != ("1", "1") for d in re.findall(r"lhs_dilate = \[(\d+), (\d+)\]",
                                                        want_text))
