"""The building blocks of config checks: reading and writing a dotted field, and the one-line
`ConfigError` that names the field, the value given and what is allowed.

Imports nothing from amcl_jax, so the config, the AMCL forms and every method's own checks can
use it without importing each other (`amcl_jax.config` re-exports these names).
"""

from __future__ import annotations

from typing import Any

import ml_collections


class ConfigError(ValueError):
    """An invalid config value; the message is one line naming the field and what is allowed."""


def get_field(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of `field` ("section.name", or a top-level name)."""
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value


def fail(field: str, value, allowed: str) -> None:
    """Raises the one-line ConfigError of an invalid `field`."""
    raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def one_of(config: ml_collections.ConfigDict, field: str, allowed) -> None:
    value = get_field(config, field)
    if value not in allowed:
        fail(field, value, "allowed values are " + ", ".join(repr(a) for a in allowed))


def positive_integer(config: ml_collections.ConfigDict, field: str) -> None:
    value = get_field(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(field, value, "must be an integer >= 1")
