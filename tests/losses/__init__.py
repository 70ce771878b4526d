"""Tests of amcl_jax/losses/, a file per module, against float64 NumPy references."""
