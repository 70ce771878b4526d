"""Barlow Twins on CIFAR-10 (no AMCL) with the base repository's defaults.

ResNet-18 (CIFAR stem), projector 3 x Linear(2048) with BatchNorm and ReLU between, lambda 5e-3,
cross-correlation on the global batch; batch 512, 800 epochs, SGD lr 0.11 momentum 0.9 weight
decay 5e-4, cosine, no warm-up; abcde.

    python main.py --config=configs/cifar10_barlow_twins.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz \
        --workdir=runs/cifar10_barlow_twins

Expected: kNN top-1 (k=200, T=0.1) 86.91 +- 0.09 in the base repository at 800 epochs (original
PNGs). Not run to completion here; cost: about configs/cifar10_simclr.py's.
"""

from amcl_jax import recipes


def get_config():
    config = recipes.cifar10_config("barlow_twins")
    config.optimizer.learning_rate = 0.11
    config.projector.hidden_dim = 2048
    config.projector.out_dim = 2048
    config.projector.num_layers = 3
    config.barlow_twins.off_diagonal_weight = 5e-3
    return config
