"""Test-wide settings (quiet TensorFlow, keep it off accelerators, fast XLA compiles) and the one
tiny training config the tests share (`tiny_config`; `from conftest import tiny_config`)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Tests use tiny shapes: compile time dominates, so skip most XLA optimisation passes.
jax.config.update("jax_disable_most_optimizations", True)
# ... and compile each program once per test run: `train_and_evaluate` builds its jitted
# functions anew on every call, so a resumed or repeated run would otherwise compile them again.
# One folder for the whole run: the process that loads this file first (pytest itself, or the
# xdist controller before it starts its workers) makes it and removes it at exit; the workers and
# every subprocess the tests start inherit its name (tests/_runs.py passes it on), so whichever
# process compiles a program first compiles it for all of them.
SHARED_DIR_ENV = "AMCL_JAX_TEST_SHARED_DIR"
if not os.environ.get(SHARED_DIR_ENV):
    os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="amcl_jax_tests_")
    atexit.register(shutil.rmtree, os.environ[SHARED_DIR_ENV], ignore_errors=True)
XLA_CACHE_DIR = os.path.join(os.environ[SHARED_DIR_ENV], "xla_cache")
jax.config.update("jax_compilation_cache_dir", XLA_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# A size limit turns on JAX's file lock around each cache read and write: several processes
# share the folder, and without the lock one could read an entry another is still writing.
jax.config.update("jax_compilation_cache_max_size", 16 * 1024**3)


def tiny_config(**overrides):
    """The default config at a size that trains in seconds on CPU: CIFAR-10 names (mock data
    under `tfds.testing.mock_data`) at 8x8, ResNet-18 at width 0.125, heads 16-8, batch 8, 4
    steps with an evaluation and a checkpoint every 2; `overrides` ("section.field": value)
    last."""
    from amcl_jax.config import get_default_config

    config = get_default_config()
    config.data.dataset = "cifar10"
    config.data.download = False
    config.data.image_size = 8
    config.data.augmentations = "acde"
    config.model.width = 0.125
    config.projector.hidden_dim = 16
    config.projector.out_dim = 8
    config.amcl.temperature_hidden_dim = 8
    config.batch_size = 8
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval.every_steps = 2
    config.eval.batch_size = 16
    config.eval.knn_k = 5
    config.checkpoint.every_steps = 2
    config.optimizer.learning_rate = 0.05
    for key, value in overrides.items():
        set_field(config, key, value)
    return config


def set_field(config, field: str, value) -> None:
    """config.<field> = value for a dotted field name ("section.name")."""
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
