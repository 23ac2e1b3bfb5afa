"""ByzFL's simple attacks: Gaussian noise and sign flipping of the honest mean.

Both send one vector, the same for every Byzantine client (as ByzFL's `ByzantineClient`, which
repeats the attack's vector `f` times). `H` is the honest rows (or, when no honest client was
sampled, the Byzantine rows' own honest updates, SPEC §6).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.attacks.base import (
    Attack,
    check_real,
    empty_init,
    make_attack,
    mean_weights,
    reference_mask,
    replace_rows,
)

Array = jax.Array


def gaussian_vector(key: Array, d: int, mu, sigma, dtype) -> Array:
    """`[d]` draw of `N(mu, sigma^2)` per coordinate."""
    return jnp.asarray(mu, dtype) + jnp.asarray(sigma, dtype) * jax.random.normal(key, (d,), dtype)


def gaussian(mu=0.0, sigma=1.0) -> Attack:
    """Gaussian attack (ByzFL `Gaussian(mu=0.0, sigma=1.0)`): every Byzantine client sends the same
    vector drawn from `N(mu, sigma^2 I)`, independent of the honest updates (a new draw each call,
    from `key`).

    Args:
      mu: mean of every coordinate (float, may be traced).
      sigma: standard deviation (float `>= 0`, may be traced).

    Raises:
      ValueError: a concrete `mu` that is not finite, or a concrete `sigma` < 0.
    """
    check_real("mu", mu)
    check_real("sigma", sigma, nonnegative=True)

    def apply(updates, byzantine_mask, state, *, key=None):
        if key is None:
            raise ValueError("gaussian.apply needs a PRNG `key` (it draws the Byzantine vector).")
        row = gaussian_vector(key, updates.shape[1], mu, sigma, updates.dtype)
        return replace_rows(updates, byzantine_mask, row), state

    return make_attack("gaussian", empty_init, apply, {"mu": mu, "sigma": sigma})


def signflip_vector(updates: Array, byzantine_mask: Array) -> Array:
    """`-mu`, minus the mean of `H`. `[n, d]`, `[n]` -> `[d]`."""
    ref = reference_mask(byzantine_mask)
    return -ops.weighted_rows(mean_weights(ref, updates.dtype), updates)


def signflip() -> Attack:
    """Sign flipping of the honest mean (ByzFL `SignFlipping`; Allen-Zhu et al., ICLR 2021): every
    Byzantine client sends `-mu`, minus the mean of the honest updates.

    How it differs from `bitflip` (SPEC §6, the paper's BitFlip): there each Byzantine client sends
    minus its *own* honestly computed update (`-x_i`, so the Byzantine rows differ and need no
    knowledge of the honest clients); here all send the same `-mean(H)` (omniscient). ByzFL's
    SignFlipping is this one: `-mean(honest_vectors)`.
    """

    def apply(updates, byzantine_mask, state, *, key=None):
        del key
        return replace_rows(updates, byzantine_mask, signflip_vector(updates, byzantine_mask)), state

    return make_attack("signflip", empty_init, apply, {})
