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

Scales (`scale_config`):
  full   the paper's protocol, the method's config unchanged: CIFAR-10, ResNet-18 (CIFAR
         stem), batch 512, 800 epochs, kNN k=200 T=0.1 on the full train/test splits every 20
         epochs, the method's heads and learning rate of the released code.
  cpu    fits a 2-core CPU: a fixed 10,000-image subset of the CIFAR-10 training split,
         ResNet-18 at width 0.25 (CIFAR stem), projector 128-64 (the method's number of layers
         and predictor), batch 128, 300 steps (~3.8 epochs
         of the subset), kNN on that 10,000-image bank and 2,000 test queries at steps 0, 150
         and 300; about 5-10 minutes per run on 2 idle cores (estimated from CPU time, ~3 CPU-s per
         step; far below the paper's accuracy, meant to compare rows with each other).
  smoke  seconds per run (tests): digits at 8x8, ResNet-18 at width 0.125, 4 steps.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np

from amcl_jax import recipes
from amcl_jax.config import set_field

SCALES = ("full", "cpu", "smoke")
METRICS = ("knn_top1_best", "knn_top1")
# What each scale changes in a method's config ("full" is the config itself); a method's own
# fields add its `scaled_sizes[scale]` (amcl_jax/methods/).
SCALE_OVERRIDES: dict[str, dict[str, Any]] = {
    "full": {},
    "cpu": {
        "data.max_train_examples": 10_000, "model.width": 0.25,
        "projector.hidden_dim": 128, "projector.out_dim": 64, "amcl.temperature_hidden_dim": 64,
        "batch_size": 128, "total_steps": 300, "log_every_steps": 25, "eval.every_steps": 150,
        "eval.max_query_examples": 2000, "checkpoint.every_steps": 50,
    },
    "smoke": {
        "data.dataset": "digits", "data.image_size": 8, "data.load_size": 8,
        "model.width": 0.125, "projector.hidden_dim": 16, "projector.out_dim": 8,
        "predictor.hidden_dim": 16, "amcl.temperature_hidden_dim": 8, "batch_size": 16,
        "total_steps": 4, "log_every_steps": 2, "eval.every_steps": 2, "eval.batch_size": 64,
        "eval.knn_k": 5, "eval.max_bank_examples": 200, "eval.max_query_examples": 100,
        "checkpoint.every_steps": 2,
    },
}
UNAVAILABLE_METHOD = "method not available"
UNAVAILABLE_FIELD = "config field not available"


@dataclasses.dataclass(frozen=True)
class Published:
    """A number from the paper, in percent; `approximate` for values read off the poster's plots."""

    mean: float
    std: float | None = None
    approximate: bool = False
    source: str = ""
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: a method, AMCL on/off and config overrides ("section.field": value)."""

    method: str
    amcl: bool
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    published: Published | None = None
    label: str = ""  # Shown in the table; default: built from the overrides.

    @property
    def name(self) -> str:
        parts = [self.method, "amcl" if self.amcl else "base"]
        parts += [f"{key.split('.')[-1]}={value}" for key, value in self.overrides.items()]
        return "-".join(str(p).replace(" ", "").replace("/", "_") for p in parts)


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    rows: tuple[Row, ...]
    seeds: dict[str, tuple[int, ...]]  # Per scale.
    columns: tuple[str, ...] = ()  # Override fields shown as columns (besides method, AMCL).
    plot_x: str | None = None  # An override field for the x axis of table.png (else bars).
    note: str = ""
    # Per-scale config overrides applied to every row (e.g. a table at another dataset).
    scale_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
def scale_config(scale: str, data_dir: str = "", *, method: str = "simclr",
                 amcl: bool = False) -> ml_collections.ConfigDict:
    """`method`'s own config (`recipes.method_config`) at `scale` (module docstring)."""
    from amcl_jax import methods

    if scale not in SCALES:
        raise ValueError(f"--scale={scale!r}: allowed values are {', '.join(SCALES)}")
    config = recipes.method_config(method, amcl)
    sizes = methods.get_method(method).scaled_sizes.get(scale, {})
    for key, value in {**SCALE_OVERRIDES[scale], **sizes}.items():
        set_field(config, key, value)
    if data_dir:
        config.data.data_dir = data_dir
    return config


def probe_config_for_scale(scale: str) -> ml_collections.ConfigDict:
    from amcl_jax.evaluate.linear_probe import default_probe_config

    probe = default_probe_config()
    probe.epochs = {"full": 100, "cpu": 30, "smoke": 2}[scale]
    if scale == "smoke":
        probe.batch_size = 64
    return probe


def _has_field(config: ml_collections.ConfigDict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def row_config(table: Table, scale: str, row: Row, seed: int, *, data_dir: str = "",
               overrides: dict[str, Any] | None = None
               ) -> tuple[ml_collections.ConfigDict | None, str]:
    """(config, "") for a runnable (row, seed), or (None, why not).

    The row's method config at `scale`, then `overrides` (`--set`), the table's overrides for the
    scale and the row's own.
    """
    from amcl_jax import methods

    if row.method not in methods.available() or (
            recipes.recipe_name(row.method, row.amcl) not in recipes.names()):
        return None, UNAVAILABLE_METHOD
    config = scale_config(scale, data_dir, method=row.method, amcl=row.amcl)
    config.seed = seed
    for key, value in {**(overrides or {}), **table.scale_overrides.get(scale, {}),
                       **row.overrides}.items():
        if not _has_field(config, key):
            return None, f"{UNAVAILABLE_FIELD}: {key}"
        set_field(config, key, value)
    from amcl_jax.config import ConfigError, validate_config

    try:
        validate_config(config)
    except ConfigError as error:
        return None, f"invalid config: {error}"
    return config, ""


def select_rows(table: Table, methods: tuple[str, ...] | None = None,
                rows: tuple[str, ...] | None = None) -> list[Row]:
    """The rows of these methods (all when None) whose name contains one of `rows` (any when
    None); ValueError when none is left."""
    selected = [r for r in table.rows
                if (not methods or r.method in methods)
                and (not rows or any(s in r.name for s in rows))]
    if not selected:
        raise ValueError("no table row matches --methods/--rows")
    return selected


def check_overrides(scale: str, overrides: dict[str, Any] | None) -> None:
    """ValueError naming the first `--set` field that no config has."""
    base = scale_config(scale)
    for key in overrides or {}:
        if not _has_field(base, key):
            raise ValueError(f"override {key!r} is not a config field")


def load_table(path: str) -> Table:
    """`get_table()` of a table spec: a file given by path, or a packaged table by name
    (`amcl_jax/tables/<name>.py`, e.g. "heads"). `configs/paper/<name>.py` where no such file is
    (an installed package run elsewhere) is the packaged table of that name, as that file is."""
    from amcl_jax import tables

    name = None
    if not os.path.exists(path):
        head, base = os.path.split(path)
        if not head and not path.endswith(".py"):
            name = path
        elif os.path.normpath(head) == os.path.join("configs", "paper") and base.endswith(".py"):
            name = base[:-3] if base[:-3] in tables.names() else None
    if name is not None:
        if name not in tables.names():
            raise FileNotFoundError(f"--table={path!r}: no such file or packaged table; the "
                                    f"tables: {', '.join(tables.names())}")
        module = importlib.import_module(f"{tables.__name__}.{name}")
    else:
        try:
            module = recipes.load_python_file(path, "amcl_table_")
        except FileNotFoundError:
            raise FileNotFoundError(f"--table={path!r} is not a Python file") from None
    table = module.get_table()
    names = [row.name for row in table.rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"table {table.name!r} has duplicate rows: {duplicates}")
    return table


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
    seeds = tuple(seeds) if seeds else tuple(table.seeds[scale])
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
# Outputs
# --------------------------------------------------------------------------------------------
def protocol_text(config: ml_collections.ConfigDict, scale: str, linear_probe: bool) -> str:
    cap = lambda n, what: f"all {what}" if n <= 0 else f"{n} {what}"  # noqa: E731
    train_size = config.data.get("max_train_examples", -1)
    bank = config.eval.max_bank_examples
    if config.data.eval_train_split == config.data.train_split and train_size > 0:
        # The trainer's bank is then the pretraining subset itself (train.py).
        bank = train_size if bank <= 0 else min(bank, train_size)
        bank_text = f"the {bank} pretraining images"
    else:
        bank_text = f"{cap(bank, 'images')} of `{config.data.eval_train_split}`"
    epochs = (f"{config.num_epochs} epochs" if config.total_steps < 0
              else f"{config.total_steps} steps")
    text = (
        f"Scale `{scale}`: pretraining on {config.data.dataset} "
        f"({cap(train_size, 'training images')} of split `{config.data.train_split}`), "
        f"{config.model.name} (width {config.model.width}, {config.model.stem} stem) at "
        f"{config.data.image_size}x{config.data.image_size}, batch {config.batch_size}, {epochs}, "
        f"{config.optimizer.name} with a {config.optimizer.schedule} schedule; every row "
        f"starts from its method's own config (heads, learning rate of the released code). "
        f"Metric: weighted kNN top-1 (%) with "
        f"k={config.eval.knn_k}, T={config.eval.knn_temperature}, cosine similarity on "
        f"L2-normalised backbone features, bank = {bank_text}, queries = "
        f"{cap(config.eval.max_query_examples, 'images')} of `{config.data.eval_test_split}`, "
        f"evaluated every {config.eval.every_steps} steps and at the end; 'best' is the best "
        f"over those evaluations (the paper's protocol), 'final' the last. Mean +- sample std "
        f"(ddof=1) over seeds. Published numbers: the paper's CIFAR-10, ResNet-18, 800-epoch "
        f"results (~ marks values read off the poster's plots, +-0.2)."
    )
    if linear_probe:
        text += (" Linear probe: frozen encoder (inference-mode BatchNorm), standardised "
                 "un-augmented backbone features, SGD + cosine, top-1/top-5 on the test split.")
    if scale != "full":
        text += (f" The `{scale}` scale is far smaller than the paper's: compare rows with each "
                 "other, not with the published column.")
    return text


def _fmt(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if stats["std"] is None:
        return f"{stats['mean']:.2f} (1 seed)"
    return f"{stats['mean']:.2f} +- {stats['std']:.2f}"


def _fmt_published(published: dict[str, Any] | None) -> str:
    if published is None:
        return "-"
    text = ("~" if published["approximate"] else "") + f"{published['mean']:.2f}"
    if published["std"] is not None:
        text += f" +- {published['std']:.2f}"
    return text


def _row_label(row: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    cells = [row["method"], "yes" if row["amcl"] else "no"]
    cells += [str(row["overrides"].get(c, "")) for c in columns]
    return cells


def write_outputs(document: dict[str, Any], table: Table, workdir: str) -> None:
    with open(os.path.join(workdir, "table.json"), "w") as f:
        json.dump(document, f, indent=2)
    columns = tuple(table.columns)
    has_labels = any(r["label"] for r in document["rows"])
    header = ["method", "AMCL", *[c.split(".")[-1] for c in columns], *["row"] * has_labels,
              "kNN top-1 best (ours)", "kNN top-1 final (ours)", "published"]
    has_probe = any(r["ours"] and "linear_probe_top1" in r["ours"] for r in document["rows"])
    if has_probe:
        header[-1:-1] = ["linear top-1 (ours)", "linear top-5 (ours)"]
    lines = [f"# {document['title']}", "", document["protocol"], ""]
    if document["note"]:
        lines += [document["note"], ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in document["rows"]:
        ours = row["ours"] or {}
        cells = _row_label(row, columns) + [row["label"]] * has_labels
        if row["status"] != "done":
            cells += [row["status"], "-"]
        else:
            cells += [_fmt(ours["knn_top1_best"]), _fmt(ours["knn_top1"])]
        if has_probe:
            cells += [_fmt(ours.get("linear_probe_top1")), _fmt(ours.get("linear_probe_top5"))]
        published = row["published"]
        pub = _fmt_published(published)
        if published and published.get("note"):
            pub += f" ({published['note']})"
        cells.append(pub)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{document['command']}`", ""]
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write("\n".join(lines))
    plot_table(document, table, os.path.join(workdir, "table.png"))


def plot_table(document: dict[str, Any], table: Table, path: str) -> None:
    """Ours (mean +- std, solid) vs published (hollow markers): a line per series over
    `table.plot_x` values, or horizontal bars per row when the table has no x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["rows"]
    metric = "knn_top1_best"
    if table.plot_x:
        xs = list(dict.fromkeys(str(r["overrides"].get(table.plot_x)) for r in rows))
        series: dict[str, list[dict]] = {}
        for r in rows:
            key = f"{r['method']}{' + AMCL' if r['amcl'] else ''}"
            series.setdefault(key, []).append(r)
        # Below full scale our numbers sit far under the paper's: separate panels keep both
        # readable.
        together = document["scale"] == "full"
        fig, axes = plt.subplots(1, 1 if together else 2, figsize=(7.5 if together else 11, 4.5),
                                 squeeze=False)
        ax, ax_published = axes[0][0], axes[0][0 if together else 1]
        for i, (key, members) in enumerate(series.items()):
            color = f"C{i % 10}"
            points = [(xs.index(str(r["overrides"].get(table.plot_x))), r) for r in members]
            done = [(x, r["ours"][metric]) for x, r in points if r["ours"]]
            if done:
                ax.errorbar([x for x, _ in done], [s["mean"] for _, s in done],
                            yerr=[s["std"] or 0.0 for _, s in done], color=color, marker="o",
                            capsize=3, label=f"{key} (ours)")
            published = [(x, r["published"]) for x, r in points if r["published"]]
            if published:
                ax_published.plot([x for x, _ in published], [p["mean"] for _, p in published],
                                  color=color, marker="s", markerfacecolor="none",
                                  linestyle="--", label=f"{key} (published)")
        if not together:
            ax_published.set_xticks(range(len(xs)), xs)
            ax_published.set_xlabel(table.plot_x.split(".")[-1])
            ax_published.set_title("published (the paper's protocol)", fontsize=9)
            ax_published.set_ylabel("kNN top-1 (%)")
            if ax_published.get_legend_handles_labels()[0]:
                ax_published.legend(fontsize=7)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(table.plot_x.split(".")[-1])
    else:
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.5))
        labels = [r["label"] or r["name"] for r in rows]
        for y, r in enumerate(rows):
            if r["ours"]:
                s = r["ours"][metric]
                ax.barh(y, s["mean"], xerr=s["std"] or 0.0, color="C0", capsize=3,
                        label="ours" if y == 0 or "ours" not in
                        ax.get_legend_handles_labels()[1] else None)
            if r["published"]:
                ax.plot(r["published"]["mean"], y, "s", color="C3", markerfacecolor="none",
                        label="published" if "published" not in
                        ax.get_legend_handles_labels()[1] else None)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xlabel("")
    ax.set_ylabel("kNN top-1 (%), best over evaluations") if table.plot_x else ax.set_xlabel(
        "kNN top-1 (%), best over evaluations")
    ax.set_title(f"{document['title']}\n(ours, scale: {document['scale']})", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    if args.dry_run:
        check_overrides(args.scale, overrides)
        for row in select_rows(table, _split(args.methods), _split(args.rows)):
            config, why_not = row_config(table, args.scale, row, 0, data_dir=args.data_dir,
                                         overrides=overrides)
            print(f"{row.name}: {why_not or 'runs'} x seeds "
                  f"{list(seeds or table.seeds[args.scale])}")
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
