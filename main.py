"""Command-line entry point.

    python main.py --config=configs/quickstart.py --workdir=runs/quickstart
    python main.py --config=configs/cifar10_amcl_simclr.py --config.batch_size=256 --workdir=W

Everything else lives in importable functions (`amcl_jax.train.train_and_evaluate`).
"""

from __future__ import annotations

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
flags.mark_flags_as_required(["config", "workdir"])


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


def main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    import jax

    from amcl_jax.config import ConfigError, validate_config
    from amcl_jax.train import NonFiniteError, train_and_evaluate

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
    except NonFiniteError as e:
        _fail(str(e), code=1)
    if summary.get("preempted"):
        return
    print(f"kNN top-1: final {100 * summary['knn_top1']:.2f}%, best "
          f"{100 * summary['knn_top1_best']:.2f}%, random init "
          f"{100 * summary['knn_top1_init']:.2f}%  ->  {FLAGS.workdir}/summary.json", flush=True)


if __name__ == "__main__":
    app.run(main)
