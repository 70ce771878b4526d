"""The recipe amcl_jax/recipes/cifar10_moco.py (its docstring: command, cost)."""
from amcl_jax.recipes.cifar10_moco import get_config as get_config
