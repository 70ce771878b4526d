"""Regenerate a table of the paper with one command, our numbers beside the published ones.

    python -m amcl_jax.reproduce --table=configs/paper/augmentations.py --scale=cpu \
        --data_dir=/data/cifar10-jpeg.tar.gz --methods=simclr --workdir=runs/table_aug

A table spec (`amcl_jax/tables/<table>.py`, `--table=<table>` or `--table=configs/paper/<table>.py`;
or a file of one's own; `get_table() -> Table`) lists rows: a method, AMCL on
or off, config overrides (augmentation letters, number of heads...), and the published value to
compare with. Every row starts from its method's own config (`recipes.method_config`:
`amcl_jax/recipes/cifar10_<method>.py` or `cifar10_amcl_<method>.py`, with that method's heads,
learning rate and temperature bounds), then takes the scale's sizes, `--set`, the table's and the
row's overrides. `reproduce` pretrains every (row, seed) in `<workdir>/runs/<row>/seed<s>/`:

- a run whose `summary.json` exists is finished and skipped; an interrupted run resumes from its
  checkpoint (the trainer auto-resumes), so re-running the command continues where it stopped;
- a row whose method is not registered (`amcl_jax.methods`) or has no config file (BYOL with
  AMCL) is reported "method not available", a row overriding a config field that does not exist
  "config field not available";
- a preempted run (SIGTERM) checkpoints and ends the command with one line; the same command
  continues;
- per row, mean +- std (sample std, ddof=1) over seeds of the kNN top-1 (best over evaluations
  and final), optionally of a linear probe; written to `table.md`, `table.json` and `table.png`.

Scales (`scales.scale_config`):
  full   the paper's protocol, the method's config unchanged: CIFAR-10, ResNet-18 (CIFAR
         stem), batch 512, 800 epochs, kNN k=200 T=0.1 on the full train/test splits every 20
         epochs, the method's heads and learning rate of the released code.
  cpu    fits a 2-core CPU: a fixed 10,000-image subset of the CIFAR-10 training split,
         ResNet-18 at width 0.25 (CIFAR stem), projector 128-64 (the method's number of layers
         and predictor), batch 128, 300 steps (~3.8 epochs
         of the subset), kNN on that 10,000-image bank and 2,000 test queries at steps 0, 150
         and 300; about 5-10 minutes per run on 2 idle cores (estimated from CPU time, ~3 CPU-s per
         step; far below the paper's accuracy, meant to compare rows with each other).
  cpu_long  the `cpu` scale at 3,000 steps (~38 epochs of the subset), kNN every 300 steps;
         about 1-2 hours per run on 2 cores.
  smoke  seconds per run (tests): digits at 8x8, ResNet-18 at width 0.125, 4 steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np

from amcl_jax.config import set_field
from amcl_jax.scales import (
    SCALES,
    check_overrides,
    probe_config_for_scale,
    row_config,
    scale_config,
    select_rows,
    table_seeds,
)
from amcl_jax.table_outputs import protocol_text, write_outputs
from amcl_jax.tables import Table, load_table

METRICS = ("knn_top1_best", "knn_top1")


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def _config_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def run_one(config: ml_collections.ConfigDict, run_dir: str, *, linear_probe: bool,
            probe_config=None, log=print) -> dict[str, Any]:
    """Pretrains (or resumes, or skips) one (row, seed); returns its summary (+ linear probe)."""
    from amcl_jax import train
    from amcl_jax.workdir import CONFIG_FILE, config_changes

    summary_path = os.path.join(run_dir, "summary.json")
    config_path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        if any(config_changes(previous, config)):  # Form fields compared as resolved.
            raise ValueError(
                f"{run_dir} was run with a different config (another scale, data_dir or spec): "
                "use a fresh --workdir or delete that folder")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        log(f"  finished earlier: {run_dir}")
    else:
        resumed = os.path.isdir(os.path.join(run_dir, "checkpoints"))
        log(f"  {'resuming' if resumed else 'running'}: {run_dir}")
        summary = train.train_and_evaluate(config, run_dir)
        if summary.get("preempted"):
            raise Preempted(run_dir)
    if linear_probe:
        from amcl_jax.evaluate import linear_probe as probe_lib

        probe_path = os.path.join(run_dir, probe_lib.RESULT_FILE)
        if os.path.exists(probe_path):
            with open(probe_path) as f:
                probe = json.load(f)
        else:
            probe = probe_lib.run_linear_probe(run_dir, probe_config)
        summary = dict(summary, linear_probe_top1=probe["top1"], linear_probe_top5=probe["top5"])
    return summary


class Preempted(Exception):
    """A run stopped on a preemption signal after writing its checkpoint."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(f"preempted during {run_dir}; its checkpoint is written: run the same "
                         "command again to continue")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class _TableProgress:
    """"run i of n (row, seed), elapsed, ETA for the table" before each run; the ETA is the mean
    time of the runs trained by this command (runs finished earlier take no time) times the runs
    left, the current one included."""

    def __init__(self, num_runs: int, log) -> None:
        self.num_runs, self.log = num_runs, log
        self.start = time.time()
        self.done = 0
        self.trained_seconds, self.trained = 0.0, 0
        self._run_start, self._counts = 0.0, False

    def started(self, row: str, seed: int, finished_earlier: bool) -> None:
        elapsed = time.time() - self.start
        left = self.num_runs - self.done
        eta = (_minutes(self.trained_seconds / self.trained * left) if self.trained
               else "unknown")
        self.log(f"run {self.done + 1} of {self.num_runs} ({row}, seed {seed}), elapsed "
                 f"{_minutes(elapsed)}, ETA {eta} for the table")
        self._run_start, self._counts = time.time(), not finished_earlier

    def finished(self) -> None:
        self.done += 1
        if self._counts:
            self.trained_seconds += time.time() - self._run_start
            self.trained += 1


def _aggregate(values: list[float]) -> dict[str, Any]:
    values = [100.0 * v for v in values]
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "per_seed": values, "num_seeds": len(values)}


def reproduce(table: Table, scale: str, workdir: str, *, data_dir: str = "",
              seeds: tuple[int, ...] | None = None, methods: tuple[str, ...] | None = None,
              rows: tuple[str, ...] | None = None, linear_probe: bool = False,
              overrides: dict[str, Any] | None = None, command: str = "",
              log=print) -> dict[str, Any]:
    """Runs every selected row x seed and writes table.md/json/png; returns the table dict.

    methods: keep only rows of these methods; rows: keep rows whose name contains one of these
    strings; overrides: extra "section.field" values for every row (after the scale's).
    Raises `Preempted` when a run is preempted (after its checkpoint).
    """
    check_overrides(scale, overrides)
    base = scale_config(scale, data_dir)  # The protocol text's.
    for key, value in (overrides or {}).items():
        set_field(base, key, value)
    seeds = tuple(seeds) if seeds else table_seeds(table, scale)
    selected = select_rows(table, methods, rows)
    os.makedirs(workdir, exist_ok=True)
    probe_config = probe_config_for_scale(scale) if linear_probe else None
    results = []
    start = time.time()
    num_runs = len(seeds) * sum(
        row_config(table, scale, row, seeds[0], data_dir=data_dir, overrides=overrides)[0]
        is not None for row in selected)
    progress = _TableProgress(num_runs, log)
    for index, row in enumerate(selected):
        log(f"[{index + 1}/{len(selected)}] {row.name}")
        entry: dict[str, Any] = {
            "name": row.name, "label": row.label, "method": row.method, "amcl": row.amcl,
            "overrides": dict(row.overrides), "seeds": list(seeds),
            "published": None if row.published is None else dataclasses.asdict(row.published),
        }
        config, why_not = row_config(table, scale, row, seeds[0], data_dir=data_dir,
                                     overrides=overrides)
        if config is None:
            log(f"  skipped: {why_not}")
            entry.update(status=why_not, ours=None, config=None)
            results.append(entry)
            continue
        from amcl_jax.state import NonFiniteError

        summaries = []
        try:
            for seed in seeds:
                config, _ = row_config(table, scale, row, seed, data_dir=data_dir,
                                       overrides=overrides)
                run_dir = os.path.join(workdir, "runs", row.name, f"seed{seed}")
                progress.started(row.name, seed,
                                 os.path.exists(os.path.join(run_dir, "summary.json")))
                summaries.append(run_one(config, run_dir, linear_probe=linear_probe,
                                         probe_config=probe_config, log=log))
                progress.finished()
        except NonFiniteError as error:  # One diverged row does not stop the table.
            log(f"  failed: {error}")
            entry.update(status=f"failed: {error}", ours=None, config=None)
            results.append(entry)
            continue
        config_dict = _config_json(config)
        config_dict.pop("seed")
        ours = {metric: _aggregate([s[metric] for s in summaries]) for metric in METRICS}
        if linear_probe:
            for metric in ("linear_probe_top1", "linear_probe_top5"):
                ours[metric] = _aggregate([s[metric] for s in summaries])
        entry.update(status="done", ours=ours, config=config_dict,
                     steps=int(summaries[0]["steps"]))
        results.append(entry)
    document = {
        "table": table.name, "title": table.title, "scale": scale, "note": table.note,
        "protocol": protocol_text(base, scale, linear_probe),
        "command": command or f"reproduce(table={table.name!r}, scale={scale!r})",
        "seconds": time.time() - start,
        "rows": results,
    }
    write_outputs(document, table, workdir)
    return document


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def main(argv=None) -> int:
    import argparse

    from amcl_jax.errors import UsageParser, usage_call

    parser = UsageParser(prog="python -m amcl_jax.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True,
                        help="a table's name (amcl_jax/tables: e.g. heads) or a spec file")
    parser.add_argument("--scale", required=True, choices=SCALES)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", default="", help="config.data.data_dir for every row")
    parser.add_argument("--seeds", default="", help="comma-separated; default: the table's")
    parser.add_argument("--methods", default="", help="comma-separated; default: all rows")
    parser.add_argument("--rows", default="", help="keep rows whose name contains one of these")
    parser.add_argument("--linear_probe", action="store_true",
                        help="also run a linear probe on every run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field for every row, e.g. total_steps=300")
    parser.add_argument("--dry_run", action="store_true", help="list the runs and stop")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    table = usage_call("--table", load_table, args.table)
    # Not ml_collections' config_flags (main.py's): those bind one ConfigDict at flag definition,
    # and a table's rows start from several methods' configs, chosen after the table is read; the
    # same "field=value" pairs apply to each of them, with values parsed as JSON.
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # A plain string, e.g. data.augmentations=abc.
    seeds = usage_call("--seeds", lambda: tuple(int(s) for s in _split(args.seeds) or ()) or None)
    usage_call("--set", check_overrides, args.scale, overrides)
    usage_call("--methods/--rows", select_rows, table, _split(args.methods), _split(args.rows))
    if not seeds:
        usage_call("--seeds", table_seeds, table, args.scale)
    if args.dry_run:
        check_overrides(args.scale, overrides)
        for row in select_rows(table, _split(args.methods), _split(args.rows)):
            config, why_not = row_config(table, args.scale, row, 0, data_dir=args.data_dir,
                                         overrides=overrides)
            print(f"{row.name}: {why_not or 'runs'} x seeds "
                  f"{list(seeds or table_seeds(table, args.scale))}")
        return 0
    try:
        reproduce(table, args.scale, args.workdir, data_dir=args.data_dir, seeds=seeds,
                  methods=_split(args.methods), rows=_split(args.rows),
                  linear_probe=args.linear_probe, overrides=overrides,
                  command=" ".join(["python -m amcl_jax.reproduce", *(argv or sys.argv[1:])]))
    except (Preempted, KeyboardInterrupt) as stop:
        # One line, no traceback: finished runs are kept and the same command continues.
        print(f"reproduce: {stop or 'interrupted'}", file=sys.stderr, flush=True)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    print(f"wrote {os.path.join(args.workdir, 'table.md')}, table.json, table.png")
    return 0


if __name__ == "__main__":
    from amcl_jax.errors import run_command

    sys.exit(run_command(main))
