"""The forms of AMCL, and the settings a config leaves to them.

`amcl.form` chooses the whole recipe of one reading of the paper in one flag:

- `"authors"`: the authors' rewritten reference code ("AMCL v2.0"). Temperatures
  from the Eq. 3 pair-score map tau = lower + (upper - lower) sigmoid(-<phi(u), phi(v)>), one phi
  (D -> hidden -> D) shared by every head and loss term; Eq. 5's top-k negatives (k =
  `amcl.topk`, 100) with the negative regulariser sum_k (log tau_k + 1 / tau_k); beta 1e-4
  (Barlow Twins 1e-6); bounds (1e-5, 2.0) for every method; global gradient-norm clipping at
  1.0; MoCo with queries from the first view and keys from the second, both directions against
  the queue; Barlow Twins' temperatures from a map on the channel vectors.
- `"likelihood"`: the project's form, but one temperature per anchor, its positive pair's, which
  learns only from that pair's Gaussian likelihood (Omega_1(tau) - s / tau with s fixed,
  minimised inside the bounds at tau = 2 (1 - s)), and the features only from the contrast at
  fixed temperatures; beta 1. SimCLR's log-sum-exp only.
- `"project"` (the default, by measurement: docs/amcl.md): amcl-jax's reading of the paper's
  table and of the authors' 2024 code.
  An MLP on the concatenated pair [u; v] (2D -> hidden -> 1), one per head; the log-sum-exp
  over negatives with softmax-weighted Omega; beta 0.1; bounds (0.5, 2.0) for SimSiam and Barlow
  Twins (their equations degenerate near 0); no clipping; MoCo symmetric over the two views;
  Barlow Twins' temperatures as learned low-rank per-entry logits with Omega's K = 1.

The form-dependent fields are placeholders (None) in `get_default_config()`: a config or a
command-line flag that sets one overrides the form for that field alone
(`--config.amcl.negatives=max`). Their values: the form's own below, over which a method puts its
`form_values` (its sections' placeholders, and Barlow Twins' beta, say). `resolve` fills them in
once, where a run starts (training, compiling, loading a pretrained run or an export); the rest
of the code reads plain values (`config.amcl.beta`). Older `config.json` files hold explicit
values for all of them (and no `amcl.form`), so they resolve as before.
"""

from __future__ import annotations

import copy
from typing import Any

import ml_collections

from amcl_jax.fields import get_field, set_field

FORMS = ("authors", "project", "likelihood")
# An old workdir's config.json has no amcl.form: it was the project's form.
LEGACY_FORM = "project"
OUT_DIM = "out_dim"  # A value: the head's output dimension, projector.out_dim.

# The form-wide values; a method's `form_values` add to and override them.
FORM_VALUES: dict[str, dict[str, Any]] = {
    "authors": {
        "amcl.temperature_net": "pair_score",
        "amcl.shared_temperature_net": True,
        "amcl.negatives": "topk",
        "amcl.beta": 1e-4,
        "amcl.temperature_bounds": (1e-5, 2.0),
        "amcl.omega_dim": OUT_DIM,  # Omega's K: the head's output dimension D.
        "amcl.temperature_objective": "contrast",
        "optimizer.grad_clip_norm": 1.0,
    },
    "project": {
        "amcl.temperature_net": "concat_mlp",
        "amcl.shared_temperature_net": False,
        "amcl.negatives": "logsumexp",
        "amcl.beta": 0.1,
        "amcl.temperature_bounds": (1e-5, 2.0),
        "amcl.omega_dim": OUT_DIM,
        "amcl.temperature_objective": "contrast",
        "optimizer.grad_clip_norm": 0.0,
    },
}
# The project's form with one temperature per anchor, its positive pair's, fit by that pair's
# Gaussian likelihood alone (Omega's K = 1, weight 1: the likelihood's own) while the features
# learn from the contrast at fixed temperatures: no term drives a temperature to its bound, and
# a direction shared by all features feels no force (docs/amcl.md). SimCLR's only; a method's
# sections take their project values.
FORM_VALUES["likelihood"] = dict(FORM_VALUES["project"], **{
    "amcl.beta": 1.0, "amcl.omega_dim": 1, "amcl.temperature_objective": "row_likelihood"})
BASE_FORM = {"likelihood": "project"}  # Whose method values a derived form takes.


def form(config: ml_collections.ConfigDict) -> str:
    """The config's AMCL form (one of `FORMS`)."""
    return config.amcl.get("form", LEGACY_FORM)


def _values(chosen: str, method_name: str) -> dict[str, Any]:
    """Every form-dependent field's value in form `chosen` for a run of `method_name`."""
    from amcl_jax import methods  # The registry imports the models: late, to keep this light.

    if chosen not in FORMS:
        raise ValueError(f"config.amcl.form={chosen!r} is invalid: allowed values are "
                         + ", ".join(repr(f) for f in FORMS))
    values = dict(FORM_VALUES[chosen])
    for method in methods.registered():  # Each method's own sections, whatever the run's.
        sections = method.config_sections()
        values.update({field: value for field, value in _method_values(method, chosen).items()
                       if field.split(".")[0] in sections})
    if method_name in methods.available():  # The run's method, on the amcl.* fields too.
        values.update(_method_values(methods.get_method(method_name), chosen))
    return values


def _method_values(method, chosen: str) -> dict[str, Any]:
    """`method`'s own values in form `chosen` (a derived form's: its base form's)."""
    return method.form_values.get(chosen, method.form_values.get(BASE_FORM.get(chosen), {}))


def fields() -> tuple[str, ...]:
    """The form-dependent fields ("section.name")."""
    return tuple(_values(LEGACY_FORM, ""))


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose form-dependent fields hold the values a run uses, never None,
    and `amcl.form` the form they came from.

    A field the config sets keeps its value; an unset one (None) takes the form's value for the
    config's method. Legacy spellings: `amcl.omega_dim` -1 means unset, resolved in the form old
    runs had; `optimizer.grad_clip_norm` unset is 0 (off) whenever AMCL is off. Resolving a
    resolved config changes nothing. Sections absent from an old config stay absent.
    """

    resolved = copy.deepcopy(config)
    values = _values(form(config), config.get("method", ""))
    with resolved.unlocked():
        for field, value in values.items():
            section, name = field.split(".")
            if section not in resolved:
                continue
            own = resolved[section].get(name)
            legacy_omega = field == "amcl.omega_dim" and own == -1
            if own is not None and not legacy_omega:
                value = own
            elif field == "optimizer.grad_clip_norm" and not config.amcl.enabled:
                value = 0.0
            elif legacy_omega:
                value = _values(LEGACY_FORM, config.method)[field]
            if value == OUT_DIM:
                value = get_field(config, "projector.out_dim")
            set_field(resolved, field, tuple(value) if isinstance(value, list) else value)
        if "amcl" in resolved:
            resolved.amcl.form = form(config)
    return resolved


def check_resolved(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the form-dependent fields `config` leaves unset (None)."""

    unset = [field for field in fields()
             if field.split(".")[0] in config and get_field(config, field) is None]
    if unset:
        raise ValueError(f"config fields {', '.join(unset)} are unset (the AMCL form's): "
                         "resolve the config first, forms.resolve(config)")

