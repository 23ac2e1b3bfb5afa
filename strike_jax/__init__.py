"""strike_jax: Byzantine attacks and robust aggregation for federated learning in JAX.

The data flow of one round: data -> local training -> attack -> (pre-)aggregation -> server step
-> metrics. Sub-packages follow it: `data`, `models`, `training`, `attacks`, `aggregators`,
`analysis`; `ops` holds the row operations they share, `stages` the stage protocol of the server
pipeline and `registry` its names and hyper-parameters; `simulate(config)` runs a whole
experiment (`strike_jax.simulation`).

Sub-packages and `simulate` are imported on first use (`import strike_jax.aggregators` does not
pay for the data and training stack), and listed by `dir(strike_jax)`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_SUBMODULES = ("aggregators", "analysis", "atomic", "attacks", "byzfl", "cli", "compile_cache", "config", "data",
               "errors", "models", "ops", "optax", "options", "registry", "report", "server", "sharding", "simulation",
               "stages", "studies", "sweep", "training")
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
        cli,
        compile_cache,
        config,
        data,
        errors,
        models,
        ops,
        optax,
        options,
        registry,
        report,
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
