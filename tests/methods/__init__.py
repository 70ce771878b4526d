"""Tests of amcl_jax/methods/, a file per module (test_registry.py: its `__init__.py`)."""
