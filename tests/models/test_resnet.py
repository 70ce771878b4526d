"""amcl_jax.models.resnet: the ResNets' shapes, widths, dtypes and BatchNorm statistics, and the
CPU fusion barriers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import init_shapes, jit_init

from amcl_jax.models import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    feature_dim,
)


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
    variables = init_shapes(model, x)
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
    variables = jit_init(model, x)
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_resnet_width_changes_channels():
    x = jnp.ones((1, 8, 8, 3))
    narrow = init_shapes(ResNet18(width=0.125), x)["params"]["conv_init"]["kernel"]
    wide = init_shapes(ResNet18(width=0.25), x)["params"]["conv_init"]["kernel"]
    assert narrow.shape == (3, 3, 3, 8)
    assert wide.shape == (3, 3, 3, 16)
    assert feature_dim("resnet18", 0.25) == 128
    assert feature_dim("resnet50", 0.125) == 256
    assert feature_dim("resnet18", 0.001) == 8  # base channels never drop below 1


def test_resnet_bfloat16_compute_float32_params_and_features():
    model = _tiny_resnet(dtype=jnp.bfloat16)
    x = jnp.ones((2, 8, 8, 3))
    variables = jit_init(model, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert out.dtype == jnp.float32


def test_resnet_rejects_unknown_stem():
    with pytest.raises(ValueError, match="model.stem"):
        init_shapes(ResNet18(width=0.125, stem="tiny"), jnp.ones((1, 8, 8, 3)))


@pytest.mark.parametrize(
    ("stage_sizes", "block_cls", "stem"),
    [((1, 1), BasicBlock, "cifar"), ((1,), Bottleneck, "imagenet")],
)
def test_cpu_fusion_barriers_keep_values_and_gradients_and_sit_where_they_should(
        stage_sizes, block_cls, stem):
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    make = lambda on: ResNet(stage_sizes=stage_sizes, block_cls=block_cls, width=0.125,
                             stem=stem, cpu_fusion_barriers=on)
    variables = jit_init(make(False), x)

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
