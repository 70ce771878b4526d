"""VICReg on CIFAR-10 (a baseline: no AMCL equation exists for it), solo-learn's CIFAR recipe.

ResNet-18 (CIFAR stem), projector Linear(512, 2048)-BN-ReLU-Linear(2048, 2048)-BN-ReLU-
Linear(2048, 2048), lambda 25, mu 25, nu 1 (Bardes et al. 2022); batch 256, 1000 epochs, LARS lr
0.3 (eta 0.02, weight decay 1e-4, BatchNorm and biases excluded from both, momentum 0.9), 10
warm-up epochs then cosine; random resized crop, colour jitter, grayscale, flip and solarization
with p 0.1 on both views, no blur (solo-learn's `scripts/pretrain/cifar/vicreg.yaml`).

Where this differs from that recipe, because the project's options cannot say it:
- LARS without solo-learn's `clip_lr`: optax's LARS takes the step lr * eta * trust ratio per
  tensor, solo-learn's min(eta * trust ratio, lr). Plain LARS with the same lr, eta and weight
  decay is the closest the optimizer options express.
- The crop's scale range is the project's (0.08, 1) for every method, not solo-learn's (0.2, 1);
  colour jitter strength 0.5 gives saturation 0.4 where solo-learn has 0.2.

    python main.py --config=configs/cifar10_vicreg.py \
        --config.data.data_dir=/data/cifar10-jpeg.tar.gz --workdir=runs/cifar10_vicreg

Expected: solo-learn reports 92.07% top-1 (online linear probe, 1000 epochs) for this recipe;
the base repository has no VICReg row, so no kNN figure to compare. Not run to completion here;
cost: about configs/cifar10_barlow_twins.py's per step (the same network and projector), twice
its steps (batch 256).
"""

from amcl_jax.recipes import cifar10_config


def get_config():
    config = cifar10_config("vicreg")
    config.batch_size = 256
    config.num_epochs = 1000
    config.optimizer.name = "lars"
    config.optimizer.learning_rate = 0.3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.lars_trust_coefficient = 0.02
    config.optimizer.warmup_steps = 1953  # 10 epochs at batch 256 (195.3 steps per epoch).
    config.projector.hidden_dim = 2048
    config.projector.out_dim = 2048
    config.projector.num_layers = 3
    config.vicreg.invariance_weight = 25.0
    config.vicreg.variance_weight = 25.0
    config.vicreg.covariance_weight = 1.0
    config.data.augmentations = "acde"
    config.data.solarize_p = (0.1, 0.1)
    config.eval.every_steps = 3906  # Every 20 epochs at batch 256.
    config.checkpoint.every_steps = 1953
    return config
