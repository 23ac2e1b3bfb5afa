"""JAX's persistent compilation cache, as the CLI and the sweeps turn it on (strike_jax.compile_cache)."""

import os
import subprocess
import sys

import numpy as np

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


def test_strategy_measurements_are_kept_beside_the_cache(monkeypatch, tmp_path):
    from strike_jax import models
    from strike_jax.training import strategies
    from strike_jax.training.local import LocalConfig

    monkeypatch.setattr(compile_cache, "_active_dir", lambda: str(tmp_path))
    calls = []

    def fake(*args):
        calls.append(1)
        return {"packed": 1e-3, "steps": 2e-4}

    monkeypatch.setattr(strategies, "_per_step_times", fake)
    monkeypatch.setattr(strategies, "_MEASURED", {})
    model = models.get("mlp", 10, (8, 8, 1))
    x, y = np.zeros((16, 8, 8, 1), np.float32), np.zeros((16,), np.int32)
    kw = dict(batch_size=4, lanes=2, lane_steps=3, total_steps=5)
    first = strategies.measure_strategies(model, LocalConfig(0.1, 0.9, 0.0, None, 10), x, y, **kw)
    monkeypatch.setattr(strategies, "_MEASURED", {})  # a new process: only the file remains
    again = strategies.measure_strategies(model, LocalConfig(0.1, 0.9, 0.0, None, 10), x, y, **kw)
    assert first == again == {"packed": 3e-3, "steps": 1e-3} and len(calls) == 1
    assert os.path.exists(tmp_path / compile_cache.MEASUREMENTS)
    monkeypatch.setattr(compile_cache, "_active_dir", lambda: None)  # cache off: nothing read or written
    assert compile_cache.load_measurement("k") is None
