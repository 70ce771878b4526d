"""The paper's table specs for `python -m amcl_jax.reproduce --table=<name>`, one module per
table, each with `get_table() -> Table`; the spec types (`Table`, `Row`, `Published`) and
`load_table`, which reads a spec by name or by path."""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from typing import Any


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


def names() -> list[str]:
    """The packaged tables' names (this package's modules), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_table(path: str) -> Table:
    """`get_table()` of a table spec: a file given by path, or a packaged table by name
    (`amcl_jax/tables/<name>.py`, e.g. "heads"). `configs/paper/<name>.py` where no such file is
    (an installed package run elsewhere) is the packaged table of that name, as that file is."""
    from amcl_jax import recipes, tables

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
