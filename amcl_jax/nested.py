"""Nested dicts <-> flat names: {"a": {"b": 1}} <-> {"a.b": 1} (config fields, `sep="."`) or
{"a/b": array} (exported variables, `sep="/"`)."""

from __future__ import annotations

from typing import Any


def flatten(tree: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """{"a<sep>b": value} of a nested dict (leaves: anything that is not a dict)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, sep, f"{prefix}{key}{sep}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any], sep: str = ".") -> dict[str, Any]:
    """The nested dict of `flatten`'s output."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(sep)
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree
