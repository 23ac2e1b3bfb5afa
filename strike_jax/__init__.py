"""strike_jax: Byzantine attacks and robust aggregation for federated learning in JAX.

The data flow of one round: data -> local training -> attack -> (pre-)aggregation -> server step
-> metrics. Sub-packages follow it: `data`, `models`, `training`, `attacks`, `aggregators`,
`analysis`; `simulate(config)` runs a whole experiment (`strike_jax.simulation`).
"""

__version__ = "0.1.0"

__all__ = ["Config", "preset", "simulate", "simulate_many", "__version__"]


def __getattr__(name):
    # Lazy: `import strike_jax.aggregators` should not pay for the data and training stack.
    if name in ("simulate", "simulate_many"):
        from strike_jax import simulation

        return getattr(simulation, name)
    if name in ("Config", "preset"):
        from strike_jax import config

        return getattr(config, name)
    raise AttributeError(f"module 'strike_jax' has no attribute {name!r}")
