"""`amcl_jax.reproduce` at smoke scale: the three output files, skipped and resumed rows."""

import json
import os

import pytest

from amcl_jax import reproduce, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_TABLES = ("augmentations", "heads", "temperature", "amcl_choices")

TINY_SPEC = '''
from amcl_jax.reproduce import Published, Row, Table


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
        base = reproduce.scale_config(scale)
        assert len(table.seeds[scale]) >= 1
        runnable = []
        for row in table.rows:
            config, why_not = reproduce.row_config(base, table, scale, row, 0)
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
        "done", reproduce.UNAVAILABLE_METHOD,
        f"{reproduce.UNAVAILABLE_FIELD}: amcl.no_such_field"]
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


def test_a_changed_config_is_refused(tmp_path):
    spec = tmp_path / "tiny.py"
    spec.write_text(TINY_SPEC)
    table = reproduce.load_table(str(spec))
    row = table.rows[0]
    config, _ = reproduce.row_config(reproduce.scale_config("smoke"), table, "smoke", row, 0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"seed": 123}))
    with pytest.raises(ValueError, match="different config"):
        reproduce.run_one(config, str(run_dir), linear_probe=False)


def test_aggregate_uses_sample_std_in_percent():
    stats = reproduce._aggregate([0.5, 0.7])
    assert stats["mean"] == pytest.approx(60.0) and stats["std"] == pytest.approx(14.1421356)
    assert reproduce._aggregate([0.5])["std"] is None
