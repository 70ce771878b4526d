"""TensorFlow, imported once for the input pipeline: quiet, and kept off accelerators.

TF only feeds data here; JAX owns the GPUs/TPUs, so TF must never allocate accelerator memory.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices elsewhere; nothing left to hide.
    pass

__all__ = ["tf"]
