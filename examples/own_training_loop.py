"""The AMCL loss in your own optax training loop (random data; runs in seconds on a CPU).

    PYTHONPATH=. python examples/own_training_loop.py [--steps=20]   # or after pip install -e .

`amcl_jax.losses` holds pure functions of projections: `nt_xent(z_a, z_b, temperature)` (SimCLR)
and `amcl_contrastive(z_a, z_b, temperature_fn, beta=..., omega_dim=...)` (AMCL, Eq. 2.1) with
C heads, each view (C, N, D). The temperatures come from a learned network (here the authors'
pair-score map, `amcl_jax.models.PairScoreTemperature`), trained jointly with the encoder by the
same optimizer. Replace `Encoder` and `random_views` by your model and augmentations.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from amcl_jax import losses, models

NUM_HEADS, BATCH, DIM = 3, 32, 16


class Encoder(nn.Module):
    """A stand-in encoder with C projection heads: x (B, 8, 8, 3) -> (C, B, DIM)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return jnp.stack([nn.Dense(DIM, name=f"head{c}")(h) for c in range(NUM_HEADS)])


def random_views(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two noisy views of the same random images (your augmentation pipeline goes here)."""
    images_key, noise_a, noise_b = jax.random.split(key, 3)
    images = jax.random.normal(images_key, (BATCH, 8, 8, 3))
    return (images + 0.1 * jax.random.normal(noise_a, images.shape),
            images + 0.1 * jax.random.normal(noise_b, images.shape))


def main(steps: int) -> list[float]:
    encoder = Encoder()
    temperature_net = models.PairScoreTemperature(num_heads=NUM_HEADS, hidden_dim=32,
                                                  bounds=(0.05, 1.0))
    key = jax.random.PRNGKey(0)
    dummy = jnp.zeros((NUM_HEADS, 2, DIM))

    @jax.jit  # Compiled once rather than run op by op: jit whatever runs more than a few ops.
    def init(key):
        return {"encoder": encoder.init(key, jnp.zeros((2, 8, 8, 3)))["params"],
                "temperature": temperature_net.init(key, dummy, dummy)["params"]}

    params = init(key)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    def loss_fn(params, view_a, view_b):
        z_a = encoder.apply({"params": params["encoder"]}, view_a)  # (C, N, D)
        z_b = encoder.apply({"params": params["encoder"]}, view_b)
        temperature_fn = models.BoundTemperature(temperature_net, params["temperature"])
        return losses.amcl_contrastive(z_a, z_b, temperature_fn, beta=0.01, omega_dim=DIM,
                                       negatives="topk", topk=8)

    @jax.jit
    def step(params, opt_state, key):
        view_a, view_b = random_views(key)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, view_a, view_b)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    history = []
    for i in range(steps):
        params, opt_state, loss, metrics = step(params, opt_state, jax.random.fold_in(key, i))
        history.append(float(loss))
        if i % 5 == 0 or i == steps - 1:
            print(f"step {i:3d}  AMCL loss {float(loss):8.4f}  positive cosine "
                  f"{float(metrics['pos_sim']):.3f}  mean tau+ per head "
                  f"{[round(float(t), 3) for t in metrics['tau_pos_mean']]}")

    # The SimCLR baseline's loss on the first head, for comparison: one fixed temperature.
    @jax.jit
    def nt_xent_of_head_0(params, key):
        view_a, view_b = random_views(key)
        z_a = encoder.apply({"params": params["encoder"]}, view_a)
        z_b = encoder.apply({"params": params["encoder"]}, view_b)
        return losses.nt_xent(z_a[0], z_b[0], 0.2)[0]

    print(f"NT-Xent (T=0.2) of head 0 after training: "
          f"{float(nt_xent_of_head_0(params, key)):.4f}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    main(parser.parse_args().steps)
