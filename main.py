"""Command-line entry point.

    python main.py --config=configs/quickstart.py --workdir=runs/quickstart
    python main.py --config=configs/cifar10_amcl_simclr.py --config.batch_size=256 --workdir=W

Everything else lives in importable functions (`amcl_jax.train.train_and_evaluate`).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/quickstart.py:method=simclr,amcl=true.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and summary.json are written.")
flags.DEFINE_enum("mode", "train", ["train", "linear_probe", "knn", "figures"],
                  "train: pretrain (needs --config). linear_probe, knn, figures: evaluate the "
                  "checkpoint in --workdir with its own config.json (amcl_jax/evaluate).")
config_flags.DEFINE_config_file(
    "probe", None, "--mode=linear_probe options: configs/linear_probe.py (the default).")
flags.DEFINE_integer("knn_k", None, "--mode=knn: k (default: the run's eval.knn_k).")
flags.DEFINE_float("knn_temperature", None, "--mode=knn: T (default: eval.knn_temperature).")
flags.DEFINE_string("feature_layer", "backbone", "--mode=knn: backbone, head<c> or heads.")
flags.DEFINE_integer("step", None, "--mode=knn/figures: checkpoint step (default: newest).")
flags.mark_flags_as_required(["workdir"])


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        _fail(f"--workdir={workdir!r} is not writable: {e.strerror}")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config-file argument is one `error:` line, no traceback."""
    try:
        remaining = FLAGS(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        # A config file's get_config() error arrives with its traceback: keep the flag and the
        # exception line ("flag --config=...: ValueError: config argument amcl='maybe': ...").
        _fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
    error = getattr(FLAGS["config"].value, "_error", None)  # A config file that cannot be read.
    if error is not None:
        _fail(f"--config={FLAGS['config'].config_filename}: cannot load the config file "
              f"({type(error).__name__})")
    return remaining


class _WithoutOrbaxInfo(std_logging.Filter):
    """Orbax logs some 70 INFO lines for every checkpoint it writes, which would bury the run's
    own lines; its warnings and errors still pass."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return (record.levelno >= std_logging.WARNING
                or f"{os.sep}orbax{os.sep}" not in record.pathname)


def main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_WithoutOrbaxInfo())
    from amcl_jax.distributed import DistributedSetupError, finish, initialize_from_environment

    try:  # Before anything touches a device: a multi-host run must see every host's devices.
        initialize_from_environment()
    except DistributedSetupError as e:
        _fail(str(e))
    _run()  # An error exits from inside (`_fail`), leaving the peers to the runtime's error path.
    finish()  # Multi-process: all processes leave together (no-op on one).


def _run() -> None:
    import jax

    from amcl_jax.config import ConfigError, validate_config
    from amcl_jax.data import UnreadableImageError
    from amcl_jax.train import DamagedCheckpointError, NonFiniteError, train_and_evaluate

    if FLAGS.mode != "train":
        from amcl_jax.evaluate.cli import run_mode

        try:
            run_mode(FLAGS.mode, FLAGS.workdir, probe=FLAGS.probe, knn_k=FLAGS.knn_k,
                     knn_temperature=FLAGS.knn_temperature, feature_layer=FLAGS.feature_layer,
                     step=FLAGS.step)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
        return
    if FLAGS.config is None:
        _fail("--config is required for --mode=train")
    config = FLAGS.config
    try:
        validate_config(config, num_devices=jax.device_count())
    except ConfigError as e:
        _fail(str(e))
    _check_workdir(FLAGS.workdir)
    logging.info("devices: %s", jax.devices())
    try:
        summary = train_and_evaluate(config, FLAGS.workdir)
    except ConfigError as e:
        _fail(str(e))
    except (NonFiniteError, DamagedCheckpointError, UnreadableImageError) as e:
        _fail(str(e), code=1)
    if summary.get("preempted"):
        return
    print(f"kNN top-1: final {100 * summary['knn_top1']:.2f}%, best "
          f"{100 * summary['knn_top1_best']:.2f}%, random init "
          f"{100 * summary['knn_top1_init']:.2f}%  ->  {FLAGS.workdir}/summary.json", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
