"""Pre-aggregation stages: Nearest-Neighbour Mixing and bucketing (SPEC §7).

Both are linear maps of the rows. NNM is `W @ X` with an `[n, n]` weight matrix from one centred
Gram pass, so it never gathers an `[n, n - f, d]` tensor (ByzFL's NNM needs 55 GiB at 50 x 6.6M;
this needs the `[n, d]` output only). Bucketing gathers each bucket's `s` rows and averages them in
one fused pass. Both hand the next stage `ctx.byzantine_mask = None` (the rows are mixtures);
bucketing also hands it `f' = ceil(f/s)`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import require_key, resolve_f
from strike_jax.registry import flag, integer, is_traced, register
from strike_jax.stages import Stage, check_updates, empty_init, make_stage

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("include_self", "backend"))
def _nnm(updates: Array, fr: Array, *, include_self: bool, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    gram = ops.centred_gram(updates, backend=backend)
    d2, finite = ops.sq_dists_from_gram(gram)
    # Finite rows' squared distance to the centre c is the centred Gram diagonal.
    to_centre = jnp.where(finite, jnp.diagonal(gram), jnp.inf)
    d2 = jnp.where(finite[:, None], d2, to_centre[None, :])  # bad rows search from c
    d2 = jnp.where(finite[None, :], d2, jnp.inf)  # nobody picks a bad row
    eye = jnp.eye(n, dtype=bool)
    if include_self:
        d2 = jnp.where(eye & finite[:, None], -1.0, d2)  # self first, even among exact ties
        k = n - fr
    else:
        d2 = jnp.where(eye, jnp.inf, d2)
        k = jnp.minimum(n - fr, n - 1)
    d2 = jax.lax.stop_gradient(d2)
    w = (ops.smallest_k_mask_rows(d2, k, backend=backend) & finite[None, :]).astype(updates.dtype)
    w = w / jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)
    return ops.weighted_rows_safe(w, updates, finite)


def nnm_limit(n: int) -> int:
    return n - 1


@register("preaggregator", "nnm", include_self=flag())
def nnm(include_self=True, *, backend: ops.Backend | None = None) -> Stage:
    """Nearest-Neighbour Mixing (Allouah et al. 2023; SPEC §7).

    Every row is replaced by the mean of its `n - f` nearest rows (squared Euclidean distance,
    ties by row index), as `W @ X` with an `[n, n]` weight matrix from one centred Gram pass.

    Args:
      include_self: True (the paper, SPEC §7): the row itself is one of its `n - f` neighbours
        (first, even among exact duplicates). False (the reference code): the `n - f` nearest
        *other* rows (`n - 1` others when `f = 0`).
      backend: `ops.Backend` (resolved now).

    Non-finite rows are never anyone's neighbour. A non-finite row has no distances, so it is
    replaced by the mean of the `n - f` finite rows nearest to the centre `c` (the per-coordinate
    mean of the finite entries). If fewer than `n - f` rows are finite, every row averages all
    finite rows. So every output row is finite whenever at least one input row is. `f' = f`.
    Limit: `f <= n - 1`.

    Returns:
      A pre-aggregator `Stage` (`[n, d] -> [n, d]`).
    """
    backend = ops.resolve(backend)

    def update(x, state, ctx):
        check_updates("nnm", x)
        n = x.shape[0]
        out = _nnm(x, resolve_f(ctx.f, nnm_limit(n), "nnm", n), include_self=include_self, backend=backend)
        return out, state, ctx._replace(byzantine_mask=None)

    return make_stage("nnm", "preaggregator", empty_init, update, max_f=nnm_limit)


def _bucket_means(updates: Array, members: Array, finite: Array) -> Array:
    # members: [m, s] row indices (n for the padding of the last bucket). Out row b is the mean of
    # its finite members: s gathers of [m, d] rows, fused with the weighting (one pass; a
    # `[m, n] @ [n, d]` product would cost O(n m d) flops).
    n = updates.shape[0]
    valid = members < n
    idx = jnp.where(valid, members, 0)
    use = valid & finite[idx]
    cnt = use.sum(axis=1, keepdims=True)
    w = use.astype(updates.dtype) / jnp.maximum(cnt, 1).astype(updates.dtype)
    out: Array | None = None
    for t in range(members.shape[1]):
        rows = jnp.take(updates, idx[:, t], axis=0)
        term = jnp.where(use[:, t:t + 1], w[:, t:t + 1] * rows, jnp.zeros((), updates.dtype))
        out = term if out is None else out + term
    assert out is not None, "members has at least one column"
    return jnp.where(cnt > 0, out, jnp.nan)


@functools.partial(jax.jit, static_argnames=("s", "backend"))
def _bucketing(updates: Array, key: Array, *, s: int, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    m = -(-n // s)
    perm = jax.random.permutation(key, n)
    members = jnp.concatenate([perm, jnp.full((m * s - n,), n, perm.dtype)]).reshape(m, s)
    # With every row finite the means need no mask (a constant one, folded away). The check reads
    # the input rows: a reduction over the bucket means instead had XLA:CPU fuse their gathers into
    # its reduce loop (28.5 vs 8.3 ms at 512 x 16,384, s = 32).
    ok = ops.finite_rows(updates, backend=backend)
    return jax.lax.cond(jnp.all(ok), lambda u: _bucket_means(u, members, jnp.ones((n,), bool)),
                        lambda u: _bucket_means(u, members, ok), updates)


@register("preaggregator", "bucketing", s=integer(low=1), rescale_f=flag())
def bucketing(s=2, rescale_f=True, *, backend: ops.Backend | None = None) -> Stage:
    """Bucketing (Karimireddy, He & Jaggi, ICLR 2022; SPEC §7).

    Shuffle the rows (`jax.random.permutation(key, n)`: row `perm[j]` goes to bucket `j // s`),
    average consecutive groups of `s` (the last group may be smaller): `ceil(n/s)` rows out, and
    `f' = ceil(f/s)` (a Python int for a concrete `f`).

    Non-finite rows are left out of their bucket's average; a bucket made only of non-finite rows
    is NaN. (Averaging them in would turn up to `f` buckets non-finite while the rule is only told
    `ceil(f/s)`.)

    Args:
      s: bucket size (>= 1; static).
      rescale_f: True (default, SPEC §7): hand the next stage `ceil(f/s)`. False: hand it `f`
        unchanged, as ByzFL 0.0.11 does (its `Bucketing(s)` has no `f`; every stage is built with
        the declared `f`; its default `s` is 1). Static.
      backend: `ops.Backend` (resolved now).

    Returns:
      A pre-aggregator `Stage` (`[n, d] -> [ceil(n/s), d]`); `update` needs `ctx.key`.
    """
    backend = ops.resolve(backend)

    def output_rows(n):
        return -(-n // s)

    def output_f(f):
        return -(-f // s) if rescale_f else f

    def update(x, state, ctx):
        check_updates("bucketing", x)
        n = x.shape[0]
        key = require_key("bucketing", ctx.key)
        fr = resolve_f(ctx.f, n, "bucketing", n + 1)
        out = _bucketing(x, key, s=s, backend=backend)
        if not rescale_f:
            f_new = ctx.f
        elif is_traced(ctx.f):
            f_new = (fr + s - 1) // s
        else:
            f_new = int(math.ceil(int(ctx.f) / s))
        return out, state, ctx._replace(f=f_new, byzantine_mask=None)

    return make_stage("bucketing", "preaggregator", empty_init, update, max_f=lambda n: n,
                      output_rows=output_rows, output_f=output_f, needs_key=True)


__all__ = ["bucketing", "nnm", "nnm_limit"]
