"""Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018; SPEC §7).

Not in the paper; the reference code's version is broken (it does not rescore after removing a
row). This is the published rule:

1. Selection: `theta = n - 2f` rows by repeated Krum: pick the row with the lowest Krum score
   within the remaining set (score = sum of squared distances to its `max(r - f - 2, 1)` nearest
   other remaining rows, `r` the remaining count; ties by row index), remove it, rescore.
2. Aggregation: per coordinate, average the `beta = theta - 2f` selected values closest to the
   coordinate-wise lower median of the selected values (SPEC §1); ties in distance go to the
   smaller value (`ops.median_window_mean`), which keeps the result independent of row order.

Limit: `f <= (n - 3) // 4` (then `beta = n - 4f >= 3`). Non-finite rows are never selected.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops
from strike_jax.aggregators.base import rule_stage, selection_dists
from strike_jax.registry import register
from strike_jax.stages import Stage

Array = jax.Array


def bulyan_limit(n: int) -> int:
    return max((n - 3) // 4, 0)


def bulyan_selection(d2: Array, finite: Array, f: Array) -> Array:
    """The `n - 2f` rows picked by repeated Krum (`[n]` bool).

    Every row's neighbours are ranked once (stable argsort, ties by index); removing row `p`
    then lowers by one the neighbour rank of everything ranked after `p`, so each of the `n`
    steps is O(n^2) element-wise work, with no sort and no gather.

    Args:
      d2: `[n, n]` squared distances (+inf for non-finite rows).
      finite: `[n]` bool; non-finite rows are never picked.
      f: Byzantine count (traced ok).
    """
    n = d2.shape[0]
    eye = jnp.eye(n, dtype=bool)
    others = jnp.where(eye, jnp.inf, d2)
    rank = ops.stable_ranks_rows(others)  # rank[i, j]: position of j among i's neighbours
    theta = n - 2 * f
    big = jnp.finfo(d2.dtype).max

    def body(t, carry):
        selected, rank = carry
        remaining = ~selected
        k = jnp.maximum(remaining.sum() - f - 2, 1)
        near = remaining[None, :] & ~eye & (rank < k)
        score = jnp.sum(jnp.where(near, others, 0.0), axis=1)
        # A remaining row whose neighbours are all gone or infinite still beats every removed one.
        score = jnp.where(remaining & finite, jnp.minimum(score, big), jnp.inf)
        pick = ops.smallest_k_mask(score, 1) & remaining & finite & (t < theta)
        # Neighbours ranked after the removed row move up one place.
        p_rank = jnp.sum(jnp.where(pick[None, :], rank, 0), axis=1)  # its rank in every row
        moved = jnp.any(pick) & (rank > p_rank[:, None])
        return selected | pick, rank - moved.astype(rank.dtype)

    selected, _ = lax.fori_loop(0, n, body, (jnp.zeros((n,), bool), rank))
    return selected


@functools.partial(jax.jit, static_argnames=("backend",))
def _bulyan(updates: Array, fb: Array, *, backend: ops.Backend) -> Array:
    d2, finite = selection_dists(updates, backend)
    sel = bulyan_selection(d2, finite, fb)
    cnt = sel.sum()
    beta = jnp.clip(cnt - 2 * fb, 1, jnp.maximum(cnt, 1))
    return ops.median_window_mean(updates, beta, sel, backend=backend)


@register("rule", "bulyan")
def bulyan(*, backend: ops.Backend | None = None) -> Stage:
    """Builds Bulyan: a rule `Stage` (`update(updates [n, d], state, ctx) -> ([d], state, ctx)`);
    a concrete `f > (n-3)//4` raises, a traced one is clamped.

    Cost: cubic in n: `n - 2f` Krum selections, each `O(n^2)` element-wise work on the `[n, n]`
    distances (`bulyan_selection`), after `O(n^2 d)` for the distances; `O(n^2)` memory. Measured on
    XLA:CPU (d = 1000): 3.4 s per round at n = 1000, so about an hour at n = 10,000 (an accelerator
    or bucketing first is the way at that size)."""
    backend = ops.resolve(backend)

    def core(updates, state, fb, key):
        return _bulyan(updates, fb, backend=backend), state

    return rule_stage("bulyan", core, limit=bulyan_limit)


__all__ = ["bulyan", "bulyan_limit", "bulyan_selection"]
