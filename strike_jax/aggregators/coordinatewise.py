"""Coordinate-wise rules: Mean, Median, TrMean / RBTM (SPEC §7).

The order statistics come from `ops.rank_band_mean` (a fused min/max sorting network on CPU for
up to 100 rows, an exact radix selection beyond, `jnp.sort` on accelerators; `ops.Backend`):
nothing is sorted into an `[n, d]` temporary. Non-finite values are sorted to the ends (NaN as
`+inf`), so with at most `f` bad rows the robust rules only ever average finite order statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import majority_limit, rule_stage
from strike_jax.registry import flag, register
from strike_jax.stages import Stage

Array = jax.Array


@jax.jit
def _mean(updates: Array) -> Array:
    n = updates.shape[0]
    return ops.weighted_rows(jnp.full((n,), 1.0 / n), updates)


@register("rule", "mean")
def mean(*, backend: ops.Backend | None = None) -> Stage:
    """Plain average of the `n` rows (not robust: non-finite rows give a non-finite result; no
    limit on `f` is claimed).

    Returns:
      A rule `Stage`: `update(updates [n, d], state, ctx) -> ([d], state, ctx)`; `ctx.f` is
      checked but not used.
    """
    del backend

    def core(updates, state, f, key):
        return _mean(updates), state

    return rule_stage("mean", core)


@register("rule", "median", midpoint=flag())
def median(midpoint=False, *, backend: ops.Backend | None = None) -> Stage:
    """Coordinate-wise median (Yin et al. 2018).

    Args:
      midpoint: False (default, SPEC §1): the lower median, sorted position `(n-1)//2`, as the
        reference code. True: the average of the two middle values for even `n` (`jnp.median`).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`. `f` is not used; its limit is `(n-1)//2` (an honest majority; with at most
      that many non-finite rows the result is finite).
    """
    backend = ops.resolve(backend)

    def core(updates, state, f, key):
        n = updates.shape[0]
        lo = (n - 1) // 2
        hi = n // 2 if midpoint else lo
        return ops.rank_band_mean(updates, lo, hi, backend=backend), state  # jitted inside, static ranks

    return rule_stage("median", core, limit=majority_limit)


def trmean_limit(n: int) -> int:
    return majority_limit(n)


def _trimmed_mean(name: str, backend: ops.Backend | None) -> Stage:
    backend = ops.resolve(backend)

    def core(updates, state, b, key):
        n = updates.shape[0]
        return ops.rank_band_mean(updates, b, n - 1 - b, backend=backend), state  # jitted inside, traced ranks

    return rule_stage(name, core, limit=trmean_limit)


@register("rule", "trmean")
def trmean(*, backend: ops.Backend | None = None) -> Stage:
    """Coordinate-wise trimmed mean (Yin et al. 2018; SPEC §7).

    `b = min(f, (n-1)//2)`: per coordinate drop the `b` smallest and `b` largest values, average
    the remaining `n - 2b` (sorted ranks `b .. n-1-b`).

    Returns:
      A rule `Stage`; a concrete `f > (n-1)//2` raises ValueError, a traced one is clamped.
    """
    return _trimmed_mean("trmean", backend)


@register("rule", "rbtm")
def rbtm(*, backend: ops.Backend | None = None) -> Stage:
    """The paper's RBTM (reliable broadcast + trimmed mean): with a central server the broadcast
    part is trivial, so it is `trmean` under its own name (SPEC §7)."""
    return _trimmed_mean("rbtm", backend)


__all__ = ["mean", "median", "rbtm", "trmean", "trmean_limit"]
