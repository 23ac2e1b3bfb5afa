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


def pytest_configure(config):
    # The CLI and sweeps turn on JAX's persistent compilation cache (strike_jax.compile_cache); the
    # tests compile from scratch (no state carried between runs) unless the caller asks for a cache.
    import os

    os.environ.setdefault("STRIKE_JAX_CACHE_DIR", "off")
