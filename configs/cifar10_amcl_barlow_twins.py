"""The recipe amcl_jax/recipes/cifar10_amcl_barlow_twins.py (its docstring: command, cost)."""
from amcl_jax.recipes.cifar10_amcl_barlow_twins import get_config as get_config
