"""Optimisation attempt for the CPU train step: BatchNorm formulated with fewer reduction passes.

    python bench/bn_attempts.py --output bench/results/bn_attempts_cpu.json

The step's profile by thunk kind (`bench/profile_step.py`) puts 0.58 s of the 3.5 s ResNet-18
step in `wrapped_reduce-window` thunks: XLA:CPU turns every large reduction of the BatchNorms
(mean and mean of squares forward, sum of dy and of dy * x_hat backward) into a reduce-window
followed by a reduce. Prediction: a custom-VJP BatchNorm whose forward takes (sum x, sum x^2) in
ONE variadic reduction and whose backward takes (sum dy, sum dy * x_hat) in one more reads each
activation once per pass instead of twice and saves a good part of that time.

Times jit(value and gradient) of sum(relu(BN(x)) * g) w.r.t. (x, scale, bias), training mode,
for the BatchNorm shapes of the ResNet-18 CIFAR step at `--batch` rows (two views of 64), and
checks each formulation against a float64 NumPy reference (forward and closed-form gradients):

- `flax`: `flax.linen.BatchNorm`, the project's BatchNorm (autodiff gradient);
- `variadic`: custom VJP, each pair of sums in one variadic `lax.reduce` over the rows;
- `two_stage`: custom VJP, each pair of sums in one variadic reduction to `--partials` partial
  sums per channel, then a sum over those (the accuracy of XLA's own two-stage reduction);
- `dot`: custom VJP, the sums as one matmul ones(M) @ [x, x^2] (M, 2C);
- `dot_separate`: custom VJP, each sum its own matrix-vector product ones(M) @ x (M, C), without
  the concatenation's copy (XLA:CPU's column sums over (M, C) run at a fraction of the memory
  bandwidth, 16 ms for one 32x32x64 activation of 128 images where NumPy takes 3 ms);
- `dot_blocked`: as `dot_separate` through ones(8, M) @ x, a matrix product whose kernel sums in
  blocks (more accurate), of which the first row is kept.

`per_step_seconds` weighs each shape by the number of BatchNorms of that shape in ResNet-18
(a lower bound on their cost in the step: XLA fuses parts of them into their neighbours).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from bench.common import command_line, write_json  # noqa: E402
from bench.timing import time_calls  # noqa: E402

EPSILON = 1e-5
# (height = width, channels) -> BatchNorms of that shape in ResNet-18 with the CIFAR stem: the
# stem and stage 1 (1 + 4), then per stage its 4 block BatchNorms and the projection's.
RESNET18_BATCH_NORMS = {(32, 64): 5, (16, 128): 5, (8, 256): 5, (4, 512): 5}


def flax_batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """`flax.linen.BatchNorm` in training mode with the given scale and bias."""
    features = x.shape[-1]
    variables = {"params": {"scale": scale, "bias": bias},
                 "batch_stats": {"mean": jnp.zeros(features), "var": jnp.ones(features)}}
    y, _ = nn.BatchNorm(use_running_average=False).apply(variables, x, mutable=["batch_stats"])
    return y


def _variadic_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum a, sum b) over all but the last axis, in one reduction."""
    return lax.reduce((a, b), (jnp.float32(0), jnp.float32(0)),
                      lambda p, q: (p[0] + q[0], p[1] + q[1]), tuple(range(a.ndim - 1)))


def _two_stage_sums(a: jax.Array, b: jax.Array, partials: int = 64
                    ) -> tuple[jax.Array, jax.Array]:
    """As `_variadic_sums`, through `partials` partial sums per channel (pairwise accuracy)."""
    channels = a.shape[-1]
    rows = a.size // channels
    parts = partials if rows % partials == 0 else 1
    shape = (parts, rows // parts, channels)
    sum_a, sum_b = lax.reduce((a.reshape(shape), b.reshape(shape)),
                              (jnp.float32(0), jnp.float32(0)),
                              lambda p, q: (p[0] + q[0], p[1] + q[1]), (1,))
    return sum_a.sum(0), sum_b.sum(0)


def _dot_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """As `_variadic_sums`, as one matmul ones(M) @ [a, b] (M, 2C)."""
    channels = a.shape[-1]
    both = jnp.concatenate([a.reshape(-1, channels), b.reshape(-1, channels)], axis=1)
    sums = jnp.ones((both.shape[0],), both.dtype) @ both
    return sums[:channels], sums[channels:]


def _dot_separate_sums(a: jax.Array, b: jax.Array, rows_of_ones: int = 0
                       ) -> tuple[jax.Array, jax.Array]:
    """As `_variadic_sums`, as two matrix-vector products ones(M) @ a and ones(M) @ b, or with
    `rows_of_ones` > 0 two matrix products ones(rows_of_ones, M) @ a (first row kept)."""
    channels = a.shape[-1]
    rows = a.size // channels
    ones = jnp.ones((rows_of_ones, rows) if rows_of_ones else (rows,), a.dtype)

    def column_sums(v: jax.Array) -> jax.Array:
        out = ones @ v.reshape(rows, channels)
        return out[0] if rows_of_ones else out

    return column_sums(a), column_sums(b)


def custom_vjp_batch_norm(sums: Callable) -> Callable:
    """Training-mode BatchNorm (Flax's statistics: var = max(E[x^2] - E[x]^2, 0)) whose forward
    and backward each take their two per-channel sums with `sums(a, b)`."""

    def forward(x, scale, bias):
        rows = x.size // x.shape[-1]
        sum_x, sum_squares = sums(x, x * x)
        mean = sum_x / rows
        var = jnp.maximum(sum_squares / rows - mean * mean, 0.0)
        inv_std = lax.rsqrt(var + EPSILON)
        return (x - mean) * (inv_std * scale) + bias, (x, mean, inv_std, scale)

    def backward(residuals, dy):
        x, mean, inv_std, scale = residuals
        rows = x.size // x.shape[-1]
        x_hat = (x - mean) * inv_std
        sum_dy, sum_dy_x_hat = sums(dy, dy * x_hat)
        dx = (scale * inv_std) * (dy - sum_dy / rows - x_hat * (sum_dy_x_hat / rows))
        return dx, sum_dy_x_hat, sum_dy

    @jax.custom_vjp
    def batch_norm(x, scale, bias):
        return forward(x, scale, bias)[0]

    batch_norm.defvjp(forward, backward)
    return batch_norm


VARIANTS: dict[str, Callable] = {
    "flax": flax_batch_norm,
    "variadic": custom_vjp_batch_norm(_variadic_sums),
    "two_stage": custom_vjp_batch_norm(_two_stage_sums),
    "dot": custom_vjp_batch_norm(_dot_sums),
    "dot_separate": custom_vjp_batch_norm(_dot_separate_sums),
    "dot_blocked": custom_vjp_batch_norm(lambda a, b: _dot_separate_sums(a, b, rows_of_ones=8)),
}


def reference(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, g: np.ndarray
              ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """float64 NumPy: loss = sum(relu(BN(x)) * g) and its gradients (dx, dscale, dbias) in closed
    form (biased variance, as in training)."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    g = g.astype(np.float64).reshape(x.shape)
    mean = x.mean(0)
    inv_std = 1.0 / np.sqrt(x.var(0) + EPSILON)
    x_hat = (x - mean) * inv_std
    y = x_hat * scale + bias
    dy = g * (y > 0)
    dbias = dy.sum(0)
    dscale = (dy * x_hat).sum(0)
    dx = scale * inv_std * (dy - dy.mean(0) - x_hat * (dy * x_hat).mean(0))
    return float((np.maximum(y, 0) * g).sum()), dx, dscale, dbias


def value_and_grads(batch_norm: Callable) -> Callable:
    def loss(x, scale, bias, g):
        return jnp.sum(nn.relu(batch_norm(x, scale, bias)) * g)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def max_relative_errors(out, expected) -> dict[str, float]:
    """max |ours - reference| / max |reference| for the loss and each gradient."""
    (value, (dx, dscale, dbias)) = out
    names = ("loss", "dx", "dscale", "dbias")
    ours = (value, dx, dscale, dbias)
    return {name: float(np.max(np.abs(np.asarray(a, np.float64).reshape(np.shape(b)) - b))
                        / max(float(np.max(np.abs(b))), 1e-30))
            for name, a, b in zip(names, ours, expected, strict=True)}


def measure(batch: int, rounds: int, variants: list[str]) -> dict:
    rng = np.random.default_rng(0)
    shapes = {}
    for (size, channels), count in RESNET18_BATCH_NORMS.items():
        # Off-centre activations (mean 1, std 2), as after a convolution: the sums are large.
        x = (rng.normal(size=(batch, size, size, channels)) * 2 + 1).astype(np.float32)
        g = rng.normal(size=x.shape).astype(np.float32)
        scale = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        bias = rng.normal(size=channels).astype(np.float32)
        expected = reference(x, scale, bias, g)
        args = tuple(map(jnp.asarray, (x, scale, bias, g)))
        entry = {"batch_norms_in_resnet18": count, "variants": {}}
        for name in variants:
            fn = value_and_grads(VARIANTS[name])
            out = jax.block_until_ready(fn(*args))
            times = time_calls(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)), rounds,
                               warmup=0)
            entry["variants"][name] = {"median_seconds": statistics.median(times),
                                       "max_relative_error": max_relative_errors(out, expected)}
        shapes[f"{batch}x{size}x{size}x{channels}"] = entry
        print(f"{batch}x{size}x{size}x{channels}: " + "  ".join(
            f"{name} {v['median_seconds'] * 1e3:.1f} ms (dx error "
            f"{v['max_relative_error']['dx']:.1e})" for name, v in entry["variants"].items()),
            flush=True)
    per_step = {name: sum(e["batch_norms_in_resnet18"] * e["variants"][name]["median_seconds"]
                          for e in shapes.values()) for name in variants}
    return {"shapes": shapes, "per_step_seconds": per_step,
            "speedup_over_flax": {name: per_step["flax"] / s for name, s in per_step.items()}
            if "flax" in per_step else {}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="rows: two views of 64")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default="bench/results/bn_attempts_cpu.json")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; allowed: {sorted(VARIANTS)}")
    report = {"command": command_line(__file__, argv),
              "batch": args.batch, "rounds": args.rounds, "jax": jax.__version__,
              "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
              "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
              "load_average_at_start": list(os.getloadavg()),
              **measure(args.batch, args.rounds, variants)}
    write_json(args.output, report)
    print(json.dumps({"per_step_seconds": report["per_step_seconds"],
                      "speedup_over_flax": report["speedup_over_flax"]}, indent=1))
    return report


if __name__ == "__main__":
    main()
