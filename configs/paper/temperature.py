"""The table spec amcl_jax/tables/temperature.py (by name: --table=temperature)."""
from amcl_jax.tables.temperature import get_table as get_table
