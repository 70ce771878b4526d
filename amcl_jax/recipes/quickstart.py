"""Quickstart: AMCL-SimCLR on scikit-learn's digits, on a CPU in a few minutes.

    python main.py --config=configs/quickstart.py --workdir=runs/quickstart
    python main.py --config=configs/quickstart.py:method=simclr,amcl=false --workdir=runs/qs_simclr
    python main.py --config=configs/quickstart.py:method=moco,amcl=true --workdir=runs/qs_amcl_moco

Methods: every registered one (`amcl_jax.methods.available()`), with amcl=true|false where it
has an AMCL form (a baseline without one, as BYOL: amcl=false only). Each starts
from its own CIFAR-10 config (`recipes.method_config`: learning rate, number of layers,
temperature bounds, method fields), scaled down here (with the method's own
`scaled_sizes["quickstart"]`: `amcl_jax/methods/`).

The digits ship inside scikit-learn, so this needs no download. A quarter-width ResNet-18 (CIFAR
stem) pretrains on the 1,493 training digits at 16x16; kNN (k=50, T=0.1) on the 304 held-out
digits is reported at step 0 (the random-init reference) and at the end. About 3 minutes on 2
idle CPU cores; the README's measured figures come from exactly this command.
"""

from amcl_jax import methods, recipes
from amcl_jax.config import set_field


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
    method = args.get("method", "simclr")
    # A method without an AMCL form (BYOL: the paper gives no equation for it): plain by default.
    default = "true" if methods.get_method(method).supports_amcl else "false"
    amcl = args.get("amcl", default).lower()
    if amcl not in ("true", "false"):
        raise ValueError(f"config argument amcl={amcl!r}: allowed values are true, false")
    config = recipes.method_config(method, amcl == "true")

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

    config.optimizer.warmup_steps = 10
    config.eval.every_steps = 125
    config.eval.knn_k = 50
    config.checkpoint.every_steps = 125
    for field, value in methods.get_method(method).scaled_sizes.get("quickstart", {}).items():
        set_field(config, field, value)
    return config
