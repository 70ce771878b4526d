"""The recipe amcl_jax/recipes/cifar10_simsiam.py (its docstring: command, cost)."""
from amcl_jax.recipes.cifar10_simsiam import get_config as get_config
