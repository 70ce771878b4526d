"""The CPU backend's two XLA:CPU levers, which nothing else runs: what it needs to train fast.

- `xla_compiler_options` (`model.xla_cpu_ynnpack`): jaxlib 0.10's XLA:CPU hands convolutions and
  dots to YNNPACK, whose forward 3x3 convolution at 32x32x64 runs at less than half the speed of
  XLA's own (Eigen) kernel and whose backward is slower still, while its dots are on par. The
  project's programs are compiled with YNNPACK for dots only ("dot", the default): 1.09x on the
  ResNet-18 step. With it the stock `lax.conv_general_dilated` is faster than every convolution
  formulation tried (docs/history.md).
- `fusion_barrier` (`model.cpu_fusion_barriers`): stops XLA:CPU from recomputing each block's
  BatchNorm / ReLU chain inside the backward pass: 1.17x on the same step.

The compiler option is read per compiled program (`jax.jit(..., compiler_options=...)`), so it
touches only the project's own programs and only on CPU.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# setting -> value of the XLA option (None: leave jaxlib's default alone).
XLA_CPU_YNNPACK = {
    "jaxlib": None,  # jaxlib's default: convolutions and dots in YNNPACK.
    "dot": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",  # dots in YNNPACK, convolutions in XLA's own.
    "none": "",  # neither: XLA's own kernels for both.
}
DEFAULT_XLA_CPU_YNNPACK = "dot"  # as `model.xla_cpu_ynnpack`'s default in amcl_jax/config.py.


@cache
def _cpu_option_accepted(name: str, value: str) -> bool:
    """Whether this jaxlib's XLA:CPU accepts the compiler option (it is experimental)."""
    try:
        on_cpu = jax.device_put(jnp.zeros((), jnp.float32), jax.devices("cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(on_cpu).compile()
    except Exception as error:  # noqa: BLE001 - any rejection means "do not pass it".
        logging.warning("XLA:CPU rejects %s=%r (%s); compiling with jaxlib's defaults",
                        name, value, str(error).splitlines()[0])
        return False
    return True


def xla_compiler_options(ynnpack: str, backend: str | None = None) -> dict[str, Any] | None:
    """`compiler_options` for `jax.jit` of the project's model programs (`model.xla_cpu_ynnpack`).

    None off the CPU backend (`backend`, default `jax.default_backend()`), for "jaxlib", and when
    this jaxlib does not know the option (a warning says so).
    """
    if ynnpack not in XLA_CPU_YNNPACK:
        raise ValueError(f"model.xla_cpu_ynnpack must be one of {tuple(XLA_CPU_YNNPACK)}, "
                         f"got {ynnpack!r}")
    value = XLA_CPU_YNNPACK[ynnpack]
    if value is None or (backend or jax.default_backend()) != "cpu":
        return None
    if not _cpu_option_accepted(_YNN_OPTION, value):
        return None
    return {_YNN_OPTION: value}


def fusion_barrier(x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
    """x, computed once: an identity that XLA:CPU does not fuse across.

    XLA:CPU duplicates cheap elementwise producers into each consumer. In a ResNet's backward
    pass the weight gradient of every convolution starts with a transposed copy of its input,
    and that copy recomputed the whole BatchNorm / residual-add / ReLU chain back through the
    stage (up to three convolution outputs re-read per element) instead of reading the stored
    activation: 1.0 s of a 4.1 s ResNet-18 step at 64 images per view on 2 cores.
    `lax.optimization_barrier` does not stop it (XLA:CPU removes barriers before fusion); a
    conditional is a computation boundary it keeps. Its predicate `keep` must be a runtime value,
    so that the branch cannot be folded away: `keep_predicate(a)` of a replicated array (a
    parameter) adds no communication on a sharded batch, where reading x's own first element
    would broadcast it from the device that holds it (the default, for a single device). Both
    branches return x (the second adds 0).
    """
    if keep is None:
        keep = keep_predicate(x)
    return lax.cond(keep, lambda v: v, lambda v: v + jnp.zeros((), v.dtype), x)


def keep_predicate(a: jax.Array) -> jax.Array:
    """A scalar bool XLA cannot evaluate at compile time: a's first element equals itself
    (false only if it is NaN; `fusion_barrier` returns x either way)."""
    first = a.reshape(-1)[0]
    return first == first


def fusion_barrier_predicate(parameter: jax.Array) -> jax.Array | None:
    """`keep_predicate(parameter)` on the CPU backend, where the barriers pay; None elsewhere,
    where a conditional would cost a host round trip."""
    return keep_predicate(parameter) if jax.default_backend() == "cpu" else None
