"""The table spec amcl_jax/tables/heads.py (by name: --table=heads)."""
from amcl_jax.tables.heads import get_table as get_table
