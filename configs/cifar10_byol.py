"""The recipe amcl_jax/recipes/cifar10_byol.py (its docstring: command, cost)."""
from amcl_jax.recipes.cifar10_byol import get_config as get_config
