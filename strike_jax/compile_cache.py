"""A persistent cache of compiled programs on disk (JAX's own), for the command line and the experiments.

Compiling is most of a short run's time on a CPU (Fashion-MNIST MLP, STRIKE vs Median, 50
clients: the first round 8.4 s without the cache, 2.6 s when the programs come from it; the next
rounds ~0.6 s either way; shared 2-core machine). A resumed run, a rerun of an experiment script, or
each process of a multi-process sweep compiles the same programs again; with the cache they are
read back instead. The cache is JAX's (`jax_compilation_cache_dir`): entries are keyed by the
program, the jax/XLA version and the device, so a stale entry is never used.

The strategy measurements of `strategy="measure"` (`training.strategies.measure_strategies`, the
timing opt-in; `auto` is a fixed rule and times nothing) are kept beside it
(`strategies.json`, keyed by the model, shapes, optimizer structure, backend, device and jax
version), so that a second process on the same machine skips the calibration too.

`strike-jax` and the experiment scripts turn it on (`enable()`); library users call
`strike_jax.compile_cache.enable()` themselves (importing strike_jax changes no global setting).
`STRIKE_JAX_CACHE_DIR` picks the directory; `off` (or an empty value) turns it off.
"""

from __future__ import annotations

import json
import os
import platform

ENV = "STRIKE_JAX_CACHE_DIR"
MEASUREMENTS = "strategies.json"
# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 0.5


def default_dir() -> str | None:
    """`$STRIKE_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/strike_jax/xla` (default `~/.cache/...`);
    None when the variable says `off` or is empty."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else os.path.expanduser(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "strike_jax", "xla")


def enable(path: str | None = None, *, min_compile_seconds: float = MIN_COMPILE_SECONDS) -> str | None:
    """Turns JAX's persistent compilation cache on (call before the first compilation).

    Args:
      path: the cache directory (default: `default_dir()`; created if missing).
      min_compile_seconds: programs compiling faster than this are not stored.

    Returns:
      The directory in use, or None when the cache is turned off or the directory cannot be
      created (then everything still works, only without the cache).
    """
    import jax

    path = default_dir() if path is None else path
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path


def _active_dir() -> str | None:
    import jax

    return jax.config.jax_compilation_cache_dir or None  # type: ignore[attr-defined]  # jax.config's options are dynamic attributes its stubs don't list


def _measurement_key(key) -> str:
    import jax

    device = jax.devices()[0]
    return repr((key, getattr(device, "device_kind", ""), os.cpu_count(), platform.machine(), jax.__version__))


def load_measurement(key) -> dict | None:
    """A stored strategy measurement for `key` on this machine, or None (none stored, cache off)."""
    path = _active_dir()
    if path is None:
        return None
    try:
        with open(os.path.join(path, MEASUREMENTS)) as fh:
            value = json.load(fh).get(_measurement_key(key))
    except (OSError, ValueError):
        return None
    return dict(value) if isinstance(value, dict) else None


def store_measurement(key, value: dict) -> None:
    """Adds a strategy measurement to the store (atomically; nothing when the cache is off)."""
    from strike_jax import atomic

    path = _active_dir()
    if path is None:
        return
    file = os.path.join(path, MEASUREMENTS)
    try:
        with open(file) as fh:
            table = json.load(fh)
    except (OSError, ValueError):
        table = {}
    table[_measurement_key(key)] = {k: float(v) for k, v in value.items()}
    try:
        atomic.write_json(file, table)
    except OSError:
        pass
