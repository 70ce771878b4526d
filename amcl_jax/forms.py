"""The two forms of AMCL, and the settings a config leaves to them.

`amcl.form` chooses the whole recipe of one of two readings of the paper in one flag:

- `"authors"`: the authors' rewritten reference code ("AMCL v2.0"). Temperatures
  from the Eq. 3 pair-score map tau = lower + (upper - lower) sigmoid(-<phi(u), phi(v)>), one phi
  (D -> hidden -> D) shared by every head and loss term; Eq. 5's top-k negatives (k =
  `amcl.topk`, 100) with the negative regulariser sum_k (log tau_k + 1 / tau_k); beta 1e-4
  (Barlow Twins 1e-6); bounds (1e-5, 2.0) for every method; global gradient-norm clipping at
  1.0; MoCo with queries from the first view and keys from the second, both directions against
  the queue; Barlow Twins' temperatures from a map on the channel vectors.
- `"project"` (the default, by measurement: docs/amcl.md): amcl-jax's reading of the paper's
  table and of the authors' 2024 code.
  An MLP on the concatenated pair [u; v] (2D -> hidden -> 1), one per head; the log-sum-exp
  over negatives with softmax-weighted Omega; beta 0.1; bounds (0.5, 2.0) for SimSiam and Barlow
  Twins (their equations degenerate near 0); no clipping; MoCo symmetric over the two views;
  Barlow Twins' temperatures as learned low-rank per-entry logits with Omega's K = 1.

Every field below is a placeholder (None) in `get_default_config()`: a config or a command-line
flag that sets it overrides the form for that field alone (`--config.amcl.negatives=max`). The
code reads them through `setting(config, field)`, never directly. Older `config.json` files hold
explicit values for all of them (and no `amcl.form`), so they resolve as before.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

FORMS = ("authors", "project")
# An old workdir's config.json has no amcl.form: it was the project's form.
LEGACY_FORM = "project"
DEFAULT_METHOD = "*"

# field -> value, or {method: value} with DEFAULT_METHOD for the other methods.
_SETTINGS: dict[str, dict[str, Any]] = {
    "authors": {
        "amcl.temperature_net": "pair_score",
        "amcl.shared_temperature_net": True,
        "amcl.negatives": "topk",
        "amcl.beta": {"barlow_twins": 1e-6, DEFAULT_METHOD: 1e-4},
        "amcl.temperature_bounds": (1e-5, 2.0),
        # Omega's K: the head's output dimension D (Barlow Twins: D too, 2048 in their recipe).
        "amcl.omega_dim": {DEFAULT_METHOD: "out_dim"},
        "barlow_twins.temperatures": "channel_map",
        "moco.directions": "query_and_key",
        "optimizer.grad_clip_norm": 1.0,
    },
    "project": {
        "amcl.temperature_net": "concat_mlp",
        "amcl.shared_temperature_net": False,
        "amcl.negatives": "logsumexp",
        "amcl.beta": 0.1,
        "amcl.temperature_bounds": {"simsiam": (0.5, 2.0), "barlow_twins": (0.5, 2.0),
                                    DEFAULT_METHOD: (1e-5, 2.0)},
        "amcl.omega_dim": {"barlow_twins": 1, DEFAULT_METHOD: "out_dim"},
        "barlow_twins.temperatures": "low_rank",
        "moco.directions": "views",
        "optimizer.grad_clip_norm": 0.0,
    },
}
FIELDS = tuple(_SETTINGS["authors"])


def form(config: ml_collections.ConfigDict) -> str:
    """The config's AMCL form ("authors" or "project")."""
    return config.amcl.get("form", LEGACY_FORM)


def _lookup(config: ml_collections.ConfigDict, field: str) -> Any:
    section, name = field.split(".")
    return config[section].get(name) if section in config else None


def setting(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of a form-dependent `field` ("section.name"): the config's own if it sets one,
    else the form's value for the config's method.

    `amcl.omega_dim` resolves to a number (-1, the old spelling of "unset", included);
    `optimizer.grad_clip_norm` is 0 (off) whenever AMCL is off, unless set explicitly.
    """
    if field not in _SETTINGS["authors"]:
        raise KeyError(f"{field!r} is not a form-dependent field; those are {FIELDS}")
    value = _lookup(config, field)
    legacy_omega = field == "amcl.omega_dim" and value == -1
    if value is not None and not legacy_omega:
        return tuple(value) if field == "amcl.temperature_bounds" else value
    if field == "optimizer.grad_clip_norm" and not config.amcl.enabled:
        return 0.0
    chosen = LEGACY_FORM if legacy_omega else form(config)
    if chosen not in FORMS:
        raise ValueError(f"config.amcl.form={chosen!r} is invalid: allowed values are "
                         + ", ".join(repr(f) for f in FORMS))
    value = _SETTINGS[chosen][field]
    if isinstance(value, dict):
        value = value.get(config.method, value[DEFAULT_METHOD])
    if value == "out_dim":
        value = config.projector.out_dim
    return value


def resolved(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Every form-dependent field with the value a run uses (for logs and summaries)."""
    return {"amcl.form": form(config), **{field: setting(config, field) for field in FIELDS}}


def resolved_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A plain copy of `config` (as `config.json` records it) whose form-dependent fields hold
    the values a run uses, never None, and `amcl.form` the form they came from.

    `setting` returns a field's own value when it is set, so a config and its resolved copy
    train the same way; the copy is for recording and printing (`main.py --print_config`).
    Sections absent from an old config stay absent.
    """
    record = ml_collections.ConfigDict(json.loads(config.to_json()))
    for field in FIELDS:
        section, name = field.split(".")
        if section in record:
            record[section][name] = setting(config, field)
    if "amcl" in record:
        record.amcl.form = form(config)
    return record
