"""AMCL-SimCLR on ImageNet-100 (the CMC 100-class subset, `amcl_jax/data/imagenet_subsets.py`).

Data: TFDS `imagenet2012` prepared from the manual download (put the ILSVRC2012 tars in
`<data_dir>/downloads/manual`; the first run prepares it), or an image folder laid out
`train/<synset>/*.JPEG` and `val/<synset>/*.JPEG`; only the 100 synsets are read (126,689
training, 5,000 validation images), labels 0..99 in the CMC list's order. Images are resized
once to `load_size` (160: ~9.7 GB in memory as uint8) and views are 224x224 random resized
crops of them. From the image folder, `--config.data.streaming=true` keeps the files on disk
and decodes each one when a batch needs it (then `--config.data.load_size=-1` crops the views
from the whole photos, as the usual ImageNet pipelines do).

Eval protocol: kNN (k=200, T=0.1) and the linear probe with the training split as bank/train
set and the 5,000 validation images as the test set. ResNet-18, ImageNet stem, 224 crops,
batch 256, 200 epochs, SGD lr 0.5 (LARS is available: --config.optimizer.name=lars), 10 warm-up
epochs, weight decay 1e-4.

    python main.py --config=configs/imagenet100_amcl_simclr.py \
        --config.data.data_dir=~/tensorflow_datasets --workdir=runs/in100_amcl_simclr
    python main.py --config=configs/imagenet100_amcl_simclr.py \
        --config.data.data_dir=/data/imagenet --workdir=runs/in100_amcl_simclr  # folder
    python main.py --config=configs/imagenet100_amcl_simclr.py \
        --config.data.data_dir=/data/imagenet --config.data.streaming=true \
        --config.data.load_size=-1 --workdir=runs/in100_amcl_simclr_streamed

Not run here (~99,000 steps: a few GPU-days at 224).
"""

from amcl_jax import recipes


def get_config():
    # imagenet2012 is a manual download; "val" is TFDS's "validation" (mapped automatically).
    config = recipes.amcl_simclr_config("imagenet100", download=False, eval_test_split="val")
    config.data.load_size = 160
    config.data.image_size = 224
    config.data.blur_p = (0.5, 0.5)
    config.model.stem = "imagenet"
    config.batch_size = 256
    config.num_epochs = 200
    config.optimizer.learning_rate = 0.5
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_steps = 4940  # 10 epochs of 126,689 images at batch 256.
    config.eval.every_steps = 9880  # Every 20 epochs.
    config.eval.batch_size = 256
    config.checkpoint.every_steps = 2470
    return config
