"""TensorFlow for the host input pipeline: imported on first use, quiet, and kept off accelerators.

TF only feeds data here; JAX owns the GPUs/TPUs, so TF must never allocate accelerator memory.
`tf` is a stand-in that imports TensorFlow the first time one of its attributes is read, so the
modules of `amcl_jax.data` import without it: a run with views made on the accelerator
(`data.augment_on="device"`) from an in-memory source never needs TensorFlow installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType


def available() -> bool:
    """Whether TensorFlow is installed (and not blocked), without importing it."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"] is not None
    return importlib.util.find_spec("tensorflow") is not None


_MODULE: ModuleType | None = None


def _load() -> ModuleType:
    global _MODULE
    if _MODULE is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow

        try:
            tensorflow.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF already initialised its devices elsewhere; nothing to hide.
            pass
        _MODULE = tensorflow
    return _MODULE


class _LazyTensorFlow:
    """`tf.<name>` imports TensorFlow (once) and returns its attribute."""

    def __getattr__(self, name: str):
        return getattr(_load(), name)


tf = _LazyTensorFlow()


def graph_fn(fn):
    """`fn` for tf.data's `map`/`filter`, traced as written, without AutoGraph.

    AutoGraph rewrites a function's source (and that of every function it calls) so that Python
    `if`/`for` on tensors become graph ops. The input pipeline never branches in Python on a
    tensor (`tf.cond`, `tf.where` where it must), so the rewrite only costs time: it was most
    of the time taken to build the training pipeline. The graph is the same, so are the
    batches."""
    return _load().autograph.experimental.do_not_convert(fn)


__all__ = ["available", "graph_fn", "tf"]
