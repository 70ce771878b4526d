"""Optimisation attempt for the CPU train step: convolution formulations, layer by layer.

    python bench/conv_attempts.py --output bench/results/conv_attempts_cpu.json

For the 3x3 convolutions of ResNet-18 (CIFAR stem) at 64 images per view (128 views), times
forward + backward (value and gradients w.r.t. input and kernel, jitted) of:
- `lax`: XLA's own convolution (forward, input gradient and weight gradient);
- `fast_wgrad`: the project's default on CPU (`models/fast_conv.py`): lax forward and input
  gradient, weight gradient as one matmul per kernel tap;
- `im2col`: forward as ONE matmul over the 9 shifted windows concatenated on the channel axis
  ((B*Ho*Wo, 9*Cin) @ (9*Cin, Cout)), gradients by JAX's autodiff of that (so the weight
  gradient is one matmul too, and the input gradient a matmul plus the windows' transpose).
Variants are timed in interleaved rounds (median), so load from other processes hits all alike.
Prediction before measuring: XLA:CPU's forward and input-gradient convolutions run well below its
matmul speed, so `im2col` should beat `fast_wgrad` by ~1.3-1.5x per layer, at 9x the input's
activation memory per layer. Second attempt, `im2col_wgrad`: one large weight-gradient matmul
(contraction over B*Ho*Wo) instead of nine per-tap ones, and no autodiff through the windows,
should gain ~1.2x over `fast_wgrad` on the 32x32 layers; measured, see the JSON.
Third attempt, `winograd`: Winograd F(2x2, 3x3) for the stride-1 convolutions (the stride-2 one
uses `fast_wgrad`): 2.25x fewer multiplications, as 16 (tiles, Cin) @ (Cin, Cout) matmuls between
cheap input/output transforms; autodiff of it gives Winograd-form input and weight gradients too.
Predicted ~1.5x on the 32x32x64 layers, where XLA's convolution runs at half its matmul speed.

`--xla_cpu_ynnpack` compiles every variant with that `model.xla_cpu_ynnpack` setting. The results
above were measured with "jaxlib" (YNNPACK convolutions and dots, jaxlib 0.10's default, before
the project chose otherwise); with the project's "dot" (XLA's own convolutions):

    python bench/conv_attempts.py --xla_cpu_ynnpack dot \
        --output bench/results/conv_attempts_dot_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from amcl_jax.models.fast_conv import (  # noqa: E402
    XLA_CPU_YNNPACK,
    conv_general_dilated_fast_wgrad,
    im2col_conv_nhwc,
    im2col_patches,
    winograd_conv_nhwc,
    xla_compiler_options,
)
from bench.common import command_line, write_json  # noqa: E402
from bench.timing import seconds_of  # noqa: E402

# (H=W, Cin, Cout, stride) of ResNet-18's 3x3 convolutions (CIFAR stem), one per stage.
# Plus the stride-2 3x3 convolution that opens stage 2 (the largest of the three stride-2 ones).
LAYERS = ((32, 64, 64, 1), (32, 64, 128, 2), (16, 128, 128, 1), (8, 256, 256, 1),
          (4, 512, 512, 1))
DN = ("NHWC", "HWIO", "NHWC")


def conv_lax(x, w, stride):
    return lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                    dimension_numbers=DN)


def conv_fast_wgrad(x, w, stride):
    return conv_general_dilated_fast_wgrad(x, w, (stride, stride), ((1, 1), (1, 1)),
                                           dimension_numbers=DN)


def conv_im2col(x, w, stride):
    """`models.fast_conv.im2col_conv_nhwc`, padding 1."""
    return im2col_conv_nhwc(x, w, (stride, stride), ((1, 1), (1, 1)))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_im2col_wgrad(x, w, stride):
    return conv_im2col(x, w, stride)


def _im2col_wgrad_fwd(x, w, stride):
    return conv_im2col(x, w, stride), (x, w)


def _im2col_wgrad_bwd(stride, residuals, g):
    x, w = residuals
    _, x_vjp = jax.vjp(lambda x: conv_lax(x, w, stride), x)
    patches, _ = im2col_patches(x, w.shape[:2], (stride, stride), ((1, 1), (1, 1)))
    w_grad = (patches.T @ g.reshape(-1, w.shape[-1])).reshape(w.shape)
    return x_vjp(g)[0], w_grad


conv_im2col_wgrad.defvjp(_im2col_wgrad_fwd, _im2col_wgrad_bwd)

def conv_winograd(x, w, stride):
    """Winograd F(2x2, 3x3) (`models.fast_conv.winograd_conv_nhwc`) where it applies (3x3,
    stride 1, even H and W), else fast_wgrad."""
    if stride != 1 or w.shape[:2] != (3, 3) or x.shape[1] % 2 or x.shape[2] % 2:
        return conv_fast_wgrad(x, w, stride)
    return winograd_conv_nhwc(x, w)


VARIANTS = {"lax": conv_lax, "fast_wgrad": conv_fast_wgrad, "im2col": conv_im2col,
            "im2col_wgrad": conv_im2col_wgrad, "winograd": conv_winograd}


def make_step(conv, stride, ynnpack: str = "jaxlib"):
    def loss(x, w):
        return jnp.sum(conv(x, w, stride) ** 2) * 1e-3
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                   compiler_options=xla_compiler_options(ynnpack))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="images per call (2 x 64 views)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="bench/results/conv_attempts_cpu.json")
    parser.add_argument("--xla_cpu_ynnpack", default="jaxlib", choices=tuple(XLA_CPU_YNNPACK),
                        help="which XLA:CPU ops YNNPACK runs (model.xla_cpu_ynnpack)")
    args = parser.parse_args()
    report = {"command": command_line(__file__),
              "batch": args.batch, "xla_cpu_ynnpack": args.xla_cpu_ynnpack,
              "load_average_at_start": list(os.getloadavg()),
              "backend": jax.default_backend(), "layers": []}
    key = jax.random.key(0)
    for size, cin, cout, stride in LAYERS:
        x = jax.random.normal(key, (args.batch, size, size, cin))
        w = jax.random.normal(key, (3, 3, cin, cout)) * 0.05
        steps = {name: make_step(conv, stride, args.xla_cpu_ynnpack)
                 for name, conv in VARIANTS.items()}
        reference = None
        for name, step in steps.items():  # Compile, and check the three agree.
            value, grads = jax.block_until_ready(step(x, w))
            if reference is None:
                reference = (value, grads)
            else:
                for got, want in zip(jax.tree.leaves((value, grads)),
                                     jax.tree.leaves(reference), strict=True):
                    scale = float(jnp.max(jnp.abs(want))) + 1e-12
                    error = float(jnp.max(jnp.abs(got - want))) / scale
                    assert error < 1e-3, (name, size, error)
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(
                    seconds_of(lambda step=step, x=x, w=w: jax.block_until_ready(step(x, w))))
        medians = {name: statistics.median(t) for name, t in times.items()}
        row = {"input": [args.batch, size, size, cin], "cout": cout, "stride": stride,
               "median_seconds": medians,
               "speedup_over_fast_wgrad": {n: medians["fast_wgrad"] / m
                                           for n, m in medians.items()}}
        report["layers"].append(row)
        print(f"{size:3d}x{size:<3d} {cin:4d}->{cout:<4d} " + "  ".join(
            f"{n} {m * 1e3:8.1f} ms" for n, m in medians.items()), flush=True)
    total = {n: sum(r["median_seconds"][n] for r in report["layers"]) for n in VARIANTS}
    report["total_seconds"] = total
    report["speedup_over_fast_wgrad"] = {n: total["fast_wgrad"] / t for n, t in total.items()}
    print("total " + "  ".join(f"{n} {t:.3f} s" for n, t in total.items()) + "  speedup over "
          "fast_wgrad " + "  ".join(f"{n} {r:.2f}x"
                                    for n, r in report["speedup_over_fast_wgrad"].items()))
    write_json(args.output, report)


if __name__ == "__main__":
    main()
