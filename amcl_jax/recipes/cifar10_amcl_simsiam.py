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

from amcl_jax import recipes


def get_config():
    # The method's own recipe (configs/cifar10_simsiam.py: heads, learning rate, method fields),
    # with AMCL's heads and temperatures on top.
    config = recipes.method_config("simsiam", amcl=False)
    config.amcl.enabled = True
    return config
