"""amcl_jax.models.norm: grouped (per-device) BatchNorm against Flax's on each device's shard, and
the parameter tree it keeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import init_shapes, jit_init

from amcl_jax.models import build_encoder


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
    assert jax.tree.map(jnp.shape, init_shapes(plain, x)) == jax.tree.map(
        jnp.shape, init_shapes(grouped, x))
    variables = jit_init(grouped, x)
    _, updated = jax.jit(lambda v, x: grouped.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jax.random.normal(jax.random.key(2), (8, 8, 8, 3)))
    assert jax.tree.structure(updated["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])
