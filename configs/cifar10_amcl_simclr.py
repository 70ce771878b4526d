"""AMCL-SimCLR on CIFAR-10 with the paper's defaults.

ResNet-18 (CIFAR stem), 3 heads of Linear(512, 512)-ReLU-Linear(512, 128); the authors' form of
AMCL (`amcl.form="authors"`, docs/amcl.md): the Eq. 3 pair-score temperature map shared by the
heads, bounds (1e-5, 2.0), Eq. 5's top-100 negatives, beta 1e-4, gradient-norm clipping 1.0;
batch 512, 800 epochs (the paper's tables; their code runs 1000), SGD lr 0.06 momentum 0.9
weight decay 5e-4, cosine schedule, no warm-up; augmentations abcde. The project's form:
`--config.amcl.form=project`.

    # A connected machine (TFDS downloads CIFAR-10 into data_dir):
    python main.py --config=configs/cifar10_amcl_simclr.py \
        --config.data.data_dir=~/tensorflow_datasets \
        --workdir=runs/cifar10_amcl_simclr
    # Offline, from the JPEG archive (extracted once to ~/.cache/amcl_jax):
    python main.py --config=configs/cifar10_amcl_simclr.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/cifar10_amcl_simclr

Expected: the paper reports kNN top-1 (k=200, T=0.1) for SimCLR abcde 89.76 +- 0.12 at 800 epochs
without AMCL and a gain with AMCL; this config has not been run to completion here (cost: 78,200
steps; on one modern GPU roughly 10-20 hours, on the 2-core CPU here ~85 minutes per epoch).
"""

from amcl_jax.config import get_default_config


def get_config():
    config = get_default_config()
    config.method = "simclr"
    config.amcl.enabled = True
    config.data.dataset = "cifar10"
    config.eval.every_steps = 1955  # Every 20 epochs at batch 512 (97.75 steps per epoch).
    config.checkpoint.every_steps = 977
    return config
