"""The table spec amcl_jax/tables/amcl_choices.py (by name: --table=amcl_choices)."""
from amcl_jax.tables.amcl_choices import get_table as get_table
