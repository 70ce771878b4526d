"""What every pretraining method provides to the trainer."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import ml_collections


class MethodOutput(NamedTuple):
    """The result of one forward pass and loss evaluation, inside jit."""

    loss: jax.Array  # () float32.
    metrics: dict[str, jax.Array]  # Scalars or per-head (C,) arrays, float32.
    batch_stats: Any  # Updated BatchNorm statistics.
    extra: Any  # Updated method state (queue, EMA params...); {} when the method has none.


class Method(abc.ABC):
    """A contrastive / self-supervised method: its settings, model, extra state and loss.

    Its settings are declared here, next to the code that reads them, and composed from the
    registry (`methods/__init__.py`): its config sections (`config_sections`, in
    `config.get_default_config`), their checks (`check_config`, `check_run`, in
    `config.validate_config`), its values of the AMCL forms' fields (`form_values`, in
    `forms.resolve`) and its sizes scaled down (`scaled_sizes`, in the quickstart and
    `reproduce`'s scales).
    """

    name: str
    supports_amcl: bool = True  # False: amcl.enabled=True is refused at start-up (BYOL).
    # True: AMCL gives every (anchor, candidate) pair a temperature from the SimCLR-family
    # temperature network (drawn by `evaluate.figures`), and without AMCL the loss has one
    # global temperature, `config[name].temperature`.
    pair_temperatures: bool = False
    any_number_of_views: bool = False  # False: data.num_views must be 2.
    # True: amcl.temperature_objective="likelihood" (the likelihood form) is implemented.
    likelihood_temperatures: bool = False
    # {form: {"section.field": value}}: this method's values of form-dependent fields, over the
    # form's own (forms.py): the placeholders of its sections, and the amcl.* fields where it
    # departs from the form (those only for runs of this method).
    form_values: ClassVar[dict[str, dict[str, Any]]] = {}
    # {scale: {"section.field": value}}: its fields scaled down with the rest of a config
    # ("quickstart": recipes/quickstart.py; "cpu", "smoke": reproduce's scales; "cpu_long"
    # takes the "cpu" sizes).
    scaled_sizes: ClassVar[dict[str, dict[str, Any]]] = {}

    @staticmethod
    def config_sections() -> dict[str, ml_collections.ConfigDict]:
        """This method's sections of the default config, with their defaults ({}: none)."""
        return {}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raises `config.ConfigError` for an invalid value in this method's sections (every
        config has them, whichever method it trains); the AMCL form's fields are resolved."""
        del config

    def check_run(self, config: ml_collections.ConfigDict) -> None:
        """Raises `config.ConfigError` for settings this method cannot train with, when it is
        `config.method`; the AMCL form's fields are resolved."""
        del config

    def offers_temperature_ablation(self, config: ml_collections.ConfigDict) -> bool:
        """Whether `amcl.adaptive_temperature` may be other than "both" (SimCLR's Eq. 2.1)."""
        del config
        return False

    @abc.abstractmethod
    def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
        """The Flax model; `model.apply(v, x, train, method="features")` gives encoder features."""

    def init_extra(self, config: ml_collections.ConfigDict, variables: dict, rng: jax.Array):
        """Extra state kept in the train state and checkpointed (empty by default)."""
        del config, variables, rng
        return {}

    @abc.abstractmethod
    def apply_loss(self, model: nn.Module, config: ml_collections.ConfigDict, params,
                   batch_stats, extra, views: jax.Array, rng: jax.Array) -> MethodOutput:
        """views: (V, B, H, W, 3) float32 global batch. Returns the loss to minimise."""

    def update_extra(self, config, params, extra, step, total_steps):
        """Called after the optimizer update (EMA targets...). Identity by default.

        `step` is the update's 0-based index (traced), `total_steps` the run's length (a Python
        int, resolved from `total_steps` or `num_epochs`), for schedules such as BYOL's ramp.
        """
        del config, params, step, total_steps
        return extra
