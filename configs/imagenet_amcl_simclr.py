"""The recipe amcl_jax/recipes/imagenet_amcl_simclr.py (its docstring: command, cost)."""
from amcl_jax.recipes.imagenet_amcl_simclr import get_config as get_config
