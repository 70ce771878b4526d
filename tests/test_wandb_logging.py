"""Optional Weights & Biases logging (`logging.wandb`): the same scalars as metrics.jsonl and
TensorBoard, `wandb` imported only when enabled, one error line when it is not installed.

The tests use a stand-in `wandb` module that records the calls (the real package is heavy and
optional: `pip install 'amcl-jax[wandb]'`)."""

import importlib.machinery
import json
import os
import subprocess
import sys
import types

import pytest
from conftest import tiny_config

from amcl_jax import errors, metric_writers, train
from amcl_jax.config import ConfigError, get_default_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.logged = []
        self.hparams = {}
        self.finished = False
        self.config = types.SimpleNamespace(update=self._update)

    def _update(self, values, allow_val_change=False):
        self.hparams.update(values)

    def log(self, data, step):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.runs = []

    def init(**kwargs):
        module.runs.append(_FakeRun(**kwargs))
        return module.runs[-1]
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _config(**overrides):
    return tiny_config(**{
        "data.dataset": "digits", "data.load_size": 8, "data.augmentations": "ae",
        "amcl.num_heads": 2, "total_steps": 2, "log_every_steps": 1, "eval.every_steps": 2,
        "eval.max_bank_examples": 64, "eval.max_query_examples": 32, **overrides})


def test_wandb_gets_the_scalars_of_metrics_jsonl_and_the_knn_monitor(tmp_path, fake_wandb):
    path = str(tmp_path / "run")
    train.train_and_evaluate(_config(**{"logging.wandb.enabled": True,
                                        "logging.wandb.mode": "offline",
                                        "logging.wandb.project": "tests"}), path)
    (run,) = fake_wandb.runs
    assert run.init_kwargs["mode"] == "offline" and run.init_kwargs["project"] == "tests"
    assert run.init_kwargs["dir"] == path and run.init_kwargs["name"] == "run"
    assert run.init_kwargs["entity"] is None
    with open(os.path.join(path, metric_writers.RUN_ID_FILE)) as f:
        assert run.init_kwargs["id"] == f.read().strip()
    logged = {}
    for step, scalars in run.logged:
        logged.setdefault(step, {}).update(scalars)
    with open(os.path.join(path, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            step = record.pop("step")
            assert logged[step].items() >= {k: pytest.approx(v) for k, v in record.items()}.items()
    summary = json.load(open(os.path.join(path, "summary.json")))
    for entry in summary["knn_history"]:  # The monitor's evaluations, random init included.
        assert logged[entry["step"]]["knn_top1"] == pytest.approx(entry["knn_top1"])
    assert run.hparams["amcl.negatives"] == "logsumexp"  # Resolved, not None.
    assert run.finished


def test_disabled_wandb_is_never_imported_and_leaves_the_writer_alone(monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    writer = train._LogWriter()
    assert metric_writers.with_wandb(writer, get_default_config(), "unused",
                                     is_chief=True) is writer
    assert "wandb" not in sys.modules


def test_only_the_chief_logs_and_a_resumed_run_keeps_its_id(tmp_path, fake_wandb):
    config = _config(**{"logging.wandb.enabled": True})
    writer = train._LogWriter()
    assert metric_writers.with_wandb(writer, config, str(tmp_path), is_chief=False) is writer
    first = metric_writers.with_wandb(writer, config, str(tmp_path), is_chief=True)
    second = metric_writers.with_wandb(writer, config, str(tmp_path), is_chief=True)
    first.write_scalars(3, {"loss": 1.5})
    first.close()
    assert fake_wandb.runs[0].logged == [(3, {"loss": 1.5})] and fake_wandb.runs[0].finished
    assert fake_wandb.runs[0].init_kwargs["id"] == fake_wandb.runs[1].init_kwargs["id"]
    second.close()


def test_enabled_without_wandb_is_one_error_line_naming_the_field(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # Not installed.
    with pytest.raises(ConfigError) as error:
        validate_config(_config(**{"logging.wandb.enabled": True}))
    message, code = errors.describe(error.value)
    assert code == errors.USAGE
    assert message.startswith("config.logging.wandb.enabled=True is invalid") and "wandb" in message
    with pytest.raises(ConfigError, match="config.logging.wandb.mode='cloud'"):
        validate_config(_config(**{"logging.wandb.mode": "cloud"}))
    # The command line, where the package cannot be imported: before anything is written.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nsys.modules['wandb'] = None\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), ROOT]))
    done = subprocess.run(
        [sys.executable, "main.py", "--config=configs/quickstart.py",
         "--config.logging.wandb.enabled=true", f"--workdir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: config.logging.wandb.enabled=True is invalid")
    assert not (tmp_path / "run").exists()
