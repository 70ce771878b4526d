"""Linear-probe options for `main.py --mode=linear_probe` (the defaults of this file are used
when --probe is not given).

    python main.py --mode=linear_probe --workdir=runs/cifar10_amcl_simclr
    python main.py --mode=linear_probe --workdir=W --probe=configs/linear_probe.py \
        --probe.augmentations=ae --probe.optimizer=lars --probe.learning_rate=0.5

Protocol: frozen encoder (inference-mode BatchNorm, no gradient), backbone features of
un-augmented images (precomputed once; `augmentations="ae"` re-encodes crop+flip views every
step instead), standardised per dimension with the train features' statistics, a linear
classifier trained 100 epochs with SGD momentum 0.9 (or LARS), batch 256, lr 0.1 with a cosine
decay to 0, no weight decay; top-1 and top-5 on the test split -> W/linear_probe.json.
Runtime: the fast path costs one feature pass over train and test (~1-2 min for CIFAR-10 with
a ResNet-18 on one GPU; on 2 CPU cores ~10 minutes) plus seconds for the classifier.
"""

from amcl_jax.evaluate.linear_probe import default_probe_config


def get_config():
    return default_probe_config()
