"""AMCL-SimCLR on CIFAR-100: the CIFAR-10 recipe with CIFAR-100's data and statistics.

Eval protocol: kNN (k=200, T=0.1, cosine, backbone features) with the 50,000 training images
as the bank and the 10,000 test images as queries; linear probe on train, tested on test
(`python main.py --mode=linear_probe --workdir=W`). 32x32, ResNet-18 CIFAR stem.

    python main.py --config=configs/cifar100_amcl_simclr.py \
        --config.data.data_dir=~/tensorflow_datasets --workdir=runs/cifar100_amcl_simclr

TFDS `cifar100` (downloads on a connected machine; offline, pass a TFDS data_dir that holds it).
Not run here; cost as configs/cifar10_amcl_simclr.py (78,200 steps).
"""

from amcl_jax import recipes


def get_config():
    config = recipes.amcl_simclr_config("cifar100")
    config.eval.every_steps = 1955  # Every 20 epochs at batch 512.
    config.checkpoint.every_steps = 977
    return config
