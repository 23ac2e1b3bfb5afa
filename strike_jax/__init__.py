"""strike_jax: Byzantine attacks and robust aggregation for federated learning in JAX.

The data flow of one round: data -> local training -> attack -> (pre-)aggregation -> server step
-> metrics. Sub-packages follow it: `data`, `models`, `training`, `attacks`, `aggregators`,
`analysis`; `ops` holds the row operations they share, `stages` the stage protocol of the server
pipeline and `registry` its names and hyper-parameters; `simulate(config)` runs a whole
experiment (`strike_jax.simulation`).

Sub-packages and `simulate` are imported on first use (`import strike_jax.aggregators` does not
pay for the data and training stack), and listed by `dir(strike_jax)`. Importing the package checks
that JAX's partitionable threefry is on (`_require_partitionable_threefry`: a run's batches must not
depend on how many runs share its program).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"


def _require_partitionable_threefry(error: type[Exception] = RuntimeError) -> None:
    """Raises `error` (one line) unless `jax_threefry_partitionable` is on.

    A round's batches are drawn with `jax.random.bits` over rows padded to the widest client of the
    runs that share a program (`training.schedule.random_words`). Only the partitionable threefry
    makes a word depend on its position alone, not on the array's width, so that a run draws the
    same batches alone or batched with others; the legacy one would silently change its numbers.
    It is JAX's default since 0.5 (the floor is 0.6.1), so it is off only by the user's choice
    (`JAX_THREEFRY_PARTITIONABLE=0`, `jax.config.update`): strike_jax refuses rather than turning it
    back on, which would change the random streams of the process's other JAX code."""
    import jax

    if not jax.config.jax_threefry_partitionable:  # type: ignore[attr-defined]  # jax.config's options are dynamic attributes its stubs don't list
        raise error("jax_threefry_partitionable=False is not allowed; allowed: True (JAX's default since 0.5): "
                    "strike_jax's batches must not depend on how many runs share a program; unset "
                    "JAX_THREEFRY_PARTITIONABLE or call jax.config.update('jax_threefry_partitionable', True).")


_require_partitionable_threefry(ImportError)

_SUBMODULES = ("aggregators", "analysis", "atomic", "attacks", "byzfl", "byzfl_results", "cli", "compile_cache",
               "config", "data", "distributed", "errors", "fingerprints", "models", "ops", "optax", "options",
               "registry", "report", "server", "sharding", "simulation", "stages", "studies", "sweep", "training")
_ATTRIBUTES = {
    "simulate": "strike_jax.simulation",
    "simulate_many": "strike_jax.simulation",
    "Config": "strike_jax.config",
    "preset": "strike_jax.config",
    "fingerprint": "strike_jax.registry",
    "register": "strike_jax.registry:register_object",
}

__all__ = ["Config", "fingerprint", "preset", "register", "simulate", "simulate_many", "__version__"]

if TYPE_CHECKING:
    from strike_jax import (  # noqa: F401
        aggregators,
        analysis,
        atomic,
        attacks,
        byzfl,
        byzfl_results,
        cli,
        compile_cache,
        config,
        data,
        distributed,
        errors,
        fingerprints,
        models,
        ops,
        optax,
        options,
        registry,
        report,
        server,
        sharding,
        simulation,
        stages,
        studies,
        sweep,
        training,
    )
    from strike_jax.config import Config, preset  # noqa: F401
    from strike_jax.registry import fingerprint  # noqa: F401
    from strike_jax.registry import register_object as register  # noqa: F401
    from strike_jax.simulation import simulate, simulate_many  # noqa: F401


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"strike_jax.{name}")
    if name in _ATTRIBUTES:
        module, _, attr = _ATTRIBUTES[name].partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'strike_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES) | set(_ATTRIBUTES))
