"""amcl_jax.models (the encoder registry): every backbone by `model.name`, among them the paper's
backbone study (ResNet-50 at 1x/2x/4x and ViT-S/B/L), and `model.remat`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import init_shapes
from conftest import tiny_config

from amcl_jax import forms, methods, models
from amcl_jax.models import ResNet, build_encoder, encoder_feature_dim
from amcl_jax.models.vit import auto_patch_size

FULL_SIZE_DIMS = {"resnet50": 2048, "resnet50w2": 4096, "resnet50w4": 8192, "vit_s": 384,
                  "vit_b": 768, "vit_l": 1024, "vit_s_mean": 384}


def test_build_encoder_registry():
    model = build_encoder("resnet18", width=0.125, stem="cifar", dtype=jnp.float32)
    assert isinstance(model, ResNet) and model.stage_sizes == (2, 2, 2, 2)
    assert encoder_feature_dim("resnet50", 0.5) == 1024
    with pytest.raises(ValueError, match=r"model\.name.*resnet18"):
        build_encoder("vgg", width=1.0, stem="cifar", dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"model\.name"):
        encoder_feature_dim("vgg", 1.0)


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
    assert (jax.tree.structure(init_shapes(remat, x)) == jax.tree.structure(variables))

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
