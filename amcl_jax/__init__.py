"""amcl-jax: Adaptive Multi-head Contrastive Learning (ECCV 2024) in JAX/Flax."""

__version__ = "0.1.0"
