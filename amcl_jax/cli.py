"""The command line: flags, config, workdir; training and evaluation are importable functions.

    python main.py --config=configs/quickstart.py --workdir=runs/quickstart
    python main.py --config=configs/cifar10_amcl_simclr.py --config.batch_size=256 --workdir=W

(`main.py`, `python -m amcl_jax` and the `amcl-jax` console script all call `run`.) Everything
else lives in importable functions (`amcl_jax.train.train_and_evaluate`). Errors end in one
`error:` line and exit code 2 (usage) or 1 (runtime); `--debug` or `AMCL_JAX_DEBUG=1` shows the
traceback (`amcl_jax/errors.py`).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import tempfile
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from ml_collections.config_flags.config_flags import ConfigFileFlagParser  # noqa: E402


class _RecipeOrFileParser(ConfigFileFlagParser):
    """--config: a config file, read as ml_collections reads it, or a packaged recipe by name
    (`quickstart:method=moco`, amcl_jax/recipes). `configs/<name>.py` where no such file is (an
    installed package run elsewhere) is the packaged recipe of that name, as that file is."""

    def parse(self, path):
        from amcl_jax import recipes

        source, sep, arg = path.partition(":")
        name = None
        if not os.path.exists(source):
            head, base = os.path.split(source)
            if not head and not base.endswith(".py"):
                name = base
            elif os.path.normpath(head) == "configs" and base.endswith(".py"):
                name = base[:-3]
        if name is None or name not in recipes.names():
            return super().parse(path)  # A file (or a missing one: the usual error).
        try:
            config = recipes.get_config(name, arg if sep else None)
        except (TypeError, ValueError) as e:  # As ml_collections reports a config file's error.
            raise type(e)("Error whilst parsing config file:\n\n" + traceback.format_exc()) from e
        if self._lock_config:
            config.lock()
        return config


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/quickstart.py:method=simclr,amcl=true, or a "
    "recipe's name (amcl_jax/recipes), e.g. quickstart:method=moco.", lock_config=True)
FLAGS["config"].parser = _RecipeOrFileParser(name="config", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and summary.json are written.")
flags.DEFINE_enum("mode", "train", ["train", "linear_probe", "knn", "figures", "export"],
                  "train: pretrain (needs --config). linear_probe, knn, figures: evaluate the "
                  "checkpoint in --workdir with its own config.json (amcl_jax/evaluate). "
                  "export: write its encoder for other code (amcl_jax/export.py).")
config_flags.DEFINE_config_file(
    "probe", None, "--mode=linear_probe options: configs/linear_probe.py (the default).")
flags.DEFINE_integer("knn_k", None, "--mode=knn: k (default: the run's eval.knn_k).")
flags.DEFINE_float("knn_temperature", None, "--mode=knn: T (default: eval.knn_temperature).")
flags.DEFINE_string("feature_layer", "backbone", "--mode=knn: backbone, head<c> or heads.")
flags.DEFINE_integer("step", None,
                     "--mode=knn/figures/export: checkpoint step (default: newest).")
flags.DEFINE_string("format", "npz", "--mode=export: npz, msgpack, torch or safetensors.")
flags.DEFINE_bool("with_heads", False, "--mode=export: the projection heads too.")
flags.DEFINE_string("out", None, "--mode=export: the file (default: <workdir>/export/...).")
flags.DEFINE_string(
    "eval_dataset", None, "--mode=knn/linear_probe: evaluate on this dataset instead of the "
    "pretraining one (a TFDS name, digits, image_folder, or a name for the .npz or folder in "
    "--eval_data_dir): images resized to and normalised as the encoder was pretrained, classes "
    "from this data; results in knn_<dataset>.json, linear_probe_<dataset>.json.")
flags.DEFINE_string(
    "eval_data_dir", None, "--mode=knn/linear_probe: where the evaluation data are (a TFDS "
    "data_dir, an image folder or archive, a .npz); alone: the pretraining data, moved.")
flags.DEFINE_bool("print_config", False, "Print --config with the AMCL form's fields resolved "
                  "(as the run uses them and config.json records them) and exit.")
flags.DEFINE_bool("debug", False, "Show the traceback of an error (also: AMCL_JAX_DEBUG=1).")
flags.register_multi_flags_validator(
    ["workdir", "print_config"], lambda f: f["workdir"] is not None or f["print_config"],
    message="--workdir is required (except with --print_config)")
# Flags that only an evaluation mode reads: given with another mode, they would be ignored.
MODE_FLAGS = {"probe": ("linear_probe",), "knn_k": ("knn",), "knn_temperature": ("knn",),
              "feature_layer": ("knn",), "step": ("knn", "figures", "export"),
              "format": ("export",), "with_heads": ("export",), "out": ("export",),
              "eval_dataset": ("knn", "linear_probe"), "eval_data_dir": ("knn", "linear_probe"),
              "print_config": ("train",)}


def _fail(message: str, code: int = 2) -> None:
    from amcl_jax.errors import fail

    fail(message, code)


def _unknown_field(argv: list[str], error: Exception) -> str:
    """One line for ml_collections' error on a config field that does not exist (a typo)."""
    text = str(error)
    match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    suggestion, key = match.groups() if match else (None, None)
    if key is None:
        key = text.replace("\\n", "\n").splitlines()[0].strip("'\"\\ ")
    flag = next((arg for arg in argv[1:] if arg.startswith("--") and "." in arg.split("=")[0]
                 and key in arg.split("=")[0].split(".")[1:]), None)
    where = f"{flag}: " if flag else ""
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return f"{where}the config has no field {key!r}{hint}"


def _check_workdir(workdir: str) -> None:
    """Makes `workdir` and writes a file there, or fails in one line. The file's name is this
    process's own: every process of a multi-host run checks the same workdir at once."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=workdir, prefix=".write_test.") as probe:
            probe.write("ok")
            probe.flush()
    except OSError as e:
        _fail(f"--workdir={workdir!r} is not writable: {e.strerror}")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or config-file argument is one `error:` line, no traceback."""
    from amcl_jax.errors import debug_enabled

    try:
        remaining = FLAGS(argv)
    except flags.Error as e:
        if debug_enabled(argv):
            raise
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        # A config file's get_config() error arrives with its traceback: keep the flag and the
        # exception line ("flag --config=...: ValueError: config argument amcl='maybe': ...").
        _fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
    except (AttributeError, KeyError) as e:  # --config.<typo>=...: ml_collections' "Did you mean".
        if debug_enabled(argv):
            raise
        _fail(_unknown_field(argv, e))
    except SystemExit as e:  # absl's --help, --helpfull, ... print the flags, then exit 1.
        raise SystemExit(0 if e.code == 1 else e.code) from None
    error = getattr(FLAGS["config"].value, "_error", None)  # A config file that cannot be read.
    if error is not None:
        _fail(f"--config={FLAGS['config'].config_filename}: cannot load the config file "
              f"({type(error).__name__})")
    return remaining


class _WithoutOrbaxInfo(std_logging.Filter):
    """Orbax logs some 70 INFO lines for every checkpoint it writes, which would bury the run's
    own lines; its warnings and errors still pass, except those carrying a traceback (a Ctrl-C,
    a failed save), which reach main's handler as the exception (with --debug they pass)."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            return False  # Ctrl-C inside Orbax's waits: main's handler says it in one line.
        orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        if orbax and record.exc_info and not self.debug:
            # A failed save (a full disk) is logged with its traceback by each of Orbax's
            # threads, then raised here: main's handler gives the one line.
            return False
        return record.levelno >= std_logging.WARNING or not orbax


def main(argv) -> None:
    from amcl_jax.errors import debug_enabled, exit_on_error

    try:
        _main(argv)
    except (KeyboardInterrupt, Exception) as e:  # SystemExit (from _fail) passes through.
        exit_on_error(e, resume_hint="the same command", debug=FLAGS.debug or debug_enabled())


def _main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    for name, modes in MODE_FLAGS.items():
        if FLAGS[name].present and FLAGS.mode not in modes:
            _fail(f"--{name} is read by --mode={' or --mode='.join(modes)} only, not by "
                  f"--mode={FLAGS.mode}")
    if FLAGS.print_config:
        _print_config()
        return
    from amcl_jax.errors import debug_enabled

    logging.get_absl_handler().addFilter(_WithoutOrbaxInfo(FLAGS.debug or debug_enabled()))
    from amcl_jax.distributed import DistributedSetupError, finish, initialize_from_environment

    try:  # Before anything touches a device: a multi-host run must see every host's devices.
        initialize_from_environment()
    except DistributedSetupError as e:
        _fail(str(e))
    _run()  # An error exits from inside (`_fail`), leaving the peers to the runtime's error path.
    finish()  # Multi-process: all processes leave together (no-op on one).


def _print_config() -> None:
    """--print_config: the config as the run would use it; touches no workdir and no device."""
    from amcl_jax import forms
    from amcl_jax.config import validate_config

    if FLAGS.config is None:
        _fail("--print_config prints --config: give --config")
    validate_config(FLAGS.config)  # Device-count checks wait for the run.
    print(forms.resolve(FLAGS.config).to_json(indent=2), flush=True)


def _run() -> None:
    import jax

    from amcl_jax.config import ConfigError, validate_config
    from amcl_jax.train import train_and_evaluate

    if FLAGS.mode == "export":
        from amcl_jax.export import export_encoder

        try:
            result = export_encoder(FLAGS.workdir, fmt=FLAGS.format, with_heads=FLAGS.with_heads,
                                    step=FLAGS.step, out=FLAGS.out)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
        print(f"Exported step {result['step']} ({result['num_params']:,} encoder parameters, "
              f"{result['format']}) -> {result['path']}; description -> "
              f"{result['description_path']}", flush=True)
        return
    if FLAGS.mode != "train":
        from amcl_jax.evaluate.cli import run_mode

        try:
            run_mode(FLAGS.mode, FLAGS.workdir, probe=FLAGS.probe, knn_k=FLAGS.knn_k,
                     knn_temperature=FLAGS.knn_temperature, feature_layer=FLAGS.feature_layer,
                     step=FLAGS.step, eval_dataset=FLAGS.eval_dataset,
                     eval_data_dir=FLAGS.eval_data_dir,
                     # --config.<field>=... given: evaluation fields apply, others are refused.
                     config_overrides=config_flags.get_override_values(FLAGS["config"])
                     if FLAGS.config is not None else {})
        except (ConfigError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
        return
    if FLAGS.config is None:
        _fail("--config is required for --mode=train")
    config = FLAGS.config
    validate_config(config, num_devices=jax.device_count())
    _check_workdir(FLAGS.workdir)
    logging.info("devices: %s", jax.devices())
    # Errors (ConfigError: 2; data, checkpoints, a busy workdir, non-finite values: 1) reach
    # main's handler, which prints one line (amcl_jax/errors.py).
    summary = train_and_evaluate(config, FLAGS.workdir)
    if summary.get("preempted"):
        return
    init = summary["knn_top1_init"]  # None if measured with other kNN settings (resumed run).
    init_text = "other kNN settings" if init is None else f"{100 * init:.2f}%"
    print(f"kNN top-1: final {100 * summary['knn_top1']:.2f}%, best "
          f"{100 * summary['knn_top1_best']:.2f}%, random init {init_text}  ->  "
          f"{FLAGS.workdir}/summary.json", flush=True)


def run() -> None:
    """Parse sys.argv and run (exits the process, as absl's `app.run` does)."""
    import sys

    # --help lists the key flags of the program named by sys.argv[0] (main.py, amcl-jax,
    # amcl_jax/__main__.py): make this module's flags theirs.
    for flag in FLAGS.get_key_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=_parse_flags)
