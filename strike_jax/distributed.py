"""`jax.distributed` helpers; they live in `strike_jax.sharding` (this name is kept for old imports)."""

from strike_jax.sharding import initialize, is_main_process

__all__ = ["initialize", "is_main_process"]
