"""ByzFL's simple attacks: Gaussian noise and sign flipping of the honest mean.

Both send one vector, the same for every Byzantine client (as ByzFL's `ByzantineClient`, which
repeats the attack's vector `f` times). `H` is the honest rows (or, when no honest client was
sampled, the Byzantine rows' own honest updates, SPEC §6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.attacks.base import attack_stage, reference_mask, replace_rows, row_attack
from strike_jax.registry import real, register
from strike_jax.stages import Stage

Array = jax.Array


def gaussian_vector(key: Array, d: int, mu, sigma, dtype) -> Array:
    """`[d]` draw of `N(mu, sigma^2)` per coordinate."""
    return jnp.asarray(mu, dtype) + jnp.asarray(sigma, dtype) * jax.random.normal(key, (d,), dtype)


@register("attack", "gaussian", mu=real(low=None), sigma=real(low=0.0, strict=False))
def gaussian(mu=0.0, sigma=1.0, *, backend: ops.Backend | None = None) -> Stage:
    """Gaussian attack (ByzFL `Gaussian(mu=0.0, sigma=1.0)`): every Byzantine client sends the same
    vector drawn from `N(mu, sigma^2 I)`, independent of the honest updates (a new draw each call,
    from `key`).

    Args:
      mu: mean of every coordinate (finite; traceable).
      sigma: standard deviation (`>= 0`; traceable).
      backend: unused.

    Returns:
      An attack `Stage`; `update` needs `ctx.key`.
    """
    del backend

    def core(updates, mask, state, key):
        row = gaussian_vector(key, updates.shape[1], mu, sigma, updates.dtype)
        return replace_rows(updates, mask, row), state

    return attack_stage("gaussian", core, needs_key=True)


def signflip_vector(updates: Array, byzantine_mask: Array) -> Array:
    """`-mu`, minus the mean of `H`. `[n, d]`, `[n]` -> `[d]`."""
    return -ops.masked_mean(updates, reference_mask(byzantine_mask))


@register("attack", "signflip")
def signflip(*, backend: ops.Backend | None = None) -> Stage:
    """Sign flipping of the honest mean (ByzFL `SignFlipping`; Allen-Zhu et al., ICLR 2021): every
    Byzantine client sends `-mu`, minus the mean of the honest updates.

    How it differs from `bitflip` (SPEC §6, the paper's BitFlip): there each Byzantine client sends
    minus its *own* honestly computed update (`-x_i`, so the Byzantine rows differ and need no
    knowledge of the honest clients); here all send the same `-mean(H)` (omniscient). ByzFL's
    SignFlipping is this one: `-mean(honest_vectors)`.
    """
    del backend
    return row_attack("signflip", signflip_vector)


__all__ = ["gaussian", "gaussian_vector", "signflip", "signflip_vector"]
