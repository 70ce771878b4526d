"""The paper's table specs for `python -m amcl_jax.reproduce --table=<name>`, one module per
table, each with `get_table() -> reproduce.Table`."""

from __future__ import annotations

import pkgutil


def names() -> list[str]:
    """The packaged tables' names (this package's modules), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
