"""AMCL-SimCLR on CIFAR-10 with the paper's defaults.

ResNet-18 (CIFAR stem), 3 heads of Linear(512, 512)-ReLU-Linear(512, 128); AMCL in the project's
form (the default, docs/amcl.md): a per-head temperature MLP on [u; v] with bounds (1e-5, 2.0),
beta 0.1, the log-sum-exp form of Eq. 2.1; batch 512, 800 epochs (the paper's tables), SGD lr
0.06 momentum 0.9 weight decay 5e-4, cosine schedule, no warm-up; augmentations abcde. The
authors' v2.0 form (Eq. 3 pair-score map, top-100 negatives, beta 1e-4, clipping 1.0; their code
runs 1000 epochs): `--config.amcl.form=authors`.

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

from amcl_jax import recipes


def get_config():
    # The method's own recipe (configs/cifar10_simclr.py: heads, learning rate, method fields),
    # with AMCL's heads and temperatures on top.
    config = recipes.method_config("simclr", amcl=False)
    config.amcl.enabled = True
    return config
