"""The scales a paper table runs at (`full`, `cpu`, `smoke`; `python -m amcl_jax.reproduce
--help` describes them) and the config of one (row, seed) at a scale."""

from __future__ import annotations

from typing import Any

import ml_collections

from amcl_jax import recipes
from amcl_jax.config import set_field
from amcl_jax.tables import Row, Table

SCALES = ("full", "cpu", "cpu_long", "smoke")
_CPU = {  # 10,000 CIFAR-10 images, ResNet-18 at width 0.25, 300 steps: minutes on 2 cores.
    "data.max_train_examples": 10_000, "model.width": 0.25,
    "projector.hidden_dim": 128, "projector.out_dim": 64, "amcl.temperature_hidden_dim": 64,
    "batch_size": 128, "total_steps": 300, "log_every_steps": 25, "eval.every_steps": 150,
    "eval.max_query_examples": 2000, "checkpoint.every_steps": 50,
}
# What each scale changes in a method's config ("full" is the config itself); a method's own
# fields add its `scaled_sizes[scale]` (amcl_jax/methods/).
SCALE_OVERRIDES: dict[str, dict[str, Any]] = {
    "full": {},
    "cpu": _CPU,
    # The `cpu` scale ten times longer (38 epochs of the subset), kNN every 300 steps.
    "cpu_long": {**_CPU, "total_steps": 3000, "eval.every_steps": 300,
                 "checkpoint.every_steps": 300, "log_every_steps": 50},
    "smoke": {
        "data.dataset": "digits", "data.image_size": 8, "data.load_size": 8,
        "model.width": 0.125, "projector.hidden_dim": 16, "projector.out_dim": 8,
        "predictor.hidden_dim": 16, "amcl.temperature_hidden_dim": 8, "batch_size": 16,
        "total_steps": 4, "log_every_steps": 2, "eval.every_steps": 2, "eval.batch_size": 64,
        "eval.knn_k": 5, "eval.max_bank_examples": 200, "eval.max_query_examples": 100,
        "checkpoint.every_steps": 2,
    },
}
# The scale whose `scaled_sizes` a method uses at each scale (its own name where not listed).
SIZES_OF = {"cpu_long": "cpu"}
UNAVAILABLE_METHOD = "method not available"
UNAVAILABLE_FIELD = "config field not available"


def scale_config(scale: str, data_dir: str = "", *, method: str = "simclr",
                 amcl: bool = False) -> ml_collections.ConfigDict:
    """`method`'s own config (`recipes.method_config`) at `scale` (module docstring)."""
    from amcl_jax import methods

    if scale not in SCALES:
        raise ValueError(f"--scale={scale!r}: allowed values are {', '.join(SCALES)}")
    config = recipes.method_config(method, amcl)
    sizes = methods.get_method(method).scaled_sizes.get(SIZES_OF.get(scale, scale), {})
    for key, value in {**SCALE_OVERRIDES[scale], **sizes}.items():
        set_field(config, key, value)
    if data_dir:
        config.data.data_dir = data_dir
    return config


def probe_config_for_scale(scale: str) -> ml_collections.ConfigDict:
    from amcl_jax.evaluate.linear_probe import default_probe_config

    probe = default_probe_config()
    probe.epochs = {"full": 100, "cpu": 30, "cpu_long": 30, "smoke": 2}[scale]
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


def table_seeds(table: Table, scale: str) -> tuple[int, ...]:
    """The table's seeds at `scale`; ValueError when it names none for that scale."""
    if scale not in table.seeds:
        raise ValueError(f"table {table.name!r} names no seeds for --scale={scale} (it has "
                         f"{', '.join(table.seeds)}): pass --seeds")
    return tuple(table.seeds[scale])


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
