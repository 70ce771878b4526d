"""`amcl_jax.reproduce` at smoke scale: the three output files, skipped and resumed rows."""

import json
import os

import pytest

from amcl_jax import methods, recipes, reproduce, scales, train
from amcl_jax.tables import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_TABLES = ("augmentations", "heads", "temperature", "amcl_choices")

TINY_SPEC = '''
from amcl_jax.tables import Published, Row, Table


def get_table():
    return Table(
        name="tiny", title="tiny table",
        rows=(
            Row("simclr", False, {"data.augmentations": "ae"},
                published=Published(89.76, 0.12, source="spec")),
            Row("not_a_method", False, {"data.augmentations": "ae"}),
            Row("simclr", False, {"amcl.no_such_field": 1}),
        ),
        seeds={"full": (0,), "cpu": (0,), "smoke": (0,)},
        columns=("data.augmentations",), plot_x="data.augmentations")
'''


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_paper_tables_expand_to_valid_configs(name):
    table = reproduce.load_table(os.path.join(ROOT, "configs", "paper", f"{name}.py"))
    for scale in reproduce.SCALES:
        if scale in table.seeds:
            assert len(scales.table_seeds(table, scale)) >= 1
        else:  # A scale the table names no seeds for: --seeds, said in one line.
            with pytest.raises(ValueError, match=f"no seeds for --scale={scale} .*pass --seeds"):
                scales.table_seeds(table, scale)
        runnable = []
        for row in table.rows:
            config, why_not = reproduce.row_config(table, scale, row, 0)
            assert (config is None) == bool(why_not)
            if config is not None:
                runnable.append(row)
                assert config.method == row.method and config.amcl.enabled is row.amcl
        assert any(r.method == "simclr" for r in runnable)
        if name == "temperature":  # Every ablation row runs (amcl.adaptive_temperature).
            assert len(runnable) == len(table.rows) == 5
    if name == "augmentations":
        assert len(table.rows) == 40
        published = [r.published for r in table.rows if r.published]
        assert len(published) == 20 and not any(p.approximate for p in published)


def test_smoke_table_writes_files_skips_finished_and_resumes(tmp_path, monkeypatch):
    spec = tmp_path / "tiny.py"
    spec.write_text(TINY_SPEC)
    table = reproduce.load_table(str(spec))
    workdir = str(tmp_path / "table")
    logs = []
    document = reproduce.reproduce(table, "smoke", workdir, log=logs.append)
    for name in ("table.md", "table.json", "table.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    rows = json.load(open(os.path.join(workdir, "table.json")))["rows"]
    assert [r["status"] for r in rows] == [
        "done", scales.UNAVAILABLE_METHOD,
        f"{scales.UNAVAILABLE_FIELD}: amcl.no_such_field"]
    done = rows[0]
    assert done["config"]["data"]["augmentations"] == "ae" and done["published"]["mean"] == 89.76
    assert 0.0 <= done["ours"]["knn_top1_best"]["mean"] <= 100.0
    assert done["ours"]["knn_top1"]["per_seed"] and done["steps"] == 4
    markdown = open(os.path.join(workdir, "table.md")).read()
    assert "k=5" in markdown and "89.76 +- 0.12" in markdown and "method not available" in markdown

    # A second run recomputes nothing: the finished run is read back.
    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr(train, "train_and_evaluate", must_not_train)
    again = reproduce.reproduce(table, "smoke", workdir, log=logs.append)
    assert again["rows"][0]["ours"] == document["rows"][0]["ours"]

    # An interrupted run (checkpoints, no summary.json) goes back to the trainer, which resumes
    # from its newest checkpoint (tests/test_train.py checks that resume bit-exactly).
    run_dir = os.path.join(workdir, "runs", table.rows[0].name, "seed0")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    os.remove(os.path.join(run_dir, "summary.json"))
    calls = []

    def resume(config, path):
        calls.append(path)
        assert os.path.isdir(os.path.join(path, "checkpoints"))
        return summary

    monkeypatch.setattr(train, "train_and_evaluate", resume)
    logs.clear()
    resumed = reproduce.reproduce(table, "smoke", workdir, log=logs.append)
    assert calls == [run_dir] and any(line.startswith("  resuming") for line in logs)
    assert resumed["rows"][0]["ours"] == document["rows"][0]["ours"]


def test_each_run_is_announced_with_its_place_elapsed_time_and_the_tables_eta(
        tmp_path, monkeypatch):
    spec = tmp_path / "tiny.py"
    spec.write_text(TINY_SPEC.replace('seeds={"full": (0,), "cpu": (0,), "smoke": (0,)}',
                                      'seeds={"full": (0,), "cpu": (0,), "smoke": (0, 1)}'))
    table = reproduce.load_table(str(spec))
    clock = iter(range(0, 10_000, 60))  # Every reading of the clock one minute later.
    monkeypatch.setattr(reproduce.time, "time", lambda: float(next(clock)))
    summary = {"knn_top1": 0.5, "knn_top1_best": 0.6, "steps": 4}
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, path: summary)
    monkeypatch.setattr(reproduce, "write_outputs", lambda *args: None)
    logs = []
    reproduce.reproduce(table, "smoke", str(tmp_path / "table"), log=logs.append)
    lines = [line for line in logs if line.startswith("run ")]
    name = table.rows[0].name  # The only runnable row, two seeds: 2 runs in all.
    assert lines == [f"run 1 of 2 ({name}, seed 0), elapsed 1.0 min, ETA unknown for the table",
                     f"run 2 of 2 ({name}, seed 1), elapsed 4.0 min, ETA 1.0 min for the table"]


def test_a_changed_config_is_refused(tmp_path):
    spec = tmp_path / "tiny.py"
    spec.write_text(TINY_SPEC)
    table = reproduce.load_table(str(spec))
    row = table.rows[0]
    config, _ = reproduce.row_config(table, "smoke", row, 0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"seed": 123}))
    with pytest.raises(ValueError, match="different config"):
        reproduce.run_one(config, str(run_dir), linear_probe=False)


def test_aggregate_uses_sample_std_in_percent():
    stats = reproduce._aggregate([0.5, 0.7])
    assert stats["mean"] == pytest.approx(60.0) and stats["std"] == pytest.approx(14.1421356)
    assert reproduce._aggregate([0.5])["std"] is None


METHOD_ROWS_SPEC = '''
from amcl_jax.tables import Row, Table


def get_table():
    return Table(
        name="methods", title="one row per method",
        rows=(Row("simclr", True), Row("moco", False), Row("simsiam", True),
              Row("barlow_twins", False), Row("barlow_twins", True, {"optimizer.warmup_steps": 7}),
              Row("byol", True)),
        seeds={"full": (0,), "cpu": (0,), "smoke": (0,)})
'''


def _table(tmp_path, text: str) -> Table:
    spec = tmp_path / "spec.py"
    spec.write_text(text)
    return reproduce.load_table(str(spec))


def test_full_scale_rows_are_their_methods_own_configs(tmp_path):
    """Not the default config plus a learning rate: Barlow Twins keeps its 2048-wide three-layer
    projector, SimSiam its heads, the AMCL rows their own temperature bounds."""
    table = _table(tmp_path, METHOD_ROWS_SPEC)
    for row in table.rows[:-1]:
        config, why_not = reproduce.row_config(table, "full", row, 3)
        assert why_not == "", row.name
        expected = recipes.method_config(row.method, row.amcl)
        expected.seed = 3
        for key, value in row.overrides.items():
            section, field = key.split(".")
            expected[section][field] = value
        assert config.to_dict() == expected.to_dict(), row.name
    barlow, _ = reproduce.row_config(table, "full", table.rows[3], 0)
    assert (barlow.projector.hidden_dim, barlow.projector.out_dim,
            barlow.projector.num_layers) == (2048, 2048, 3)
    # At a smaller scale the sizes shrink, the method's other settings stay.
    moco, _ = reproduce.row_config(table, "cpu", table.rows[1], 0)
    own = recipes.method_config("moco", False)
    assert moco.optimizer.learning_rate == own.optimizer.learning_rate
    assert moco.moco.temperature == own.moco.temperature and moco.model.width == 0.25
    # BYOL has no AMCL config: the row is reported, not run from another method's settings.
    assert reproduce.row_config(table, "full", table.rows[-1], 0) == (
        None, scales.UNAVAILABLE_METHOD)


def test_method_config_names_a_missing_file():
    with pytest.raises(ValueError, match="cifar10_amcl_byol.py"):
        recipes.method_config("byol", True)


def test_dry_run_honours_methods_rows_and_set(tmp_path, capsys):
    spec = tmp_path / "spec.py"
    spec.write_text(METHOD_ROWS_SPEC)
    common = ["--table", str(spec), "--scale=smoke", f"--workdir={tmp_path / 'w'}", "--dry_run"]
    assert reproduce.main([*common, "--methods=barlow_twins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "barlow_twins-base", "barlow_twins-amcl-warmup_steps=7"]
    assert reproduce.main([*common, "--rows=simsiam,moco"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == [
        "moco-base", "simsiam-amcl"]
    assert reproduce.main([*common, "--methods=simclr", "--set=optimizer.name=adamw"]) == 0
    assert "invalid config: config.optimizer.name='adamw'" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no_such_field"):
        reproduce.main([*common, "--set=amcl.no_such_field=1"])


def test_a_preempted_reproduce_ends_in_one_line(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "tiny.py"
    spec.write_text(TINY_SPEC)
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, path: {"preempted": True})
    code = reproduce.main(["--table", str(spec), "--scale=smoke",
                           f"--workdir={tmp_path / 'w'}", "--rows=simclr-base-augmentations"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 143 and len(err) == 1, err
    assert err[0].startswith("reproduce: preempted during ") and "again" in err[0]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("method", methods.available())
def test_cpu_long_is_the_cpu_scale_ten_times_longer(method):
    amcl = methods.get_method(method).supports_amcl
    short, long = (_flat(scales.scale_config(s, method=method, amcl=amcl).to_dict())
                   for s in ("cpu", "cpu_long"))
    differ = {key: (short[key], long[key]) for key in short if short[key] != long[key]}
    assert differ == {"total_steps": (300, 3000), "eval.every_steps": (150, 300),
                      "checkpoint.every_steps": (50, 300), "log_every_steps": (25, 50)}


@pytest.mark.parametrize("method", methods.available())
def test_every_method_ends_its_warm_up_early_in_a_cpu_scale_run(method):
    """A recipe's warm-up counted in its own epochs (VICReg: 1,953 steps) must not outlast the
    `cpu` scale's 300 steps: the table would compare a method that never reached its rate."""
    for amcl in {False, methods.get_method(method).supports_amcl}:
        config = scales.scale_config("cpu", method=method, amcl=amcl)
        assert config.optimizer.warmup_steps <= 0.1 * config.total_steps, (
            method, amcl, config.optimizer.warmup_steps)


@pytest.mark.parametrize("method,amcl", [
    (method.name, method.supports_amcl) for method in methods.registered()])
def test_quickstart_takes_each_methods_settings_from_its_config(method, amcl):
    """One source of per-method settings: the quickstart differs from the method's CIFAR-10
    config only in sizes (data, widths, steps), never in learning rate, layers or bounds."""
    quick = recipes.load_config_file(os.path.join(ROOT, "configs", "quickstart.py"),
                                     f"method={method},amcl={str(amcl).lower()}")
    own = recipes.method_config(method, amcl)
    quick, own = _flat(quick.to_dict()), _flat(own.to_dict())
    differ = {key for key in quick.keys() | own.keys() if quick.get(key) != own.get(key)}
    own_sizes = methods.get_method(method).scaled_sizes.get("quickstart", {})
    sizes = {"batch_size", "total_steps", "log_every_steps", "model.width",
             "projector.hidden_dim", "projector.out_dim", "optimizer.warmup_steps",
             "checkpoint.every_steps", *own_sizes}
    assert {key for key in differ if not key.startswith(("data.", "eval."))} <= sizes, differ
    assert quick["optimizer.learning_rate"] == own["optimizer.learning_rate"]
