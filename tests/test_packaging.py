"""The package as `pip install` (not -e) leaves it: a wheel built from the sources, installed
outside the checkout, trains from a packaged recipe by name with the checkout out of reach.

The wheel's own dependencies are not installed (`--no-deps`): the test's interpreter, whose
packages are the dev environment's, runs it with only the install folder on PYTHONPATH and its
working directory in a temporary folder, so `amcl_jax`, the recipes and the table specs can only
come from the wheel.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import _runs
import pytest

ROOT = _runs.ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """{"site": the install folder, "run": a working directory outside the checkout}."""
    pytest.importorskip("setuptools")
    base = tmp_path_factory.mktemp("packaging")
    # Build from a copy of what the wheel is made of, so the build leaves nothing (build/,
    # *.egg-info) in the checkout.
    source = base / "source"
    shutil.copytree(os.path.join(ROOT, "amcl_jax"), source / "amcl_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ["pyproject.toml", "README.md", *map(os.path.basename,
                                                     glob.glob(os.path.join(ROOT, "LICENSE*")))]:
        shutil.copy(os.path.join(ROOT, name), source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"),
                    str(source)], check=True, cwd=base, timeout=120)
    (wheel,) = glob.glob(str(base / "dist" / "*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert "amcl_jax/recipes/quickstart.py" in names and "amcl_jax/tables/heads.py" in names
    assert not any(n.startswith(("configs/", "tests/")) for n in names)
    assert "amcl-jax = amcl_jax.cli:run" in entry_points
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), wheel], check=True,
                   cwd=base, timeout=120)
    run = base / "run"
    run.mkdir()
    return {"site": str(site), "run": str(run)}


def _env(site: str) -> dict[str, str]:
    return {**_runs.run_env(1), "PYTHONPATH": site}


def test_installed_wheel_trains_from_a_packaged_recipe(installed):
    site, cwd = installed["site"], installed["run"]
    where = subprocess.run([sys.executable, "-c", "import amcl_jax; print(amcl_jax.__file__)"],
                           cwd=cwd, env=_env(site), capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(site), where.stdout
    workdir = os.path.join(cwd, "quickstart")
    flags = [f for f in _runs.TINY_FLAGS
             if not f.startswith(("--config=", "--config.checkpoint.every_steps="))]
    # The console script (its shebang is this interpreter), with the recipe given by name.
    command = [os.path.join(site, "bin", "amcl-jax"), "--config=quickstart:method=simclr",
               *flags, "--config.total_steps=2", "--config.checkpoint.every_steps=2",
               f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=cwd, env=_env(site), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + _runs.stderr_excerpt(result.stderr)
    summary = _runs.summary(workdir)
    assert (summary["steps"], summary["method"], summary["amcl"]) == (2, "simclr", True)
    assert 0.0 <= summary["knn_top1"] <= 1.0 and summary["knn_top1_init"] is not None
    assert "kNN top-1: final" in result.stdout


def test_installed_wheel_finds_tables_and_recipes_by_name(installed):
    site, cwd = installed["site"], installed["run"]
    for table in ("heads", "configs/paper/heads.py"):  # The second: no such file here.
        result = subprocess.run(
            [sys.executable, "-m", "amcl_jax.reproduce", f"--table={table}", "--scale=smoke",
             f"--workdir={os.path.join(cwd, 'table')}", "--dry_run"],
            cwd=cwd, env=_env(site), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "simclr-amcl-num_heads=3: runs" in result.stdout, result.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "amcl_jax", "--config=no_such_recipe", f"--workdir={cwd}/w"],
        cwd=cwd, env=_env(site), capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "error: --config=no_such_recipe" in unknown.stderr
