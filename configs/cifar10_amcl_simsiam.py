"""AMCL-SimSiam on CIFAR-10 (the paper's Eq. 2.2).

As configs/cifar10_simsiam.py with 3 projector and predictor heads and a temperature for each of
the two symmetric terms. The project's form (the default, docs/amcl.md): a per-head [u; v] MLP,
beta 0.1, bounds (0.5, 2.0), since Eq. 2.2 is unbounded below once a pair's cosine exceeds
2 beta (methods/simsiam.py). The authors' form (`--config.amcl.form=authors`): the shared Eq. 3
map on the normalised prediction and stop-gradient target, beta 1e-4, bounds (1e-5, 2.0),
clipping 1.0. lr 0.05.

    python main.py --config=configs/cifar10_amcl_simsiam.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz \
        --workdir=runs/cifar10_amcl_simsiam

Expected: SimSiam abcde 90.59 +- 0.11 without AMCL in the base repository at 800 epochs and a gain
with AMCL per the paper. Not run to completion here; cost: about 1.1x configs/cifar10_simsiam.py.
"""

from amcl_jax.config import get_default_config


def get_config():
    config = get_default_config()
    config.method = "simsiam"
    config.amcl.enabled = True
    config.optimizer.learning_rate = 0.05
    config.projector.num_layers = 3
    config.predictor.hidden_dim = 64
    config.data.dataset = "cifar10"
    config.eval.every_steps = 1955  # Every 20 epochs at batch 512 (97.75 steps per epoch).
    config.checkpoint.every_steps = 977
    return config
