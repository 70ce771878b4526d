"""Test-wide settings: quiet TensorFlow, keep it off accelerators, fast XLA compiles."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Tests use tiny shapes: compile time dominates, so skip most XLA optimisation passes.
jax.config.update("jax_disable_most_optimizations", True)
# ... and compile each program once per test session: `train_and_evaluate` builds its jitted
# functions anew on every call, so a resumed or repeated run would otherwise compile them again.
_CACHE_DIR = tempfile.mkdtemp(prefix="amcl_jax_tests_xla_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
