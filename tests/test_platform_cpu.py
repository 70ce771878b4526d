"""Tests for amcl_jax.platform.cpu: the XLA:CPU compiler option and the fusion barrier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from amcl_jax.platform import cpu


def _conv_and_dot(x, w, m):
    conv = lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv, x.reshape(-1, x.shape[-1]) @ m


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
@pytest.mark.parametrize("setting,ynn_conv,ynn_dot",
                         [("jaxlib", True, True), ("dot", False, True), ("none", False, False)])
def test_xla_cpu_ynnpack_sends_convolutions_and_dots_where_it_says(setting, ynn_conv, ynn_dot):
    # YNNPACK takes convolutions from 32 channels on (jaxlib 0.10.2), dots of any size.
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
    m = jax.random.normal(jax.random.key(2), (32, 24))
    options = cpu.xla_compiler_options(setting)
    assert (options is None) == (setting == "jaxlib")
    compiled = jax.jit(_conv_and_dot, compiler_options=options).lower(x, w, m).compile()
    text = compiled.as_text()
    # An op YNNPACK runs sits inside a "ynn_fusion" computation; one XLA runs itself is a plain
    # instruction of the entry computation (the two outputs are separate, so nothing fuses them).
    entry = text[text.index("ENTRY"):]
    assert (" convolution(" not in entry) == ynn_conv, entry
    assert (" dot(" not in entry) == ynn_dot, entry
    assert ("ynn_fusion" in text) == (ynn_conv or ynn_dot)
    # Same values whichever library computes them.
    with jax.default_matmul_precision("highest"):
        want = _conv_and_dot(x, w, m)
    for got, ref in zip(compiled(x, w, m), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_xla_cpu_ynnpack_off_cpu_and_bad_values():
    assert set(cpu.XLA_CPU_YNNPACK) == {"jaxlib", "dot", "none"}
    for setting in cpu.XLA_CPU_YNNPACK:
        assert cpu.xla_compiler_options(setting, backend="gpu") is None
        assert cpu.xla_compiler_options(setting, backend="tpu") is None
    with pytest.raises(ValueError, match=r"model\.xla_cpu_ynnpack.*'jaxlib', 'dot', 'none'"):
        cpu.xla_compiler_options("eigen")


def test_an_option_this_jaxlib_rejects_is_dropped_with_a_warning(monkeypatch):
    assert not cpu._cpu_option_accepted("xla_cpu_experimental_ynn_fusion_type",
                                       "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE")
    monkeypatch.setattr(cpu, "_cpu_option_accepted", lambda name, value: False)
    assert cpu.xla_compiler_options("dot", backend="cpu") is None


def test_fusion_barrier_is_the_identity_nan_included():
    x = jnp.asarray([[np.nan, -0.0, 1.5], [2.0, np.inf, -3.0]], jnp.float32)
    for value in (x, x.at[0, 0].set(0.5), x.astype(jnp.bfloat16)):
        for keep in (None, jnp.asarray(True), jnp.asarray(False)):
            got = jax.jit(cpu.fusion_barrier)(value, keep)
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(np.asarray(got, np.float32),
                                          np.asarray(value, np.float32))
    assert bool(cpu.keep_predicate(x[1])) and not bool(cpu.keep_predicate(x))
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(cpu.fusion_barrier(v) * v))(x[1]),
                                  2 * x[1])
