"""The table spec amcl_jax/tables/augmentations.py (by name: --table=augmentations)."""
from amcl_jax.tables.augmentations import get_table as get_table
