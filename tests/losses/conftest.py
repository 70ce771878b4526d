"""Fixtures shared by the loss tests."""

import jax
import pytest
from _helpers import MLPTemperature, make_mlp_params, np_params

HEADS, DIM = 2, 4  # The C and D of the files that use `tau_setup`.


@pytest.fixture(scope="module")
def tau_setup():
    """A per-head temperature MLP for HEADS heads of dimension DIM, and its NumPy weights."""
    params = make_mlp_params(jax.random.key(7), HEADS, DIM)
    return MLPTemperature(params), np_params(params)
