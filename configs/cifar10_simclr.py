"""The recipe amcl_jax/recipes/cifar10_simclr.py (its docstring: command, cost)."""
from amcl_jax.recipes.cifar10_simclr import get_config as get_config
