"""What a workdir guarantees: one run at a time, a resume that continues the same training, and
result files that are replaced whole or not at all.

- `WorkdirLock`: `workdir/run.lock` (pid, host, process start time) is taken at start and removed
  at exit; a second process is refused with one line; a lock left by a process that no longer
  exists on this host (kill -9, a crash) is taken over.
- `check_resume`: before a run writes anything into a workdir that holds checkpoints, the new
  config is compared field by field with the recorded `config.json`. Fields that change what is
  trained are refused (`ResumeRefusedError` lists them, nothing is written); the others are
  accepted and recorded. A field absent from an older `config.json` counts as its default.
  The AMCL form's fields are compared as the runs resolve them (`forms.resolve`): an older
  `config.json` that records None for them continues a run whose config spells the values out.
- `atomic_write_text` / `atomic_write_json`: a temporary file in the same folder, then
  `os.replace`, so a reader sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
from typing import Any

import ml_collections

from amcl_jax import forms
from amcl_jax.config import ConfigError, get_default_config
from amcl_jax.nested import flatten, unflatten

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"

# Fields a resumed run may change: how long it runs, how it is monitored, logged and
# checkpointed, where the data are read from (paths move between machines; the data must be the
# same), and implementation choices that compute the same functions (performance only: accepted,
# but the continued run is then equal to an uninterrupted one to float rounding, not bit for bit).
# A new training schedule length recomputes the learning-rate schedule and momentum ramps from
# the resumed step on. Every other field, present or future, changes what is trained: refused.
SAFE_ON_RESUME = (
    "num_epochs", "total_steps", "log_every_steps", "eval.", "checkpoint.",
    "data.data_dir", "data.cache_dir", "data.download", "data.corrupt_images", "data.streaming",
    "data.eval_train_split", "data.eval_test_split", "logging.",
    "model.xla_cpu_ynnpack", "model.cpu_fusion_barriers", "amcl.chunk_size", "model.remat",
    "model.shard_params",
)
# Fields resolved and recorded at start (-1 = "the dataset's"): -1 matches the recorded value.
RESOLVED_AT_START = {"online_probe.num_classes": -1}


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's lock."""


class ResumeRefusedError(ConfigError):
    """The config changes fields the workdir's checkpoints cannot continue with."""


class RecordedConfigError(RuntimeError):
    """The workdir's config.json cannot be read."""


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and `os.replace`: all or nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2))


# --------------------------------------------------------------------------------------------
# One run per workdir
# --------------------------------------------------------------------------------------------
def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc; None elsewhere or if it is gone): tells a
    live process from a later one that reused its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists, owned by another user.
        return True
    now = _process_start_time(pid)
    return start_time is None or now is None or now == start_time


class WorkdirLock:
    """`workdir/run.lock` held for the duration of a `with` block (see the module docstring).

    `enabled=False` (the non-chief processes of a multi-process run) makes it a no-op.
    """

    def __init__(self, workdir: str, *, enabled: bool = True) -> None:
        self.path = os.path.join(workdir, LOCK_FILE)
        self.enabled = enabled
        self.held = False

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(),
                "start_time": _process_start_time(pid),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # Unreadable: written by a process killed mid-write (see acquire).

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # Cannot tell whether a process on another host lives.
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return True  # Our own pid: a previous process (e.g. another container) reused it.
        return not _alive(pid, holder.get("start_time"))

    def acquire(self) -> None:
        if not self.enabled:
            return
        record = json.dumps(self._record())
        for _ in range(3):
            # Written whole to a temporary file, then linked into place: the lock appears with
            # its contents or not at all, and the link fails if another process holds it.
            handle, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".run.lock.")
            with os.fdopen(handle, "w") as f:
                f.write(record)
            try:
                os.link(tmp, self.path)
                self.held = True
                return
            except FileExistsError:
                holder = self._read()
            finally:
                os.remove(tmp)
            if holder is None:
                continue  # Released meanwhile: try again.
            if holder and not self._stale(holder):
                workdir = os.path.dirname(self.path)
                raise WorkdirBusyError(
                    f"--workdir={workdir} is in use by another run (pid {holder.get('pid')} on "
                    f"host {holder.get('host')}, started {holder.get('started')}); wait for it "
                    f"to finish or use another --workdir (if that process is gone, delete "
                    f"{self.path})")
            os.remove(self.path)  # Stale (its process is gone) or unreadable: take it over.
        raise WorkdirBusyError(f"could not take the lock {self.path}: other processes keep "
                               "taking it; is another run starting in this workdir?")

    def release(self) -> None:
        if not self.held:
            return
        holder = self._read()
        if holder and holder.get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *_) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# Resume only what can be honoured
# --------------------------------------------------------------------------------------------
def record_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes the run's config (its AMCL form resolved) to the workdir's config.json, whole or
    not at all."""
    atomic_write_text(os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2))


def read_recorded_config(workdir: str) -> dict[str, Any] | None:
    """The workdir's config.json as a dict, None if absent; RecordedConfigError names the file
    if it cannot be read (truncated, not JSON)."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RecordedConfigError(
            f"{path} cannot be read ({type(e).__name__}: {e}); it records the config the "
            "checkpoints were written with: restore it, or use a new --workdir") from e
    if not isinstance(recorded, dict):
        raise RecordedConfigError(f"{path} does not hold a config (a JSON object)")
    return recorded


def safe_on_resume(field: str) -> bool:
    return any(field == p or (p.endswith(".") and field.startswith(p)) for p in SAFE_ON_RESUME)


def config_changes(recorded: dict[str, Any], config: ml_collections.ConfigDict
                   ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(refused, accepted) lists of (field, recorded value, new value).

    A field missing from `recorded` (a run from before it existed) counts as its default; one
    missing from `config` (since removed) is ignored. Both sides are compared with the AMCL
    form's fields resolved (`forms.resolve`).
    """
    defaults = flatten(json.loads(get_default_config().to_json()))
    old = flatten(_resolved(recorded, defaults))
    new = flatten(json.loads(forms.resolve(config).to_json()))
    refused, accepted = [], []
    for field in sorted(new):
        before = old.get(field, defaults.get(field, new[field]))
        if before == new[field] or RESOLVED_AT_START.get(field, object()) == new[field]:
            continue
        (accepted if safe_on_resume(field) else refused).append((field, before, new[field]))
    return refused, accepted


def _resolved(recorded: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`recorded` with its absent fields at their defaults (an absent `amcl.form` at the form
    old runs had) and its form-dependent fields resolved as its run resolved them."""
    flat = {**defaults, **flatten(recorded)}
    if "amcl.form" not in flatten(recorded):
        flat["amcl.form"] = forms.LEGACY_FORM
    return json.loads(forms.resolve(ml_collections.ConfigDict(unflatten(flat))).to_json())


def has_checkpoints(workdir: str) -> bool:
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def _changes_text(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{field} ({before!r} -> {after!r})" for field, before, after in changes)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, Any, Any]]:
    """The accepted changes to the recorded config ([] for a fresh workdir); raises
    ResumeRefusedError (nothing written) if the checkpoints cannot continue with `config`."""
    if not has_checkpoints(workdir):
        return []  # Nothing to continue: the run starts afresh and records its config.
    recorded = read_recorded_config(workdir)
    if recorded is None:
        raise RecordedConfigError(
            f"{os.path.join(workdir, CONFIG_FILE)} is missing but {workdir}/checkpoints holds "
            "checkpoints: their config is unknown; restore the file or use a new --workdir")
    refused, accepted = config_changes(recorded, config)
    if refused:
        raise ResumeRefusedError(
            f"--workdir={workdir} holds checkpoints of another training; these fields cannot "
            f"change on resume: {_changes_text(refused)}; use a new --workdir, or the recorded "
            f"values ({os.path.join(workdir, CONFIG_FILE)})")
    return accepted


def describe_accepted(changes: list[tuple[str, Any, Any]]) -> str:
    return f"Resuming with changed settings (recorded in {CONFIG_FILE}): {_changes_text(changes)}"
