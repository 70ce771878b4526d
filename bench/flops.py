"""Model FLOPs of a train step, the device's peak, and MFU, for `bench/run.py`.

MFU (model FLOPs utilisation) = model FLOPs per step / step time / the device's peak FLOP/s.
Model FLOPs are the matmul and convolution FLOPs of the model's forward pass, counted in its
jaxpr (2 per multiply-add), times 3 for the step (the backward pass computes an input and a
weight gradient of each, twice the forward's): the usual convention, independent of how a
framework or XLA implements them, so PyTorch's step on the same model gets the same count.
Elementwise ops (BatchNorm, ReLU, the loss) are not counted.

The peak comes from the vendor's data sheet for the GPUs in `GPU_PEAK_FLOPS` (dense, no
sparsity; float32 steps are rated against TF32, which JAX's default precision and PyTorch's
cuDNN convolutions use on these GPUs). A CPU has no such figure (its clock boosts: this
project's 2-core machines reach 190 GFLOP/s in a float32 matmul, above the 157 of 2 cores x the
2445 MHz /proc/cpuinfo reports x 32 FLOP/cycle). `matmul_utilisation` rates the step against
`measured_matmul_flops_per_second` instead, what one large matmul reaches on the same device:
a ceiling that a convolutional network's step does not pass, on any platform.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bench.timing import default_matmul_size, time_calls

# Dense peak FLOP/s by device-kind substring (first match wins: "H100 PCIe" before "H100").
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"float32": 51.2e12, "tf32": 378e12, "bfloat16": 756e12},
    "H100": {"float32": 66.9e12, "tf32": 494.7e12, "bfloat16": 989.4e12},  # SXM
    "H200": {"float32": 66.9e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
    "A100": {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12},
}


# --------------------------------------------------------------------------------------------
# Model FLOPs
# --------------------------------------------------------------------------------------------
def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def jaxpr_matmul_flops(jaxpr) -> int:
    """2 x multiply-adds of every `dot_general` and `conv_general_dilated` in `jaxpr`, nested
    jaxprs included (a `cond` counts its costliest branch, a `scan` its body `length` times)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                lhs.shape[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            kernel = eqn.invars[1].aval.shape
            # The kernel's input-feature dimension is already Cin / feature_group_count.
            per_output = kernel[rhs_spec[1]] * math.prod(kernel[d] for d in rhs_spec[2:])
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * per_output
        if name == "cond":
            total += max(jaxpr_matmul_flops(branch.jaxpr) for branch in eqn.params["branches"])
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"].jaxpr)
        else:
            total += sum(jaxpr_matmul_flops(sub) for sub in _sub_jaxprs(eqn.params))
    return total


def forward_flops(fn: Callable, *args) -> int:
    """Matmul + convolution FLOPs of one call `fn(*args)` (traced, not run)."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def model_flops_per_step(config, batch_per_view: int, num_views: int = 2) -> dict[str, int]:
    """{"forward", "step"}: the model's forward FLOPs on `num_views` x `batch_per_view` images
    (training mode) and 3x that for a train step."""
    from amcl_jax import forms, methods

    config = forms.resolve(config)
    model = methods.get_method(config.method).build_model(config)
    size = config.data.image_size
    images = jnp.zeros((num_views * batch_per_view, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images[:2],
                                                  train=False))
    forward = forward_flops(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, images)
    return {"forward": forward, "step": 3 * forward}


# --------------------------------------------------------------------------------------------
# Peak FLOP/s
# --------------------------------------------------------------------------------------------
def nominal_peak_flops(dtype: str, device=None) -> dict:
    """{"flops_per_second", "basis", "source"} for one device (None where unknown)."""
    device = device or jax.devices()[0]
    kind = device.device_kind
    if device.platform == "gpu":
        for key, peaks in GPU_PEAK_FLOPS.items():
            if key in kind:
                basis = "tf32" if dtype == "float32" else dtype
                return {"flops_per_second": peaks.get(basis), "basis": basis,
                        "source": f"data sheet, dense ({key})"}
        return {"flops_per_second": None, "basis": None,
                "source": f"no data-sheet figure for {kind!r} in bench/flops.py"}
    if device.platform == "cpu":
        return {"flops_per_second": None, "basis": dtype,
                "source": "none for CPUs (their clocks boost past any nominal figure); "
                          "see matmul_utilisation"}
    return {"flops_per_second": None, "basis": None, "source": f"unknown platform {kind!r}"}


def measured_matmul_flops_per_second(dtype: str, size: int | None = None,
                                     compiler_options: dict | None = None,
                                     repeats: int = 5) -> dict:
    """The best of `repeats` timed (size, size) @ (size, size) matmuls under `jax.jit`."""
    platform = jax.devices()[0].platform
    size = size or default_matmul_size(platform)
    keys = jax.random.split(jax.random.PRNGKey(0))
    a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype) for k in keys)
    matmul = jax.jit(jnp.matmul, compiler_options=compiler_options)
    best = min(time_calls(lambda: jax.block_until_ready(matmul(a, b)), repeats))
    return {"flops_per_second": 2 * size**3 / best, "size": size, "dtype": dtype,
            "seconds": best}


def utilisation(model_flops: int, step_seconds: float, peak: float | None) -> float | None:
    return None if not peak else model_flops / step_seconds / peak
