"""JAX's persistent compilation cache, as the CLI and the sweeps turn it on (strike_jax.compile_cache)."""

import os
import subprocess
import sys

from strike_jax import compile_cache

SNIPPET = """
import sys, jax, jax.monitoring, jax.numpy as jnp
from strike_jax import compile_cache
jax.monitoring.register_event_listener(lambda name, **kw: print("event", name) if "cache_hit" in name else None)
print(compile_cache.enable(min_compile_seconds=0))
f = jax.jit(lambda x: jnp.sort(x) @ x)
print(float(f(jnp.arange(5.0))))
"""


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.default_dir() == str(tmp_path / "c")
    for off in ("off", "", "0"):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.default_dir() is None and compile_cache.enable() is None
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == str(tmp_path / "xdg" / "strike_jax" / "xla")


def test_programs_land_in_the_cache_and_are_read_back(tmp_path):
    env = dict(os.environ, STRIKE_JAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    def run():
        return subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True).stdout

    first = run()
    assert first.splitlines()[0] == str(tmp_path / "cache") and "cache_hit" not in first
    assert os.listdir(tmp_path / "cache"), "nothing was written to the cache"
    second = run()
    assert "cache_hit" in second, second  # the program was read back, not compiled
    assert first.splitlines()[-1] == second.splitlines()[-1]
