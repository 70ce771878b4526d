"""Which kernels run the convolutions on XLA:CPU, and formulations for when YNNPACK runs them.

jaxlib 0.10's XLA:CPU hands convolutions and dots to YNNPACK by default. Its convolution weight
gradient (the "backward filter" conv) is up to ~20x slower than oneDNN's at high resolution and
few channels, and its forward 3x3 convolution runs at less than half the speed of XLA's own
(Eigen) kernel on ResNet-18's 32x32x64 layer (`bench/xla_flags.py`, `bench/conv_attempts.py`).
The project therefore compiles its programs with YNNPACK for dots only (`xla_compiler_options`,
`model.xla_cpu_ynnpack="dot"`), and the stock lax convolution is then the fastest
(`model.conv_impl="auto"` picks it).

With YNNPACK running the convolutions (`model.xla_cpu_ynnpack="jaxlib"`) the formulations below
are faster than lax. `conv_general_dilated_fast_wgrad`: the forward pass and the input gradient
are the stock lax ones, and the weight gradient is written as one matmul per kernel tap:

    dW[i, j] = patch(i, j)^T @ g,  patch(i, j): (B*Ho*Wo, Cin),  g: (B*Ho*Wo, Cout)

where patch(i, j) is the strided window of the padded input that kernel tap (i, j) sees. The taps
run sequentially under `lax.map`, so peak memory stays at the stock level (unrolling them is ~10%
faster but needs ~2.3x the memory).

Supported fast path (everything a ResNet needs): 2-D NHWC inputs with HWIO kernels, any strides,
explicit or string ('SAME', 'VALID', 'SAME_LOWER') padding, no input/kernel dilation,
`feature_group_count == batch_group_count == 1`. Any other call falls back to the plain
`lax.conv_general_dilated` (same result, stock gradients).

`conv_general_dilated_per_shape` (what `model.conv_impl="auto"` picks when YNNPACK runs the
convolutions) goes further, per layer shape, by what `bench/conv_attempts.py` measured then: one
im2col matmul for stride-2 3x3 convolutions, Winograd F(2x2, 3x3) for small stride-1 3x3 ones,
the above for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache, partial
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")

ConvFn = Callable[..., jax.Array]


def _is_unit(dilation: Sequence[int] | None) -> bool:
    return dilation is None or all(int(d) == 1 for d in dilation)


def _is_nhwc_hwio(lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...], dimension_numbers: Any
                  ) -> bool:
    """True when `dimension_numbers` means NHWC inputs/outputs and HWIO kernels."""
    if len(lhs_shape) != 4 or len(rhs_shape) != 4:
        return False
    if dimension_numbers is None:  # lax's default is NCHW / OIHW
        return False
    try:
        given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return given == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC_HWIO)


def _explicit_pads(padding: Any, in_hw: Sequence[int], kernel_hw: Sequence[int],
                   strides: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    """Padding as ((top, bottom), (left, right)) ints, or None when it cannot be parsed."""
    try:
        if isinstance(padding, str):
            pads = lax.padtype_to_pads(in_hw, kernel_hw, strides, padding)
        else:
            pads = padding
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    except (TypeError, ValueError):
        return None
    return pads if len(pads) == 2 else None


def _plain_nhwc_pads(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, ...], padding: Any,
                     lhs_dilation: Sequence[int] | None, rhs_dilation: Sequence[int] | None,
                     dimension_numbers: Any, feature_group_count: int, batch_group_count: int
                     ) -> tuple[tuple[int, int], ...] | None:
    """Explicit pads of a plain 2-D NHWC/HWIO conv (no dilation, no groups), else None."""
    supported = (
        _is_nhwc_hwio(tuple(lhs.shape), tuple(rhs.shape), dimension_numbers)
        and len(strides) == 2
        and _is_unit(lhs_dilation)
        and _is_unit(rhs_dilation)
        and feature_group_count == 1
        and batch_group_count == 1
    )
    return _explicit_pads(padding, lhs.shape[1:3], rhs.shape[0:2], strides) if supported else None


def _float32_nhwc_pads(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, ...], padding: Any,
                       lhs_dilation: Sequence[int] | None, rhs_dilation: Sequence[int] | None,
                       dimension_numbers: Any, feature_group_count: int,
                       batch_group_count: int, preferred_element_type: Any
                       ) -> tuple[tuple[int, int], ...] | None:
    """As `_plain_nhwc_pads`, for float32 operands and output only (the per-shape formulations
    were measured, and their rounding tested, in float32)."""
    float32 = (lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
               and preferred_element_type in (None, jnp.float32) and rhs.ndim == 4)
    return _plain_nhwc_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count,
                            batch_group_count) if float32 else None


def _pad_hw(lhs: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """lhs (B, H, W, C) padded by pads ((top, bottom), (left, right)); negative pads crop.

    lax.pad (unlike jnp.pad) accepts the negative pads lax convs allow."""
    return lax.pad(lhs, jnp.zeros((), lhs.dtype),
                   ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0),
                    (0, 0, 0)))


def _lax_conv_nhwc(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int],
                   pads: tuple[tuple[int, int], ...], precision: Any,
                   preferred_element_type: Any) -> jax.Array:
    return lax.conv_general_dilated(
        lhs, rhs, strides, pads, dimension_numbers=_NHWC_HWIO, precision=precision,
        preferred_element_type=preferred_element_type)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_nhwc_fast_wgrad(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int],
                          pads: tuple[tuple[int, int], ...], precision: Any,
                          preferred_element_type: Any) -> jax.Array:
    return _lax_conv_nhwc(lhs, rhs, strides, pads, precision, preferred_element_type)


def _fwd(lhs, rhs, strides, pads, precision, preferred_element_type):
    out = _lax_conv_nhwc(lhs, rhs, strides, pads, precision, preferred_element_type)
    return out, (lhs, rhs)


def _bwd(strides, pads, precision, preferred_element_type, residuals, g):
    lhs, rhs = residuals
    # Input gradient: lax's own transpose of the conv with respect to lhs.
    _, lhs_vjp = jax.vjp(
        lambda x: _lax_conv_nhwc(x, rhs, strides, pads, precision, preferred_element_type), lhs)
    (lhs_grad,) = lhs_vjp(g)

    kh, kw, cin, cout = rhs.shape
    batch, ho, wo, _ = g.shape
    sh, sw = strides
    padded = _pad_hw(lhs, pads)
    g_flat = g.reshape(batch * ho * wo, cout)
    window = (batch, (ho - 1) * sh + 1, (wo - 1) * sw + 1, cin)

    def tap_grad(tap: jax.Array) -> jax.Array:
        """(Cin, Cout) weight gradient of kernel tap number `tap` (row-major over (kh, kw))."""
        i, j = tap // kw, tap % kw
        zero = jnp.zeros((), tap.dtype)
        patch = lax.dynamic_slice(padded, (zero, i, j, zero), window)[:, ::sh, ::sw, :]
        return lax.dot_general(
            patch.reshape(batch * ho * wo, cin), g_flat, (((0,), (0,)), ((), ())),
            precision=precision, preferred_element_type=jnp.float32)

    if kh * kw == 1:
        taps = tap_grad(jnp.zeros((), jnp.int32))[None]
    else:
        taps = lax.map(tap_grad, jnp.arange(kh * kw, dtype=jnp.int32))
    rhs_grad = taps.reshape(kh, kw, cin, cout).astype(rhs.dtype)
    return lhs_grad, rhs_grad


_conv_nhwc_fast_wgrad.defvjp(_fwd, _bwd)


def conv_general_dilated_fast_wgrad(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` with a per-tap-matmul weight gradient (see module docstring).

    Same signature and values as `lax.conv_general_dilated`; pass it as `nn.Conv`'s
    `conv_general_dilated`. Fast path: lhs (B, H, W, Cin) NHWC, rhs (kh, kw, Cin, Cout) HWIO,
    output (B, Ho, Wo, Cout); other layouts, dilations or grouped convs use the plain lax conv.
    """
    strides = tuple(int(s) for s in window_strides)
    pads = _plain_nhwc_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count, batch_group_count)
    if pads is None:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    return _conv_nhwc_fast_wgrad(lhs, rhs, strides, pads, precision, preferred_element_type)


# ---------------------------------------------------------------------------------------------
# Per-shape choice (`model.conv_impl="per_shape"`; "auto" where YNNPACK runs the convolutions)
# ---------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3): y = A^T [(G w G^T) * (B^T d B)] A for each 4x4 input tile d.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# Largest output H * W where Winograd is used (bench/results/conv_attempts_cpu.json: 1.30x at
# 4x4x512, within noise at 8x8, slower at 16x16 and 32x32).
WINOGRAD_MAX_PIXELS = 16


def _winograd_input_transform(padded: jax.Array, axis: int) -> jax.Array:
    """B^T d along `axis` for every tile: 2T + 2 entries (window 4, step 2) -> (4, ..., T)."""
    even = lax.slice_in_dim(padded, 0, None, 2, axis)
    odd = lax.slice_in_dim(padded, 1, None, 2, axis)
    n = even.shape[axis]
    e0, e1 = lax.slice_in_dim(even, 0, n - 1, axis=axis), lax.slice_in_dim(even, 1, n, axis=axis)
    o0, o1 = lax.slice_in_dim(odd, 0, n - 1, axis=axis), lax.slice_in_dim(odd, 1, n, axis=axis)
    return jnp.stack([e0 - e1, o0 + e1, e1 - o0, o0 - o1])


def winograd_conv_nhwc(lhs: jax.Array, rhs: jax.Array, precision: Any = None) -> jax.Array:
    """3x3, stride 1, padding 1 convolution by Winograd F(2x2, 3x3); H and W even. NHWC/HWIO.

    16 (tiles, Cin) @ (Cin, Cout) matmuls between elementwise input/output transforms: 2.25x
    fewer multiplications than the direct form; autodiff of it gives Winograd-form gradients.
    """
    batch, height, width, cin = lhs.shape
    cout = rhs.shape[-1]
    padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    v = _winograd_input_transform(padded, 2)  # (4, B, H + 2, W / 2, Cin): columns first
    v = _winograd_input_transform(v, 2)  # (4 rows, 4 columns, B, H / 2, W / 2, Cin)
    th, tw = height // 2, width // 2
    v = v.reshape(16, batch * th * tw, cin)
    g = jnp.asarray(_WINOGRAD_G, rhs.dtype)
    u = jnp.einsum("ai,ijck,bj->abck", g, rhs, g, precision=precision).reshape(16, cin, cout)
    m = jnp.einsum("ptc,pck->ptk", v, u, precision=precision).reshape(4, 4, batch, th, tw, cout)
    rows = jnp.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]])  # A^T along rows
    out = jnp.stack([rows[:, 0] + rows[:, 1] + rows[:, 2],
                     rows[:, 1] - rows[:, 2] - rows[:, 3]], axis=1)  # then along columns
    return out.transpose(2, 3, 0, 4, 1, 5).reshape(batch, height, width, cout)


def im2col_patches(lhs: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
                   pads: tuple[tuple[int, int], ...]) -> tuple[jax.Array, tuple[int, int]]:
    """(B Ho Wo, kh kw Cin) windows of lhs (NHWC) on the channel axis, and the output's (Ho, Wo)."""
    kh, kw = kernel_hw
    batch, cin = lhs.shape[0], lhs.shape[-1]
    sh, sw = strides
    padded = _pad_hw(lhs, pads)
    ho = (padded.shape[1] - kh) // sh + 1
    wo = (padded.shape[2] - kw) // sw + 1
    windows = [padded[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
               for i in range(kh) for j in range(kw)]
    return jnp.concatenate(windows, axis=-1).reshape(batch * ho * wo, kh * kw * cin), (ho, wo)


def im2col_conv_nhwc(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int],
                     pads: tuple[tuple[int, int], ...], precision: Any = None) -> jax.Array:
    """The convolution as ONE matmul: (B Ho Wo, kh kw Cin) windows @ (kh kw Cin, Cout)."""
    kh, kw, cin, cout = rhs.shape
    patches, (ho, wo) = im2col_patches(lhs, (kh, kw), strides, pads)
    out = jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)
    return out.reshape(lhs.shape[0], ho, wo, cout)


def conv_general_dilated_per_shape(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` computed by the formulation measured fastest for its shape on
    XLA:CPU (`bench/conv_attempts.py`), for float32 NHWC/HWIO 3x3 convolutions:

    - stride 2: `im2col_conv_nhwc` (1.53x over `fast_wgrad` on ResNet-18's 32x32 -> 16x16 conv);
    - stride 1, padding 1, even output of at most `WINOGRAD_MAX_PIXELS` pixels (ResNet-18's last
      stage): `winograd_conv_nhwc` (1.30x at 4x4x512);
    - anything else: `conv_general_dilated_fast_wgrad` (and through it lax for other layouts).
    Same values as lax up to float32 rounding; same signature.
    """
    strides = tuple(int(s) for s in window_strides)
    pads = _float32_nhwc_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                              dimension_numbers, feature_group_count, batch_group_count,
                              preferred_element_type)
    if pads is not None and tuple(rhs.shape[:2]) == (3, 3):
        height, width = lhs.shape[1:3]
        if strides == (2, 2):
            return im2col_conv_nhwc(lhs, rhs, strides, pads, precision)
        if (strides == (1, 1) and pads == ((1, 1), (1, 1)) and height % 2 == 0
                and width % 2 == 0 and height * width <= WINOGRAD_MAX_PIXELS):
            return winograd_conv_nhwc(lhs, rhs, precision)
    return conv_general_dilated_fast_wgrad(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)


# ---------------------------------------------------------------------------------------------
# Per-shape choice for XLA's own CPU kernel (`model.conv_impl="xla_cpu"`)
# ---------------------------------------------------------------------------------------------
PHASE_DGRAD_MIN_PIXELS = 256  # 16x16 inputs and larger (slower than lax at 8x8)


def _phase_conv_nhwc(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int],
                     pads: tuple[tuple[int, int], ...], precision: Any) -> jax.Array:
    """A strided conv as the sum over the sh * sw input phases of stride-1 VALID convs: phase
    (a, b) = padded[:, a::sh, b::sw] meets the sub-kernel rhs[a::sh, b::sw] (the taps that land
    on it), so out[o] = sum over phases and taps of phase[o + t] rhs[a + t sh], as the strided
    conv's sum over taps k = a + t sh. Its input gradient has no input dilation."""
    kh, kw = rhs.shape[:2]
    sh, sw = strides
    padded = _pad_hw(lhs, pads)
    ho = (padded.shape[1] - kh) // sh + 1
    wo = (padded.shape[2] - kw) // sw + 1
    out = None
    for a in range(min(sh, kh)):
        for b in range(min(sw, kw)):
            sub = rhs[a::sh, b::sw]
            phase = padded[:, a::sh, b::sw][:, :ho + sub.shape[0] - 1, :wo + sub.shape[1] - 1]
            term = lax.conv_general_dilated(phase, sub, (1, 1), "VALID",
                                            dimension_numbers=_NHWC_HWIO, precision=precision)
            out = term if out is None else out + term
    return out


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc_phase_dgrad(lhs: jax.Array, rhs: jax.Array, strides: tuple[int, int],
                           pads: tuple[tuple[int, int], ...], precision: Any) -> jax.Array:
    return _lax_conv_nhwc(lhs, rhs, strides, pads, precision, None)


def _phase_dgrad_fwd(lhs, rhs, strides, pads, precision):
    return _lax_conv_nhwc(lhs, rhs, strides, pads, precision, None), (lhs, rhs)


def _phase_dgrad_bwd(strides, pads, precision, residuals, g):
    lhs, rhs = residuals
    # XLA transposes a strided conv w.r.t. its input as a conv over the zero-dilated gradient
    # (sh * sw times the work); the phase form's transpose is sh * sw dense stride-1 convs.
    _, lhs_vjp = jax.vjp(lambda x: _phase_conv_nhwc(x, rhs, strides, pads, precision), lhs)
    _, rhs_vjp = jax.vjp(lambda w: _lax_conv_nhwc(lhs, w, strides, pads, precision, None), rhs)
    return lhs_vjp(g)[0], rhs_vjp(g)[0]


_conv_nhwc_phase_dgrad.defvjp(_phase_dgrad_fwd, _phase_dgrad_bwd)


def conv_general_dilated_xla_cpu(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated`, except for the float32 NHWC/HWIO shapes where XLA's own CPU
    kernel (`model.xla_cpu_ynnpack="dot"`) was measured well behind oneDNN
    (`bench/conv_attempts.py --xla_cpu_ynnpack dot`):

    - strided convs of at least `PHASE_DGRAD_MIN_PIXELS` input pixels: lax forward and weight
      gradient, the input gradient through `_phase_conv_nhwc` (2.8x slower than oneDNN as XLA
      does it at 32x32x64 -> 128);
    - unpadded strided 1x1 convs (projection shortcuts): the strided slice, then a matmul (the
      weight gradient is then one matmul; 7x slower than oneDNN as a conv);
    - stride-1 convs of at most 4 input channels (the image stem): one im2col matmul (its weight
      gradient as a conv was 5x slower than oneDNN's).
    Same values as lax up to float32 rounding; same signature; anything else is lax.
    """
    strides = tuple(int(s) for s in window_strides)
    pads = _float32_nhwc_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                              dimension_numbers, feature_group_count, batch_group_count,
                              preferred_element_type)
    if pads is not None:
        kh, kw, cin, _ = rhs.shape
        height, width = lhs.shape[1:3]
        strided = strides != (1, 1)
        if strided and (kh, kw) == (1, 1) and pads == ((0, 0), (0, 0)):
            sh, sw = strides
            return jnp.einsum("bhwc,cd->bhwd", lhs[:, ::sh, ::sw], rhs[0, 0],
                              precision=precision)
        if strided and height * width >= PHASE_DGRAD_MIN_PIXELS:
            return _conv_nhwc_phase_dgrad(lhs, rhs, strides, pads, precision)
        if not strided and cin <= 4:
            return im2col_conv_nhwc(lhs, rhs, strides, pads, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)


# ---------------------------------------------------------------------------------------------
# Which XLA:CPU library runs the convolutions and dots (`model.xla_cpu_ynnpack`)
# ---------------------------------------------------------------------------------------------
# jaxlib 0.10 hands XLA:CPU's convolutions and dots to YNNPACK ("ynn_fusion" in the compiled
# HLO). On the x86 CPU measured, its forward 3x3 convolution at 32x32x64 runs at less than half
# the speed of XLA's own (Eigen) kernel and its backward is slower still (`bench/xla_flags.py`),
# while its dots are on par (the step with "none" is within 2% of "dot":
# `bench/results/ynnpack_cpu.json`). The option is read per compiled program (`jax.jit(...,
# compiler_options=...)`), so it touches only the project's own programs and only on CPU.
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


CONV_IMPLS = ("auto", "lax", "fast_wgrad", "per_shape", "xla_cpu")


def ynnpack_runs_convolutions(xla_cpu_ynnpack: str = DEFAULT_XLA_CPU_YNNPACK,
                              backend: str | None = None) -> bool:
    """Whether the project's programs compiled with this setting leave convolutions to YNNPACK:
    on the CPU backend with "jaxlib", or when this jaxlib does not accept the option."""
    return ((backend or jax.default_backend()) == "cpu"
            and xla_compiler_options(xla_cpu_ynnpack, backend) is None)


def select_conv(impl: str, xla_cpu_ynnpack: str = DEFAULT_XLA_CPU_YNNPACK) -> ConvFn:
    """The conv function for `model.conv_impl` (and `model.xla_cpu_ynnpack`, which "auto" reads).

    "lax": `lax.conv_general_dilated`; "fast_wgrad": `conv_general_dilated_fast_wgrad`;
    "per_shape": `conv_general_dilated_per_shape`; "auto": per_shape where YNNPACK runs the
    convolutions (XLA:CPU with `xla_cpu_ynnpack="jaxlib"`: its weight gradient is slow), lax
    everywhere else: XLA's own CPU convolution is faster than every formulation here
    (`bench/conv_attempts.py --xla_cpu_ynnpack dot`), as are GPU and TPU convolutions.
    """
    if impl == "auto":
        impl = "per_shape" if ynnpack_runs_convolutions(xla_cpu_ynnpack) else "lax"
    if impl == "lax":
        return lax.conv_general_dilated
    if impl == "fast_wgrad":
        return conv_general_dilated_fast_wgrad
    if impl == "per_shape":
        return conv_general_dilated_per_shape
    if impl == "xla_cpu":
        return conv_general_dilated_xla_cpu
    raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
