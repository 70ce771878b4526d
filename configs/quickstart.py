"""The recipe amcl_jax/recipes/quickstart.py (its docstring: command, cost)."""
from amcl_jax.recipes.quickstart import get_config as get_config
