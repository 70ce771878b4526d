"""amcl_jax.models.projector: the C-head MLP (`MultiHeadMLP`) without BatchNorm (SimCLR's and
MoCo's projector) and with BatchNorm heads in bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
from _helpers import jit_init

from amcl_jax.models import MultiHeadMLP


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


def test_batch_norm_mlp_heads_compute_in_bfloat16():
    head = MultiHeadMLP(num_heads=2, hidden_dim=8, out_dim=4, num_layers=3, batch_norm=True,
                        last_batch_norm=True, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (6, 5))
    variables = jit_init(head, x)
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
