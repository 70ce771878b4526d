"""The paper's backbone study: ResNet-50 at 1x/2x/4x and ViT-S/B/L, selectable by model.name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from amcl_jax import forms, methods, models
from amcl_jax.models.vit import auto_patch_size

FULL_SIZE_DIMS = {"resnet50": 2048, "resnet50w2": 4096, "resnet50w4": 8192, "vit_s": 384,
                  "vit_b": 768, "vit_l": 1024, "vit_s_mean": 384}


@pytest.mark.parametrize("name,size", [(n, 32) for n in FULL_SIZE_DIMS] + [("vit_b", 224)])
def test_full_size_output_shape(name, size):
    """Published widths, shapes only (jax.eval_shape: nothing is computed)."""
    encoder = models.build_encoder(name, width=1.0, stem="cifar", dtype=jnp.float32)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x, train=False), x)
    out = jax.eval_shape(lambda v, x: encoder.apply(v, x, train=False), variables, x)
    assert out.shape == (2, FULL_SIZE_DIMS[name]) and out.dtype == jnp.float32
    assert models.encoder_feature_dim(name, 1.0) == FULL_SIZE_DIMS[name]
    if name.startswith("vit"):
        tokens = (size // auto_patch_size(size)) ** 2 + (0 if name.endswith("_mean") else 1)
        assert variables["params"]["position_embedding"].shape[1] == tokens
        num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
        published = {"vit_s": 21.7e6, "vit_b": 85.8e6, "vit_l": 303.3e6}[name.removesuffix("_mean")]
        assert abs(num_params - published) / published < 0.02, num_params


def test_auto_patch_size():
    assert [auto_patch_size(s) for s in (8, 16, 32, 96, 224, 384)] == [1, 2, 4, 12, 16, 16]


# One ResNet-50 (through the 4x entry, the wide path) and two ViTs (both poolings, both depths):
# the other names differ only in width or head count, covered by the shape test above, and each
# compile here costs seconds on a CPU.
@pytest.mark.parametrize("name", ["resnet50w4", "vit_s", "vit_l_mean"])
def test_training_step(name):
    """One SimCLR SGD step at a tiny width: finite loss and gradients, the encoder moves."""
    width = 0.015625 if name == "resnet50w4" else 0.125
    config = forms.resolve(
        tiny_config(**{"model.name": name, "model.width": width, "amcl.enabled": False}))
    method = methods.get_method("simclr")
    model = method.build_model(config)
    views = jax.random.normal(jax.random.key(1), (2, 4, 8, 8, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(views[0])
    batch_stats = variables.get("batch_stats", {})

    @jax.jit
    def step(params):
        def loss_fn(params):
            out = method.apply_loss(model, config, params, batch_stats, {}, views,
                                    jax.random.key(2))
            return out.loss, out
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        features = model.apply({"params": params, "batch_stats": out.batch_stats}, views[0],
                               method="features")
        return loss, grads, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), features

    loss, grads, new_params, features = step(variables["params"])
    assert np.isfinite(loss)
    assert features.shape == (4, models.encoder_feature_dim(name, width))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert any(not np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(variables["params"]["encoder"]),
        jax.tree.leaves(new_params["encoder"]), strict=True))
