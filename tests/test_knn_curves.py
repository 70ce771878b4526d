"""bench/knn_curves.py: per-step means over the seeds that reached each evaluation, gaps paired
by seed, and the files it writes, from a `reproduce` workdir made here."""

import json
import os

import pytest

from bench import knn_curves


def _run(workdir, row, seed, history):
    folder = workdir / "runs" / row / f"seed{seed}"
    os.makedirs(folder)
    (folder / "summary.json").write_text(json.dumps({"knn_history": [
        {"step": step, "knn_top1": value / 100} for step, value in history.items()]}))


def test_curves_and_paired_gaps_follow_the_seeds_that_reached_each_step(tmp_path):
    _run(tmp_path, "base", 0, {0: 29.0, 300: 40.0, 600: 45.0})
    _run(tmp_path, "base", 1, {0: 30.0, 300: 38.0, 600: 47.0})
    _run(tmp_path, "amcl", 0, {0: 29.0, 300: 41.0, 600: 48.0})
    _run(tmp_path, "amcl", 1, {0: 30.0, 300: 40.0})  # A shorter history: two evaluations.
    os.makedirs(tmp_path / "runs" / "amcl" / "seed2")  # Still going, no summary: not counted.
    out = str(tmp_path / "out" / "curves")
    report = knn_curves.main([str(tmp_path), "--reference", "base", "--rows", "amcl",
                              "--output", out])

    amcl = {p["step"]: p for p in report["curves"]["amcl"]}
    assert amcl[300]["mean"] == pytest.approx(40.5) and amcl[300]["seeds"] == [0, 1]
    assert (amcl[300]["min"], amcl[300]["max"]) == pytest.approx((40.0, 41.0))
    assert amcl[600]["mean"] == pytest.approx(48.0) and amcl[600]["seeds"] == [0]
    gaps = {g["step"]: g for g in report["gaps"]["amcl"]}
    # Paired by seed: (41 - 40, 40 - 38) at step 300; only seed 0 reached step 600.
    assert gaps[300]["per_seed"] == pytest.approx([1.0, 2.0])
    assert gaps[300]["gap"] == pytest.approx(1.5)
    assert gaps[600]["per_seed"] == pytest.approx([3.0]) and gaps[600]["seeds"] == [0]
    assert gaps[0]["gap"] == pytest.approx(0.0)

    for ext in (".json", ".md", ".png"):
        assert os.path.getsize(out + ext) > 0
    text = open(out + ".md").read()
    assert "| 300 | 0,1 | 40.50 (40.00-41.00) | +1.50 (+1.00, +2.00) |" in text
    assert "bench/knn_curves.py" in text


def test_a_row_without_runs_is_named(tmp_path):
    _run(tmp_path, "base", 0, {0: 29.0})
    with pytest.raises(FileNotFoundError, match="row 'missing' not run here"):
        knn_curves.main([str(tmp_path), "--reference", "base", "--rows", "missing",
                         "--output", str(tmp_path / "x")])


def test_an_earlier_report_supplies_the_runs_a_new_workdir_lacks(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _run(first, "base", 0, {0: 29.0, 300: 40.0})
    _run(first, "amcl", 0, {0: 29.0, 300: 41.0})
    _run(first, "base", 1, {0: 30.0, 300: 35.0})  # Rerun below: the new folder's run counts.
    earlier = str(tmp_path / "earlier")
    knn_curves.main([str(first), "--reference", "base", "--rows", "amcl", "--output", earlier])
    _run(second, "amcl", 1, {0: 30.0, 300: 40.0})
    _run(second, "base", 1, {0: 30.0, 300: 38.0})
    report = knn_curves.main([str(second), "--reference", "base", "--rows", "amcl",
                              "--output", str(tmp_path / "later"),
                              "--previous", earlier + ".json"])

    base = report["histories"]["base"]  # Seed 0 from the earlier report, seed 1 from here.
    assert {seed: list(h) for seed, h in base.items()} == {"0": ["0", "300"], "1": ["0", "300"]}
    assert [base["0"]["300"], base["1"]["300"]] == pytest.approx([40.0, 38.0])
    gaps = {g["step"]: g for g in report["gaps"]["amcl"]}
    assert gaps[300]["seeds"] == [0, 1] and gaps[300]["per_seed"] == pytest.approx([1.0, 2.0])
    with pytest.raises(FileNotFoundError, match="row 'missing' not run here nor in --previous"):
        knn_curves.main([str(second), "--reference", "base", "--rows", "missing",
                         "--output", str(tmp_path / "x"), "--previous", earlier + ".json"])
