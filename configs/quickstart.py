"""Quickstart: AMCL-SimCLR on scikit-learn's digits, on a CPU in a few minutes.

    python main.py --config=configs/quickstart.py --workdir=runs/quickstart
    python main.py --config=configs/quickstart.py:method=simclr,amcl=false --workdir=runs/qs_simclr
    python main.py --config=configs/quickstart.py:method=moco,amcl=true --workdir=runs/qs_amcl_moco

Methods: simclr, moco, simsiam, barlow_twins (each with amcl=true|false) and byol (amcl=false
only); `_method_defaults` sets each method's base-repository learning rate and heads.

The digits ship inside scikit-learn, so this needs no download. A quarter-width ResNet-18 (CIFAR
stem) pretrains on the 1,500 training digits at 16x16; kNN (k=200, T=0.1) on the 297 held-out
digits is reported at step 0 (the random-init reference) and at the end. The README's measured
figures come from exactly this command.
"""

from amcl_jax.config import get_default_config


def _parse(arg: str) -> dict[str, str]:
    pairs = [p for p in (arg or "").split(",") if p]
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ("method", "amcl"):
            raise ValueError(
                f"config argument {pair!r}: expected method=<name> or amcl=true|false")
        parsed[key] = value
    return parsed


def get_config(arg: str = ""):
    args = _parse(arg)
    config = get_default_config()
    config.method = args.get("method", "simclr")
    # BYOL has no AMCL form (the paper gives no equation for it): plain by default.
    amcl = args.get("amcl", "false" if config.method == "byol" else "true").lower()
    if amcl not in ("true", "false"):
        raise ValueError(f"config argument amcl={amcl!r}: allowed values are true, false")
    config.amcl.enabled = amcl == "true"

    config.data.dataset = "digits"
    config.data.image_size = 16
    config.data.load_size = 16  # Upsample the 8x8 digits once, then crop 16x16 views.
    config.data.augmentations = "acde"  # Blur on 16x16 digits only erases them.
    config.batch_size = 128
    config.total_steps = 250
    config.log_every_steps = 25

    config.model.name = "resnet18"
    config.model.width = 0.25
    config.projector.hidden_dim = 128
    config.projector.out_dim = 64

    config.optimizer.learning_rate = 0.06
    config.optimizer.warmup_steps = 10
    config.eval.every_steps = 125
    config.eval.knn_k = 50
    config.checkpoint.every_steps = 125
    _method_defaults(config)
    return config


def _method_defaults(config) -> None:
    """The base repository's learning rates and heads, scaled down like the rest of this file."""
    if config.method == "moco":
        config.optimizer.learning_rate = 0.08
        config.moco.queue_size = 1024  # The 1,500 digits x 2 views would be stale in 4096.
    elif config.method == "simsiam":
        config.optimizer.learning_rate = 0.05
        config.projector.num_layers = 3
        config.predictor.hidden_dim = 32
        config.amcl.temperature_bounds = (0.5, 2.0)  # Eq. 2.2 degenerates near 0 (simsiam.py).
    elif config.method == "barlow_twins":
        config.optimizer.learning_rate = 0.11
        config.projector.hidden_dim = 256
        config.projector.out_dim = 256
        config.projector.num_layers = 3
        config.amcl.temperature_bounds = (0.5, 2.0)  # Eq. 2.3 degenerates near 0.
    elif config.method == "byol":
        config.optimizer.learning_rate = 0.05  # SimSiam's (methods/byol.py).
        config.predictor.hidden_dim = 128
