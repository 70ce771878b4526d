"""amcl_jax.losses.hard_negatives: the top-k terms chunked over anchors, through both losses
that use them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amcl_jax import losses


@pytest.mark.parametrize("chunk_size", [3, 8])
def test_topk_in_chunks_equals_all_anchors_at_once(chunk_size):
    """The authors' top-k form chunked over anchors (each chunk rematerialised, for memory) gives
    the same loss, gradients and metrics as all anchors at once, for the SimCLR loss and the
    MoCo queue; a chunk size that does not divide the anchors included."""
    rng = np.random.default_rng(0)
    z_a, z_b = (jnp.asarray(rng.normal(size=(2, 10, 6)), jnp.float32) for _ in range(2))
    queue = jnp.asarray(rng.normal(size=(2, 12, 6)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)

    def temperature(u, v):  # Depends on both sides, so gathered negatives matter.
        return 0.05 + jax.nn.sigmoid(jnp.sum((u @ weights) * v, axis=-1))

    def contrastive(z_a, z_b, chunk):
        return losses.amcl_contrastive(z_a, z_b, temperature, beta=0.1, omega_dim=6.0,
                                       negatives="topk", topk=5, chunk_size=chunk)

    def queued(z_a, z_b, chunk):
        return losses.amcl_queue_contrastive(z_a, z_b, queue, temperature, beta=0.1,
                                             omega_dim=6.0, negatives="topk", topk=5,
                                             chunk_size=chunk)

    for loss_fn in (contrastive, queued):
        # Jitted: eager dispatch of the chunks' lax.map and checkpoint is slow.
        value_and_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True),
                                 static_argnums=2)
        (loss, metrics), grads = value_and_grad(z_a, z_b, None)
        (loss_c, metrics_c), grads_c = value_and_grad(z_a, z_b, chunk_size)
        np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
        for g_c, g in zip(grads_c, grads, strict=True):
            np.testing.assert_allclose(g_c, g, rtol=1e-5, atol=1e-7)
        assert metrics_c.keys() == metrics.keys()
        for key in metrics:
            np.testing.assert_allclose(metrics_c[key], metrics[key], rtol=1e-6, err_msg=key)
