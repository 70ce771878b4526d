"""bench/compare_seeds.py: Welch's t against its closed form, the bootstrap interval, and how
seeds from several table files merge."""

import json

import numpy as np
import pytest
from scipy import stats

from bench import compare_seeds


def _table(path, rows):
    path.write_text(json.dumps({"rows": [
        {"name": name, "seeds": sorted(values), "ours": {"knn_top1": {
            "per_seed": [values[s] for s in sorted(values)]}}} for name, values in rows.items()]}))
    return str(path)


def test_welch_matches_the_closed_form():
    a, b = np.array([36.5, 37.15, 37.45, 39.4, 37.45]), np.array([38.9, 39.8, 39.2, 38.95])
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (b.mean() - a.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    result = compare_seeds.welch(a, b)
    np.testing.assert_allclose([result["t"], result["df"]], [t, df], rtol=1e-12)
    np.testing.assert_allclose(result["p"], 2 * stats.t.sf(abs(t), df), rtol=1e-10)


def test_bootstrap_interval_brackets_the_difference_and_is_a_point_without_spread():
    a, b = [1.0, 2.0, 3.0, 4.0], [3.0, 4.5, 5.0, 6.5]
    low, high = compare_seeds.bootstrap_interval(a, b)
    assert low < np.mean(b) - np.mean(a) < high
    assert compare_seeds.bootstrap_interval([2.0, 2.0], [5.0, 5.0, 5.0]) == (3.0, 3.0)


def test_seeds_merge_across_tables_the_last_file_winning(tmp_path, capsys):
    first = _table(tmp_path / "a.json", {"base": {0: 30.0, 1: 31.0, 2: 32.0},
                                         "amcl": {0: 33.0, 1: 34.0, 2: 99.0}})
    second = _table(tmp_path / "b.json", {"amcl": {2: 35.0, 3: 36.0}})
    rows = compare_seeds.per_seed([first, second], "knn_top1")
    assert rows == {"base": {0: 30.0, 1: 31.0, 2: 32.0},
                    "amcl": {0: 33.0, 1: 34.0, 2: 35.0, 3: 36.0}}
    out = tmp_path / "ranking"
    assert compare_seeds.main([first, second, "--reference", "base", "--rows", "amcl",
                               "--output", str(out)]) == 0
    report = json.loads((tmp_path / "ranking.json").read_text())
    assert report["rows"]["amcl"]["seeds"] == [0, 1, 2, 3]
    assert report["rows"]["amcl"]["difference"] == pytest.approx(34.5 - 31.0)
    assert "| amcl | 0,1,2,3 | 34.50 +- 1.29 | +3.50 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="rows \\['moco'\\] have no results"):
        compare_seeds.compare(rows, "base", ["moco"])
