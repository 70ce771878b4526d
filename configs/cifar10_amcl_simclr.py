"""The recipe amcl_jax/recipes/cifar10_amcl_simclr.py (its docstring: command, cost)."""
from amcl_jax.recipes.cifar10_amcl_simclr import get_config as get_config
