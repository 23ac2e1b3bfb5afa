"""Shared fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """float64 inside the test (finite-difference checks), restored afterwards."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)
