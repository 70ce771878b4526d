"""AMCL-SimCLR on ImageNet-1K (TFDS `imagenet2012`, manual download), ResNet-50 at 224.

The paper's ImageNet rows (poster: ResNet-50 100/300 epochs 56.7/67.1 -> 57.5/68.0 with AMCL).
Eval protocol: linear probe (frozen encoder, 100 epochs, top-1/top-5 on the 50,000 validation
images) and kNN (k=200, T=0.1) with a capped training bank (eval.max_bank_examples).

    python main.py --config=configs/imagenet_amcl_simclr.py \
        --config.data.data_dir=~/tensorflow_datasets --workdir=runs/in1k_amcl_simclr

TFDS splits are held in memory, so 1.28M images need `load_size` small (here 128: ~63 GB of
uint8). ImageNet as image folders (`train/<synset>/*.JPEG`, `validation/<synset>/*.JPEG`; the
sorted synsets are TFDS's label order) can stay on disk instead, each file decoded when a batch
needs it, and the views cropped from the whole photos:

    python main.py --config=configs/imagenet_amcl_simclr.py --config.data.data_dir=/data/imagenet \
        --config.data.streaming=true --config.data.load_size=-1 --workdir=runs/in1k_amcl_simclr

Not run here.
"""

from amcl_jax import recipes


def get_config():
    config = recipes.amcl_simclr_config("imagenet2012", download=False,
                                        eval_test_split="validation")
    config.data.load_size = 128
    config.data.image_size = 224
    config.model.name = "resnet50"
    config.model.stem = "imagenet"
    config.projector.hidden_dim = 2048
    config.batch_size = 1024
    config.num_epochs = 100
    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 1.2  # 0.3 x batch / 256 (SimCLR).
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_steps = 12510  # 10 epochs.
    config.eval.every_steps = 12510
    config.eval.batch_size = 1024
    config.eval.max_bank_examples = 100_000
    config.checkpoint.every_steps = 2500
    return config
