"""Metric writers beside clu's (log lines, TensorBoard): Weights & Biases, when asked for.

`with_wandb(writer, config, workdir, is_chief=...)` returns `writer` itself unless
`logging.wandb.enabled`; then a writer that gives every scalar and the hyperparameters to both
`writer` and a W&B run, so W&B records the same scalars as TensorBoard and metrics.jsonl, at the
same steps. Only the chief process logs to W&B. `wandb` is imported only then (install it with
`pip install 'amcl-jax[wandb]'`; `validate_config` refuses an enabled config without it).

The run's id is kept in `<workdir>/wandb_run_id`, so a resumed training continues the same W&B
run (W&B keeps its steps increasing: steps logged again after a resume from an earlier
checkpoint are dropped by W&B). Its files go to `<workdir>/wandb`; `logging.wandb.mode="offline"`
needs no network (`wandb sync <workdir>/wandb/offline-run-*` uploads them later).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

import ml_collections

RUN_ID_FILE = "wandb_run_id"


class WandbWriter:
    """clu's MetricWriter calls that training makes, sent to a W&B run."""

    def __init__(self, run) -> None:
        self.run = run

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self.run.log({key: float(value) for key, value in scalars.items()}, step=int(step))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.run.config.update(dict(hparams), allow_val_change=True)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class MultiWriter:
    """Every call to each writer in turn (other MetricWriter calls: the first writer's only)."""

    def __init__(self, writers: list) -> None:
        self.writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write_scalars(step, scalars)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write_hparams(hparams)

    def flush(self) -> None:
        for writer in self.writers:
            if hasattr(writer, "flush"):
                writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def __getattr__(self, name: str):
        return getattr(self.writers[0], name)


def _run_id(workdir: str) -> str:
    """The W&B run id of this workdir: read back on resume, made (and written) on the first run."""
    path = os.path.join(workdir, RUN_ID_FILE)
    if os.path.exists(path):
        with open(path) as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    run_id = secrets.token_hex(4)
    from amcl_jax.workdir import atomic_write_text

    atomic_write_text(path, run_id + "\n")
    return run_id


def start_wandb_run(config: ml_collections.ConfigDict, workdir: str):
    """`wandb.init` for a training in `workdir` with `config.logging.wandb`'s settings."""
    from amcl_jax.config import ConfigError
    from amcl_jax.errors import RunError

    settings = config.logging.wandb
    try:
        import wandb
    except ImportError as e:  # validate_config checks first; this is a broken install.
        raise ConfigError(f"config.logging.wandb.enabled=True is invalid: wandb cannot be "
                          f"imported ({e}): pip install 'amcl-jax[wandb]'") from None
    try:
        return wandb.init(
            project=settings.project or None, entity=settings.entity or None,
            name=settings.name or os.path.basename(os.path.normpath(workdir)),
            mode=settings.mode, dir=workdir, id=_run_id(workdir), resume="allow")
    except Exception as e:  # noqa: BLE001 (W&B's own errors: no account, no network, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RunError(f"logging.wandb: wandb.init failed ({type(e).__name__}: {first}); "
                       "logging.wandb.mode='offline' logs without network, "
                       "logging.wandb.enabled=False turns W&B off") from e


def with_wandb(writer, config: ml_collections.ConfigDict, workdir: str, *, is_chief: bool):
    """`writer`, or `writer` and a W&B run together when `logging.wandb.enabled` (chief only)."""
    wandb_settings = config.get("logging", {}).get("wandb")
    if not is_chief or wandb_settings is None or not wandb_settings.enabled:
        return writer
    return MultiWriter([writer, WandbWriter(start_wandb_run(config, workdir))])
