"""Test-wide settings (quiet TensorFlow, keep it off accelerators, fast XLA compiles), the one
tiny training config the tests share (`tiny_config`; `from conftest import tiny_config`) and the
one-convolution encoder of the multi-device workers (`register_conv_encoder`)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _runs import SHARED_DIR_ENV, cache_settings  # noqa: E402

from amcl_jax import models  # noqa: E402

# Tests use tiny shapes: compile time dominates, so skip most XLA optimisation passes.
jax.config.update("jax_disable_most_optimizations", True)
# ... and compile each program once per test run: `train_and_evaluate` builds its jitted
# functions anew on every call, so a resumed or repeated run would otherwise compile them again.
# One folder for the whole run: the process that loads this file first (pytest itself, or the
# xdist controller before it starts its workers) makes it and removes it at exit; the workers and
# every subprocess the tests start inherit its name (tests/_runs.py passes it on), so whichever
# process compiles a program first compiles it for all of them.
if not os.environ.get(SHARED_DIR_ENV):
    os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="amcl_jax_tests_")
    atexit.register(shutil.rmtree, os.environ[SHARED_DIR_ENV], ignore_errors=True)
for name, value in cache_settings().items():  # The subprocesses get them from _runs.run_env.
    jax.config.update(name, value)


# The longest tests (subprocess runs, 8-device compiles, tf.data statistics), about longest
# first. They start first, so each xdist worker ends on short tests and neither waits long for
# the other at the end. A name is the start of a test id from its file name on (so a file may
# move between folders); a whole file where its tests share a module fixture, kept together so
# the fixture is made once per worker. A test missing here only loses its early start.
LONG_FIRST = (
    # xdist's first two workers start on tests 1 and 3 and take 2 and 4 next: the two longest
    # are 1 and 3.
    "test_distributed.py::test_two_processes_",
    "test_distributed.py::test_main_on_8_devices_",
    "test_gpu_check.py::test_gpu_check_runs_every_phase_",
    "test_distributed.py::test_every_method_on_8_devices_equals_1_device",
    "test_data_parallel.py::test_every_method_splits_its_batch_over_8_cpu_devices",
    "test_distributed.py::test_one_process_on_two_cpu_devices_",
    "test_bench.py::test_run_end_to_end_",
    "test_reliability.py::test_kill_9_",
    "test_train.py::test_end_to_end_on_mock_data_then_resume",
    "test_data_parallel.py::test_simclr_amcl_splits_its_batch_over_a_v5e_slice",
    "test_data_parallel.py::test_sharded_parameters_",
    "test_clean_failures.py::test_a_workdir_whose_checkpoints_are_all_damaged_",
    "test_registry.py::test_training_step[resnet50w4]",
    "test_data_parallel.py::test_compile_command_writes_",
    "test_packaging.py::",
    "test_bench.py::test_loop_benchmark_",
    "test_clean_failures.py::test_a_full_disk_",
    "test_authors_form.py::test_a_baseline_is_the_same_run_in_either_form",
    "test_export.py::",
    "test_device_augment.py::test_all_letters_together",
    "test_device_augment.py::test_8_devices_",
)


def pytest_configure(config):
    # xdist's load scheduler hands each worker a quarter of its share of the tests at once (here
    # the first worker would get every long test above): one at a time instead, unless asked
    # otherwise, so the next test in line goes to whichever worker is free.
    if getattr(config.option, "maxschedchunk", False) is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.nodeid.rsplit("/", 1)[-1]
        return next((i for i, long in enumerate(LONG_FIRST) if name.startswith(long)),
                    len(LONG_FIRST))

    items.sort(key=rank)  # Stable: the rest keep their order.


def tiny_config(**overrides):
    """The default config at a size that trains in seconds on CPU: CIFAR-10 names (mock data
    under `tfds.testing.mock_data`) at 8x8, the tests' two-stage ResNet ("_resnet_test": ResNet-18's
    blocks, a third of its compile time) at width 0.125, heads 16-8, batch 8, 4
    steps with an evaluation and a checkpoint every 2; `overrides` ("section.field": value)
    last."""
    from amcl_jax.config import get_default_config

    config = get_default_config()
    config.data.dataset = "cifar10"
    config.data.download = False
    config.data.image_size = 8
    config.data.augmentations = "acde"
    config.model.name = "_resnet_test"
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


class ConvEncoder(nn.Module):
    """Conv - BatchNorm - ReLU - mean pool, round(8 * width) channels: (B, H, W, 3) -> (B, C).

    The multi-device workers' stand-in for a ResNet: one convolution to read the per-device
    batch from, a BatchNorm (global or per-device statistics) to reduce across devices, and a
    compile of a second or two. Its attributes are those `models.build_encoder` passes."""

    width: float = 1.0
    stem: str = "cifar"
    dtype: object = jnp.float32
    conv: object = None
    batch_norm_groups: int = 1
    batch_norm_group_rows: int = 0

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(round(8 * self.width), (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = models.make_norm(train=train, groups=self.batch_norm_groups,
                             group_rows=self.batch_norm_group_rows, dtype=self.dtype)()(x)
        return jnp.mean(nn.relu(x).astype(jnp.float32), axis=(1, 2))


def register_conv_encoder() -> str:
    """Registers `ConvEncoder` (for this process) and returns its `model.name`, "_conv_test"."""
    models.ENCODERS["_conv_test"] = (ConvEncoder, lambda width: round(8 * width))
    return "_conv_test"


def set_field(config, field: str, value) -> None:
    """config.<field> = value for a dotted field name ("section.name")."""
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
