"""SimCLR on CIFAR-10 (no AMCL) with the base repository's defaults.

ResNet-18 (CIFAR stem), one head Linear(512, 512)-ReLU-Linear(512, 128), NT-Xent with tau 0.5;
batch 512, 800 epochs, SGD lr 0.06 momentum 0.9 weight decay 5e-4, cosine, no warm-up; abcde.

    python main.py --config=configs/cifar10_simclr.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/cifar10_simclr

Expected: kNN top-1 (k=200, T=0.1) 89.76 +- 0.12 in the base repository at 800 epochs (on the
original PNGs; the JPEG re-encoding costs a little). Not run to completion here; cost as
configs/cifar10_amcl_simclr.py.
"""

from amcl_jax import recipes


def get_config():
    config = recipes.cifar10_config("simclr")
    config.simclr.temperature = 0.5
    return config
