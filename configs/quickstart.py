"""Quickstart: AMCL-SimCLR on scikit-learn's digits, on a CPU in a few minutes.

    python main.py --config=configs/quickstart.py --workdir=runs/quickstart
    python main.py --config=configs/quickstart.py:method=simclr,amcl=false --workdir=runs/qs_simclr

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
    amcl = args.get("amcl", "true").lower()
    if amcl not in ("true", "false"):
        raise ValueError(f"config argument amcl={amcl!r}: allowed values are true, false")
    config.amcl.enabled = amcl == "true"

    config.data.dataset = "digits"
    config.data.image_size = 16
    config.data.load_size = 16  # Upsample the 8x8 digits once, then crop 16x16 views.
    config.data.augmentations = "acde"  # Blur on 16x16 digits only erases them.
    config.batch_size = 128
    config.total_steps = 300
    config.log_every_steps = 25

    config.model.name = "resnet18"
    config.model.width = 0.25
    config.projector.hidden_dim = 128
    config.projector.out_dim = 64

    config.optimizer.learning_rate = 0.06
    config.optimizer.warmup_steps = 10
    config.eval.every_steps = 100
    config.eval.knn_k = 50
    config.checkpoint.every_steps = 100
    return config
