"""BYOL on CIFAR-10 (a baseline: no AMCL equation exists for it).

ResNet-18 (CIFAR stem), projector Linear(512, 1024)-BN-ReLU-Linear(1024, 256), predictor
Linear(256, 1024)-BN-ReLU-Linear(1024, 256) (the base repository's lightly BYOL heads), target
network EMA m = 0.99 (constant), symmetric negative cosine; batch 512, 800 epochs, SGD lr 0.05
momentum 0.9 weight decay 5e-4, cosine; abcde. The lr is our choice: the base repository gives
none for BYOL, and 0.05 is SimSiam's, the method BYOL reduces to without the EMA target
(methods/byol.py).

    python main.py --config=configs/cifar10_byol.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/cifar10_byol

Expected: no published figure for this setup; SimSiam's 90.59 +- 0.11 and MoCo's 90.12 +- 0.12
(kNN, 800 epochs, base repository) are the neighbours. Not run to completion here; cost: about
1.3x configs/cifar10_simclr.py (the target forward pass).
"""

from amcl_jax import recipes


def get_config():
    config = recipes.cifar10_config("byol")
    config.optimizer.learning_rate = 0.05
    config.projector.hidden_dim = 1024
    config.projector.out_dim = 256
    config.predictor.hidden_dim = 1024
    config.byol.momentum = 0.99
    return config
