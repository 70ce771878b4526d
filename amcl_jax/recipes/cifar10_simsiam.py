"""SimSiam on CIFAR-10 (no AMCL) with the base repository's defaults.

ResNet-18 (CIFAR stem), projector 3 x Linear(512 / 512 / 128) each followed by BatchNorm, ReLU
between; predictor Linear(128, 64)-BN-ReLU-Linear(64, 128); stop-gradient, symmetric negative
cosine; batch 512, 800 epochs, SGD lr 0.05 momentum 0.9 weight decay 5e-4, cosine; abcde.

    python main.py --config=configs/cifar10_simsiam.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/cifar10_simsiam

Expected: kNN top-1 (k=200, T=0.1) 90.59 +- 0.11 in the base repository at 800 epochs (original
PNGs). Not run to completion here; cost: about configs/cifar10_simclr.py's.
"""

from amcl_jax import recipes


def get_config():
    config = recipes.cifar10_config("simsiam")
    config.optimizer.learning_rate = 0.05
    config.projector.num_layers = 3
    config.predictor.hidden_dim = 64
    return config
