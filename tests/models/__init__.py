"""Tests of amcl_jax/models/, a file per module (test_registry.py: its `__init__.py`)."""
