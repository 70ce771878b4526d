"""Optimisation attempt for AMCL's cost: the loss + gradient alone, with and without the
hand-written gradient of the temperature grid's read-out (`models.temperature.relu_pair_logits`).

    python bench/loss_speed.py --output bench/results/loss_speed_cpu.json

Times jit(value_and_grad) at `--batch` per view (2N views, 3 heads of dimension 128, hidden 128)
of: NT-Xent; the AMCL loss with hard-max negatives; the log-sum-exp AMCL loss at each chunk size,
with the project's gradient and with plain autodiff of the same read-out (`autodiff`), in
interleaved rounds (median). Prediction before measuring: autodiff reduces (A, B, H) tensors over
their outer axis and stores them; two fused masked reductions should be ~2x faster overall.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from amcl_jax import losses, models  # noqa: E402
from amcl_jax.models import temperature  # noqa: E402
from bench.common import command_line, write_json  # noqa: E402
from bench.timing import seconds_of  # noqa: E402


def _autodiff_relu_pair_logits(hu, hv, w):
    """The read-out without the custom gradient (what autodiff makes of the same expression)."""
    return jnp.einsum("...abh,h->...ab", jax.nn.relu(hu[..., :, None, :] + hv[..., None, :, :]),
                      w)


def make_fns(batch: int, chunk_sizes: list[int], dim: int = 128, num_heads: int = 3):
    module = models.TemperatureNet(num_heads=num_heads, hidden_dim=128)
    probe = jnp.zeros((num_heads, 2, dim))
    params = module.init(jax.random.PRNGKey(0), probe, probe)["params"]
    z = jax.random.normal(jax.random.PRNGKey(1), (num_heads, 2 * batch, dim))

    def amcl(negatives, chunk_size):
        def fn(z, params):
            return losses.amcl_contrastive(
                z[:, :batch], z[:, batch:], models.BoundTemperature(module, params), beta=0.1,
                omega_dim=dim, negatives=negatives, chunk_size=chunk_size)[0]
        return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))

    fns = {"ntxent": (jax.jit(jax.value_and_grad(
        lambda z, params: losses.nt_xent(z[0, :batch], z[0, batch:], 0.5)[0])), False),
           "amcl_max": (amcl("max", None), False)}
    for chunk in chunk_sizes:
        fns[f"amcl_logsumexp_chunk{chunk}"] = (amcl("logsumexp", chunk), False)
        fns[f"amcl_logsumexp_chunk{chunk}_autodiff"] = (amcl("logsumexp", chunk), True)
    return fns, (z, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="images per view N")
    parser.add_argument("--chunk_sizes", default="32,128")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default="bench/results/loss_speed_cpu.json")
    args = parser.parse_args()
    fns, inputs = make_fns(args.batch, [int(c) for c in args.chunk_sizes.split(",")])
    custom = temperature.relu_pair_logits

    def run(name: str) -> float:
        fn, autodiff = fns[name]
        temperature.relu_pair_logits = _autodiff_relu_pair_logits if autodiff else custom
        try:  # Traced (once per function) with the read-out chosen here.
            return seconds_of(lambda: jax.block_until_ready(fn(*inputs)))
        finally:
            temperature.relu_pair_logits = custom

    values = {}
    for name in fns:  # Compile, and check both gradients give the same loss and gradients.
        run(name)
        values[name] = fns[name][0](*inputs)
    for name in fns:
        if name.endswith("_autodiff"):
            for got, want in zip(jax.tree.leaves(values[name]),
                                 jax.tree.leaves(values[name.removesuffix("_autodiff")]),
                                 strict=True):
                scale = float(jnp.max(jnp.abs(want))) + 1e-12
                assert float(jnp.max(jnp.abs(got - want))) / scale < 1e-3, name
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name in fns:
            times[name].append(run(name))
    medians = {name: statistics.median(t) for name, t in times.items()}
    report = {"command": command_line(__file__),
              "batch_per_view": args.batch, "load_average_at_start": list(os.getloadavg()),
              "backend": jax.default_backend(), "median_seconds": medians, "seconds": times,
              "autodiff_over_custom": {
                  name.removesuffix("_autodiff"): medians[name] / medians[
                      name.removesuffix("_autodiff")]
                  for name in fns if name.endswith("_autodiff")}}
    for name, seconds in medians.items():
        print(f"{name:40s} {seconds * 1e3:9.1f} ms")
    print("autodiff / custom: " + ", ".join(f"{k} {v:.2f}x"
                                           for k, v in report["autodiff_over_custom"].items()))
    write_json(args.output, report)


if __name__ == "__main__":
    main()
