"""Command-line entry point: amcl_jax/cli.py (also `python -m amcl_jax`, `amcl-jax`)."""
from amcl_jax.cli import run

if __name__ == "__main__":
    run()
