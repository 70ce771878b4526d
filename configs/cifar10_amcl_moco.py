"""AMCL-MoCo on CIFAR-10: Eq. 2.1 with the queue as negatives (log-sum-exp form).

ResNet-18 (CIFAR stem), 3 heads Linear(512, 512)-ReLU-Linear(512, 128) and their momentum copies
(m = 0.99), a per-head queue of 4096 keys (3, 4096, 128), a per-head temperature network with
bounds (1e-5, 2.0), beta 0.1; batch 512, 800 epochs, SGD lr 0.08 momentum 0.9 weight decay 5e-4,
cosine, no warm-up; abcde. For the hard max set amcl.negatives="max" and amcl.infonce=True
(Eq. 2.4): the plain Eq. 2.1 max is unbounded below (README, Known issues).

    python main.py --config=configs/cifar10_amcl_moco.py \
        --config.data.data_dir=../shared/data/cifar10-jpeg.tar.gz --workdir=runs/cifar10_amcl_moco

Expected: MoCo abcde 90.12 +- 0.12 without AMCL in the base repository at 800 epochs and a gain
with AMCL per the paper. Not run to completion here; cost: about 2x configs/cifar10_moco.py (the
(3, 32, 4096) temperature grid per chunk; lower amcl.chunk_size if memory is short).
"""

from amcl_jax.config import get_default_config


def get_config():
    config = get_default_config()
    config.method = "moco"
    config.amcl.enabled = True
    config.optimizer.learning_rate = 0.08
    config.moco.queue_size = 4096
    config.moco.momentum = 0.99
    config.data.dataset = "cifar10"
    config.eval.every_steps = 1955  # Every 20 epochs at batch 512 (97.75 steps per epoch).
    config.checkpoint.every_steps = 977
    return config
