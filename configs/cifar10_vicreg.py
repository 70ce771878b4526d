"""The recipe amcl_jax/recipes/cifar10_vicreg.py (its docstring: command, cost)."""
from amcl_jax.recipes.cifar10_vicreg import get_config as get_config
