"""Norm-clipping pre-aggregators: static Clipping and Adaptive Robust Clipping (ARC).

Both rescale rows, `x_i -> min(1, c / ||x_i||) x_i`: one blocked pass for the norms, one fused
pass for the scaling. `f` passes through unchanged. Rows holding NaN/Inf are left exactly as they
are (a scale cannot make them finite; the rule after the pre-aggregator treats them as
infinitely far, SPEC §7), and count as rows of infinite norm where norms are ranked (ARC).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax.aggregators.base import PreAggregator, check_number, empty_init, resolve_f
from strike_jax.aggregators.similarity import row_sq_norms, safe_norm, scale_rows

Array = jax.Array


def clip_scales(sq_norms: Array, threshold: Array) -> Array:
    """`min(1, threshold / ||x_i||)` per row, 1 for rows with a non-finite or zero norm. `[n]`."""
    ok = jnp.isfinite(sq_norms) & (sq_norms > 0)
    nrm = safe_norm(jnp.where(ok, sq_norms, 1.0))
    scale = jnp.minimum(1.0, threshold / jnp.where(ok, nrm, 1.0))
    return jnp.where(ok, scale, 1.0)


def clipping(c: float = 2.0) -> PreAggregator:
    """Static clipping (ByzFL `Clipping(c=2.0)`): every row with `||x_i|| > c` is rescaled to norm `c`.

    Args:
      c: clipping threshold (`>= 0`; a float that may be traced).

    Returns:
      A `PreAggregator`; `apply(updates [n, d], state, f=...) -> ([n, d], f, ())`.
    """
    check_number("clipping", "c", c, low=0.0, strict=False)

    @jax.jit
    def impl(updates, c):
        return scale_rows(updates, clip_scales(row_sq_norms(updates), c))

    def apply(updates, state, *, f=0, key=None):
        return impl(updates, jnp.asarray(c, updates.dtype)), f, state

    return PreAggregator("clipping", empty_init, apply, lambda n: n, lambda n: None, {"c": c})


def arc_clipped_count(n: int, f: Array) -> Array:
    """`k = floor(2 f (n - f) / n)`, the number of rows ARC clips (integer arithmetic)."""
    f = jnp.asarray(f, jnp.int32)
    return (2 * f * (n - f)) // n


def arc_scales(sq_norms: Array, f: Array) -> Array:
    """ARC's per-row scales: the `k` largest norms are clipped to the largest of the others.

    Args:
      sq_norms: `[n]` squared norms (NaN/Inf count as `+inf`: among the largest).
      f: Byzantine count (traced ok).

    Returns:
      `[n]` scales in `(0, 1]` (1 for non-finite rows, which stay as they are).
    """
    n = sq_norms.shape[0]
    s = jnp.where(jnp.isnan(sq_norms), jnp.inf, sq_norms)
    k = arc_clipped_count(n, f)
    thr_sq = jnp.sort(s)[jnp.maximum(n - k - 1, 0)]
    thr = jnp.where(jnp.isfinite(thr_sq), safe_norm(jnp.where(jnp.isfinite(thr_sq), thr_sq, 0.0)), jnp.inf)
    return clip_scales(sq_norms, thr)


def arc() -> PreAggregator:
    """Adaptive Robust Clipping (Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan 2024, "The vital
    role of gradient clipping in Byzantine-resilient distributed learning", arXiv:2405.14432, Alg. 1;
    ByzFL `ARC(f)`).

    With `k = floor(2 (f / n) (n - f))`, the `k` rows of largest norm are clipped to the norm of the
    largest remaining row (the `(k + 1)`-th largest); the other rows are unchanged. Ties in norm are
    irrelevant (tied rows get the same threshold). Limit `f <= n - 1` (as NNM); `f` passes through.
    Differentiable.
    """

    @jax.jit
    def impl(updates, fr):
        return scale_rows(updates, arc_scales(row_sq_norms(updates), fr))

    def apply(updates, state, *, f, key=None):
        n = updates.shape[0]
        return impl(updates, resolve_f(f, n - 1, "arc", n)), f, state

    return PreAggregator("arc", empty_init, apply, lambda n: n, lambda n: n - 1, {})


__all__ = ["arc", "arc_clipped_count", "arc_scales", "clip_scales", "clipping"]
