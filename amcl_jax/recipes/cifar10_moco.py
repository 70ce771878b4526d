"""MoCo v2 on CIFAR-10 (no AMCL) with the base repository's defaults.

ResNet-18 (CIFAR stem), projector Linear(512, 512)-ReLU-Linear(512, 128) and its momentum copy
(m = 0.99, constant), a FIFO queue of 4096 keys, InfoNCE with tau 0.1, symmetric loss; batch 512,
800 epochs, SGD lr 0.08 momentum 0.9 weight decay 5e-4, cosine, no warm-up; abcde.

    python main.py --config=configs/cifar10_moco.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/cifar10_moco

Expected: kNN top-1 (k=200, T=0.1) 90.12 +- 0.12 in the base repository at 800 epochs (original
PNGs). Not run to completion here; cost: about 1.3x configs/cifar10_simclr.py (a second,
gradient-free forward pass through the momentum network).
"""

from amcl_jax import recipes


def get_config():
    config = recipes.cifar10_config("moco")
    config.optimizer.learning_rate = 0.08
    config.moco.temperature = 0.1
    config.moco.queue_size = 4096
    config.moco.momentum = 0.99
    return config
