"""Distance-based rules: Multi-Krum / Krum, RFA, Aksel, CClip (SPEC §7).

Pairwise distances come from one centred Gram pass over the update matrix
(`ops.pairwise_sq_dists_finite`: column blocks in cache, rows centred per column so the expansion
`|a|^2 + |b|^2 - 2<a, b>` loses nothing to a common offset). RFA iterates in the `[n]` space of
row weights on that Gram matrix (its iterate is a convex combination of the rows) when `n` is
small, and with direct passes otherwise. Distances to one centre (Aksel's median, CClip's `v`) are
blocked passes (`ops.sq_dists_to`). Every result is a weighted row sum `w @ X`.

Rows holding NaN/Inf are infinitely far from everything: never selected, zero weight, and never
allowed to poison a product with their zero weight (`ops.weighted_rows_safe`).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import majority_limit, rule_stage, selection_dists, sum_smallest
from strike_jax.registry import choice, integer, real, register
from strike_jax.stages import Stage

Array = jax.Array


def krum_limit(n: int) -> int:
    return max((n - 3) // 2, 0)


#: Above this many rows Krum's scores come from `ops.rank_band_sum` instead of a row-wise sort.
KRUM_SORT_ROWS = 512


#: Krum's neighbour counts: "n-f-2" (Blanchard et al. 2017, SPEC §7) or "n-f-1" (ByzFL 0.0.11's
#: `Krum`/`MultiKrum`: the mean over sorted squared distances `[1 : n - f]`, self excluded).
KRUM_NEIGHBOURS = ("n-f-2", "n-f-1")


def krum_scores(d2: Array, f: Array, offset: int = 2) -> Array:
    """Krum score of every row: sum of squared distances to its `n - f - offset` nearest other rows.

    Args:
      d2: `[n, n]` squared distances (+inf for non-finite rows; the diagonal is ignored).
      f: Byzantine count (traced ok).
      offset: 2 (SPEC §7) or 1 (ByzFL's convention; a mean instead of a sum ranks the same).

    Returns:
      `[n]` scores (at least one neighbour is always counted, so a row with no finite neighbour
      scores +inf).
    """
    n = d2.shape[0]
    others = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, d2)
    k = jnp.maximum(n - f - offset, 1)
    if n <= KRUM_SORT_ROWS:
        return sum_smallest(others, k)
    # Many rows: row i's sum as column i of the transpose, by the radix band sum of `ops`
    # (XLA:CPU's sort of [10,000, 10,000] took 80 s; the band sum does no sort).
    return ops.rank_band_sum(others.T, 0, k - 1)


@functools.partial(jax.jit, static_argnames=("select", "offset", "backend"))
def _multikrum(updates: Array, fp: Array, *, select: int | None, offset: int, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    d2, finite = selection_dists(updates, backend)
    scores = krum_scores(d2, fp, offset)
    m = n - fp if select is None else select
    chosen = ops.smallest_k_mask(scores, m) & finite
    return ops.masked_mean_safe(updates, chosen, finite)


def _krum_stage(select: int | None, name: str, neighbours: str, backend: ops.Backend | None) -> Stage:
    backend = ops.resolve(backend)
    # ByzFL scores over n - f - 1 neighbours and accepts any f with 2f < n.
    offset, limit = (2, krum_limit) if neighbours == "n-f-2" else (1, majority_limit)

    def core(updates, state, fp, key):
        return _multikrum(updates, fp, select=select, offset=offset, backend=backend), state

    return rule_stage(name, core, limit=limit)


@register("rule", "krum", neighbours=choice(*KRUM_NEIGHBOURS))
def krum(neighbours="n-f-2", *, backend: ops.Backend | None = None) -> Stage:
    """Krum (Blanchard et al. 2017): Multi-Krum selecting the single row with the lowest score.

    Args:
      neighbours: "n-f-2" (default, SPEC §7: limit `(n-3)//2`) or "n-f-1" (ByzFL 0.0.11's `Krum`:
        limit `(n-1)//2`, i.e. `2f < n`); static.

    Cost: quadratic in n, `O(n^2 d)` for the distances and `O(n^2)` memory for the `[n, n]`
    matrix (400 MB at n = 10,000); the scores by a row-wise sort, or a radix band sum above
    `KRUM_SORT_ROWS` rows."""
    return _krum_stage(1, "krum", neighbours, backend)


@register("rule", "multikrum", neighbours=choice(*KRUM_NEIGHBOURS))
def multikrum(neighbours="n-f-2", *, backend: ops.Backend | None = None) -> Stage:
    """Multi-Krum (Blanchard et al. 2017; SPEC §7).

    `f' = min(f, (n-3)//2)`; score of row `i` = sum of squared distances to its `n - f' - 2`
    nearest other rows; average the `n - f'` rows with the lowest scores (ties by row index).
    Non-finite rows are never selected (if fewer than `n - f'` rows are finite, the finite ones
    are averaged). A concrete `f > (n-3)//2` raises, a traced one is clamped.

    Args:
      neighbours: "n-f-2" (default, as above) or "n-f-1" (ByzFL 0.0.11's `MultiKrum`: scores over
        the `n - f - 1` nearest other rows, `f' = min(f, (n-1)//2)`, still averaging `n - f'`
        rows); static.

    Cost: as Krum, quadratic in n (`O(n^2 d)` time, `[n, n]` memory).
    """
    return _krum_stage(None, "multikrum", neighbours, backend)


def _rfa_weights(dist2: Array, finite: Array, eps: Array) -> Array:
    # Double `where`: finite gradients even where a distance is exactly 0.
    pos = finite & (dist2 > 0)
    dist = jnp.sqrt(jnp.where(pos, dist2, 1.0))
    dist = jnp.where(pos, dist, 0.0)
    beta = jnp.where(finite, 1.0 / jnp.maximum(dist, eps), 0.0)
    return beta / jnp.maximum(beta.sum(), jnp.finfo(beta.dtype).tiny)


#: Where RFA's Weiszfeld iterations start: "mean" (SPEC §7) or "zero" (ByzFL 0.0.11's
#: `GeometricMedian`).
RFA_STARTS = ("mean", "zero")


@functools.partial(jax.jit, static_argnames=("iters", "start", "backend"))
def _rfa(updates: Array, eps: Array, *, iters: int, start: str, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    if start == "zero":
        # The first iteration from z = 0 weighs rows by their norms (z = 0 is not a convex
        # combination of the rows, so it cannot be the weights' starting point); every later
        # iterate is one, as from the mean.
        finite = ops.finite_rows(updates, backend=backend)
        a = _rfa_weights(ops.sq_norms(updates, backend=backend), finite, eps)
        iters -= 1
    else:
        a = None
    if backend.few_rows(n):
        g = ops.centred_gram(updates, backend=backend)
        diag = jnp.diagonal(g)
        finite = jnp.isfinite(diag)
        both = finite[:, None] & finite[None, :]
        g = jnp.where(both, g, 0.0)
        # rel[i, j, k] = <x_j - x_i, x_k - x_i>. Since sum(a) = 1, x_i - z = sum_{j != i} a_j
        # (x_i - x_j), so ||x_i - z||^2 = a'^T rel[i] a' with a' = a without entry i. Unlike
        # G_ii - 2 (G a)_i + a^T G a, whose rounding error (~eps * ||x - c||^2) swamps the
        # distance when the iterate nears a row (1-D data, duplicated rows), this keeps a
        # relative accuracy: the error shrinks with a' like the distance does. O(n^3) flops.
        gd = jnp.diagonal(g)
        rel = g[None, :, :] - g[:, :, None] - g[:, None, :] + gd[:, None, None]
        off = ~jnp.eye(n, dtype=bool)
        fin = finite.astype(updates.dtype)
        if a is None:
            a = fin / jnp.maximum(fin.sum(), 1.0)
        for _ in range(iters):
            ap = jnp.where(off, a[None, :], 0.0)
            a = _rfa_weights(jnp.einsum("ij,ijk,ik->i", ap, rel, ap), finite, eps)
        return ops.weighted_rows_safe(a, updates, finite)
    finite = ops.finite_rows(updates, backend=backend)
    z = ops.masked_mean_safe(updates, finite, finite) if a is None else ops.weighted_rows_safe(a, updates, finite)
    for _ in range(iters):
        z = ops.weighted_rows_safe(_rfa_weights(ops.sq_dists_to(updates, z, backend=backend), finite, eps),
                                   updates, finite)
    return z


@register("rule", "rfa", iters=integer(low=1), eps=real(), start=choice(*RFA_STARTS))
def rfa(iters=8, eps=1e-7, start="mean", *, backend: ops.Backend | None = None) -> Stage:
    """RFA: the geometric median by smoothed Weiszfeld iterations (Pillutla et al. 2019; SPEC §7).

    Start at the mean of the finite rows; `iters` times: `beta_i = 1 / max(||X_i - z||, eps)`
    (0 for non-finite rows), `z = sum_i beta_i X_i / sum_i beta_i`.

    ByzFL 0.0.11's `GeometricMedian(nu=0.1, T=3)` is `rfa(iters=T, eps=nu, start="zero")`: the same
    iteration from `z = 0` (its `alpha = 1/n` factor cancels). It drops rows holding an Inf (a NaN row
    would poison its result); here every non-finite row gets weight 0.

    With few rows (`backend.few_rows(n)`: CPU, `n <= 128`) the iterate is kept as weights,
    `z = a @ X`, and the distances come from the centred Gram matrix `G`:
    `||X_i - z||^2 = a'^T R_i a'` with `R_i[j, k] = <X_j - X_i, X_k - X_i>` (from `G`) and `a'` the
    weights without entry `i` (relative accuracy even when the iterate nears a row). One pass over
    `X` for `G`, one for the result. With many rows a Gram matrix costs more than the iterations
    (`n^2 d` flops): each iteration is then two passes (distances to `z`, then `beta @ X`).

    Args:
      iters: Weiszfeld iterations (T = 8 in the paper; static).
      eps: smoothing of the distances (traceable).
      start: "mean" (default, SPEC §7) or "zero" (ByzFL; static).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`; `f` is not used, its limit is `(n-1)//2` (the geometric median's breakdown).
    """
    backend = ops.resolve(backend)

    def core(updates, state, f, key):
        return _rfa(updates, jnp.asarray(eps, updates.dtype), iters=iters, start=start, backend=backend), state

    return rule_stage("rfa", core, limit=majority_limit)


@functools.partial(jax.jit, static_argnames=("backend",))
def _aksel(updates: Array, *, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    med = ops.lower_median(updates, backend=backend)
    med = jnp.where(jnp.isfinite(med), med, 0.0)
    # Row-exact sums: identical rows must get identical scores, since every row tied at the cut
    # is kept (a matrix-vector product may round the last rows of a block differently).
    s = ops.sq_dists_to(updates, med, row_exact=True, backend=backend)
    ok = jnp.isfinite(s)
    s = jnp.where(ok, s, jnp.inf)
    thr = jnp.sort(s)[(n - 1) // 2]
    keep = (s <= thr) & ok
    return ops.masked_mean_safe(updates, keep, ok)


@register("rule", "aksel")
def aksel(*, backend: ops.Backend | None = None) -> Stage:
    """Aksel (Boussetta et al. 2021; SPEC §7).

    `s_i = ||X_i - med||^2` with `med` the coordinate-wise lower median; keep every row with
    `s_i <=` the lower median of the `s_i`; average them. Identical rows get identical scores, so
    rows tied at the cut are all kept. Non-finite rows have `s_i = +inf` and are never kept (a
    coordinate whose median is not finite — more than `(n-1)//2` bad values — is compared against
    0 instead). `f` is not used; its limit is `(n-1)//2` (the median's).
    """
    backend = ops.resolve(backend)

    def core(updates, state, f, key):
        return _aksel(updates, backend=backend), state

    return rule_stage("aksel", core, limit=majority_limit)


@functools.partial(jax.jit, static_argnames=("iters", "backend"))
def _cclip(updates: Array, v: Array, tau: Array, *, iters: int, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    for _ in range(iters):
        s = ops.sq_dists_to(updates, v, backend=backend)
        ok = jnp.isfinite(s)
        pos = ok & (s > 0)
        dist = jnp.sqrt(jnp.where(pos, s, 1.0))
        c = jnp.where(pos, jnp.minimum(1.0, tau / dist), ok.astype(updates.dtype))
        c = c / n
        v = v * (1.0 - c.sum()) + ops.weighted_rows_safe(c, updates, ok)
    return v


@register("rule", "cclip", tau=real(), iters=integer(low=1))
def cclip(tau=10.0, iters=1, *, backend: ops.Backend | None = None) -> Stage:
    """Centred clipping (Karimireddy et al. 2021; SPEC §7). Stateful.

    State `v`: the previous output (`init` gives zeros `[d]`). `iters` (L) times:
    `v = v + mean_i (X_i - v) * min(1, tau / ||X_i - v||)`. Output and new state: `v`.
    A non-finite row is infinitely far, so its direction is undefined: it contributes 0 (it still
    counts in the mean's `n`). Each iteration is two passes over `X` (distances to `v`, then
    `v (1 - sum c / n) + (c / n) @ X`).

    Args:
      tau: clipping radius (10 in the paper; traceable).
      iters: L, the number of clipping iterations (1 in the paper; static).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`; `f` is not used and no limit is claimed.
    """
    backend = ops.resolve(backend)

    def init(shape):
        return jnp.zeros(tuple(shape.shape[1:]), shape.dtype)

    def core(updates, state, f, key):
        chex.assert_shape(state, updates.shape[1:], custom_message="cclip: the state must be the [d] previous output")
        v = _cclip(updates, jnp.asarray(state, updates.dtype), jnp.asarray(tau, updates.dtype), iters=iters,
                   backend=backend)
        return v, v

    return rule_stage("cclip", core, init=init, stateful=True)


__all__ = ["KRUM_NEIGHBOURS", "RFA_STARTS", "aksel", "cclip", "krum", "krum_limit", "krum_scores", "multikrum", "rfa"]
