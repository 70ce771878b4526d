"""The table spec amcl_jax/tables/amcl_forms.py (by name: --table=amcl_forms)."""
from amcl_jax.tables.amcl_forms import get_table as get_table
