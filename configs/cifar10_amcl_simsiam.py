"""AMCL-SimSiam on CIFAR-10 (the paper's Eq. 2.2).

As configs/cifar10_simsiam.py with 3 projector and predictor heads, a per-head temperature network
for each of the two symmetric terms, beta 0.1, temperature bounds (0.5, 2.0): with the default
(1e-5, 2.0) Eq. 2.2 is unbounded below once a pair's cosine exceeds 2 beta, so the temperatures
sit at 1e-5 and the gradient is multiplied by up to 5e4 (methods/simsiam.py). lr 0.05.

    python main.py --config=configs/cifar10_amcl_simsiam.py \
        --config.data.data_dir=../shared/data/cifar10-jpeg.tar.gz \
        --workdir=runs/cifar10_amcl_simsiam

Expected: SimSiam abcde 90.59 +- 0.11 without AMCL in the base repository at 800 epochs and a gain
with AMCL per the paper. Not run to completion here; cost: about 1.1x configs/cifar10_simsiam.py.
"""

from amcl_jax.config import get_default_config


def get_config():
    config = get_default_config()
    config.method = "simsiam"
    config.amcl.enabled = True
    config.amcl.temperature_bounds = (0.5, 2.0)
    config.optimizer.learning_rate = 0.05
    config.projector.num_layers = 3
    config.predictor.hidden_dim = 64
    config.data.dataset = "cifar10"
    config.eval.every_steps = 1955  # Every 20 epochs at batch 512 (97.75 steps per epoch).
    config.checkpoint.every_steps = 977
    return config
