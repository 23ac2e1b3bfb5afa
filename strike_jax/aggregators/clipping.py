"""Norm-clipping pre-aggregators: static Clipping and Adaptive Robust Clipping (ARC).

Both rescale rows, `x_i -> min(1, c / ||x_i||) x_i`: one blocked pass for the norms
(`ops.sq_norms`), one fused pass for the scaling. `f` passes through unchanged. Rows holding
NaN/Inf are left exactly as they are (a scale cannot make them finite; the rule after the
pre-aggregator treats them as infinitely far, SPEC §7), and count as rows of infinite norm where
norms are ranked (ARC). Unlike NNM and bucketing the rows are not mixed, so `ctx.byzantine_mask`
is kept.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import resolve_f
from strike_jax.registry import real, register
from strike_jax.stages import Stage, check_updates, empty_init, make_stage, no_limit

Array = jax.Array


def clip_scales(sq_norms: Array, threshold: Array) -> Array:
    """`min(1, threshold / ||x_i||)` per row, 1 for rows with a non-finite or zero norm. `[n]`."""
    ok = jnp.isfinite(sq_norms) & (sq_norms > 0)
    nrm = ops.safe_sqrt(jnp.where(ok, sq_norms, 1.0))
    scale = jnp.minimum(1.0, threshold / jnp.where(ok, nrm, 1.0))
    return jnp.where(ok, scale, 1.0)


@functools.partial(jax.jit, static_argnames=("backend",))
def _clipping(updates: Array, c: Array, *, backend: ops.Backend) -> Array:
    scale = clip_scales(ops.sq_norms(updates, backend=backend), c)
    return updates * scale.astype(updates.dtype)[:, None]


def _row_scaling_stage(name: str, apply, max_f) -> Stage:
    """A pre-aggregator rescaling rows: `apply(updates, f) -> [n, d]`; `f` and the mask pass."""

    def update(x, state, ctx):
        check_updates(name, x)
        n = x.shape[0]
        return apply(x, resolve_f(ctx.f, max_f(n), name, n)), state, ctx

    return make_stage(name, "preaggregator", empty_init, update, max_f=max_f)


@register("preaggregator", "clipping", c=real(low=0.0, strict=False))
def clipping(c=2.0, *, backend: ops.Backend | None = None) -> Stage:
    """Static clipping (ByzFL `Clipping(c=2.0)`): every row with `||x_i|| > c` is rescaled to norm `c`.

    Args:
      c: clipping threshold (`>= 0`; traceable).
      backend: `ops.Backend` (resolved now).

    Returns:
      A pre-aggregator `Stage` (`[n, d] -> [n, d]`, `f' = f`); no limit on `f` is claimed.
    """
    backend = ops.resolve(backend)
    return _row_scaling_stage(
        "clipping", lambda x, f: _clipping(x, jnp.asarray(c, x.dtype), backend=backend), no_limit)


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
    thr = jnp.where(jnp.isfinite(thr_sq), ops.safe_sqrt(jnp.where(jnp.isfinite(thr_sq), thr_sq, 0.0)), jnp.inf)
    return clip_scales(sq_norms, thr)


@functools.partial(jax.jit, static_argnames=("backend",))
def _arc(updates: Array, fr: Array, *, backend: ops.Backend) -> Array:
    scale = arc_scales(ops.sq_norms(updates, backend=backend), fr)
    return updates * scale.astype(updates.dtype)[:, None]


def arc_limit(n: int) -> int:
    return n - 1


@register("preaggregator", "arc")
def arc(*, backend: ops.Backend | None = None) -> Stage:
    """Adaptive Robust Clipping (Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan 2024, "The vital
    role of gradient clipping in Byzantine-resilient distributed learning", arXiv:2405.14432, Alg. 1;
    ByzFL `ARC(f)`).

    With `k = floor(2 (f / n) (n - f))`, the `k` rows of largest norm are clipped to the norm of the
    largest remaining row (the `(k + 1)`-th largest); the other rows are unchanged. Ties in norm are
    irrelevant (tied rows get the same threshold). Limit `f <= n - 1` (as NNM); `f` passes through.
    Differentiable.

    Returns:
      A pre-aggregator `Stage` (`[n, d] -> [n, d]`, `f' = f`).
    """
    backend = ops.resolve(backend)
    return _row_scaling_stage("arc", lambda x, f: _arc(x, f, backend=backend), arc_limit)


__all__ = ["arc", "arc_clipped_count", "arc_limit", "arc_scales", "clip_scales", "clipping"]
