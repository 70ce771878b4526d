"""`python -m amcl_jax --config=quickstart --workdir=W`: main.py's command line (cli.py)."""
from amcl_jax.cli import run

run()
