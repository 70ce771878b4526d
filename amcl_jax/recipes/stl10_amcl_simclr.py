"""AMCL-SimCLR on STL-10 at 96x96 (the setting of the paper's Fig. 1).

Pretraining on "train+unlabelled" (5,000 labelled + 100,000 unlabelled images; the unlabelled
ones carry label -1 and are only ever used as pretraining images). Eval protocol: kNN (k=200,
T=0.1) with the 5,000 labelled training images as the bank (examples labelled -1 are always
dropped from the bank) and the 8,000 test images as queries; the linear probe trains on the
5,000 labelled images and tests on the 8,000. ResNet-18 with the ImageNet stem (7x7/2 conv +
max-pool) at 96x96, as is usual for STL-10; augmentations abcde with blur.

    python main.py --config=configs/stl10_amcl_simclr.py \
        --config.data.data_dir=~/tensorflow_datasets --workdir=runs/stl10_amcl_simclr
    python main.py --mode=figures --workdir=runs/stl10_amcl_simclr   # Fig. 1-style histograms

TFDS `stl10` (2.6 GB download on a connected machine; in memory as uint8: ~3 GB). Not run here:
400 epochs of 105,000 images at batch 256 = 164,000 steps (about a GPU-day).
"""

from amcl_jax import recipes


def get_config():
    config = recipes.amcl_simclr_config("stl10", train_split="train+unlabelled")
    config.data.image_size = 96
    config.model.stem = "imagenet"
    config.batch_size = 256
    config.num_epochs = 400
    config.optimizer.learning_rate = 0.06
    config.eval.every_steps = 8200  # Every 20 epochs of 105,000 images at batch 256.
    config.eval.batch_size = 256
    config.checkpoint.every_steps = 2050
    return config
