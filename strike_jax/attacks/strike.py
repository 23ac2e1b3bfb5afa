"""STRIKE: the two-stage attack exploiting gradient skew (Liu et al., AAAI 2025; SPEC §6).

Stage 1 (`search_direction`, `select_skewed`): search from the honest mean towards the honest
coordinate-wise lower median, `u = med - mu`, and select the `h - f` honest rows with the largest
projection `p_i = <H_i, u / ||u||>` (the "skewed" rows S; paper Eq. 6-8, with Algorithm 1's
"n - f" typo fixed to `n - 2f` in the paper's notation, i.e. `h - f`).

Stage 2 (`hidden_vector`, `bisect_alpha`): hide the Byzantine update inside S:
`g_b = g_S + nu * alpha * dev`, `dev = sign(g_S - mu) * sigma_S` (Eq. 12; Eq. 13/14 drop the `- mu`,
a typo), with `alpha` the largest value such that `max_{i in S} ||g_S + alpha dev - H_i|| <= D`,
`D = max_{i,j in S} ||H_i - H_j||` (Eq. 13), found by bisection (Appendix C, Algorithm 2).

`strike_vector` chains the stages (plus the `h <= f` fallback) into the Byzantine row;
`strike_attack` builds the registry attack (`attacks.get("strike", nu=...)`). Everything is a pure
function of arrays: `f` (the mask's count) and `nu` may be traced, so `jax.vmap` over masks or over
`nu` compiles once.

How the distances are computed: one blocked pass over `U` (`ops.column_stats`) yields `g_S`,
`sigma_S`, `dev`, the Gram matrix of the rows centred at `g_S`, and `q_i = <H_i - g_S, dev>`. Then
`D^2 = max_{i,j in S} (G_ii + G_jj - 2 G_ij)` and
`||g_S + a dev - H_i||^2 = G_ii - 2 a q_i + a^2 ||dev||^2` come from the same centred Gram
quantities (the same method for both sides of the constraint, SPEC §6.4), and each bisection
step is O(n).

On CPU (`fused`, the default where the median is a sorting network) STRIKE makes two passes over
`U`: stage 1 (mean, median, scores) as one blocked pass (`_search_and_scores`), and stage 2 with
the Gram matrix of the rows of S alone (`hidden_vector(compact=True)`). Measured at n = 50,
f = 10 (`experiments/bench_strike.py`, shared 2-core machine, process CPU time): 0.94 -> 0.73 s at
d = 2.47M. What is left is arithmetic, not memory traffic: the median's network (358
comparators per column, ~8 passes' worth of time) and the Gram product (`|S|^2 d` multiply-adds).
Issue 24 (`experiments/results/bench_strike_cpu.md`, before/after in interleaved workers, loaded
2-core machine): with the masked median at a static rank (`ops.masked_lower_median`) STRIKE
costs 20.5-21 passes' worth at d = 11.2M (was 23-26) and the fused form stays the fastest by wall
time at 2.47M and 11.2M (4.54 s vs 4.93-4.96 s for the unfused stage 1 at 11.2M); `compact`
selects the stage-2 Gram form on its own.
The fused program takes about twice as long to compile (6.2 s vs 3.2 s at n = 50, d = 101,770,
saving 10 ms per call there), so it is the default only from `FUSED_MIN_DIM` coordinates on.

References:
  Liu, Y., Chen, C., Lyu, L., Jin, Y., Chen, G. "Exploit Gradient Skewness to Circumvent Byzantine
  Defenses for Federated Learning", AAAI 2025 (`paper/strike_aaai2025.md`: Section 5, Algorithm 1,
  Appendix C Algorithm 2). SPEC.md §6 "STRIKE" (items 1-7).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops
from strike_jax.attacks.base import reference_mask, row_attack
from strike_jax.registry import real, register
from strike_jax.stages import Stage

Array = jax.Array

#: Bisection defaults (SPEC §6.4): absolute tolerance on alpha, bounded doublings of the bracket.
TOL = 1e-5
MAX_DOUBLINGS = 60
#: Enough halvings to shrink the widest bracket (2^(MAX_DOUBLINGS-1)) below TOL: 59 + 17 <= 80.
MAX_HALVINGS = 80


class SearchDirection(NamedTuple):
    """Stage 1a (paper Eq. 6).

    Attributes:
      mean: `[d]` honest mean `mu`.
      median: `[d]` honest coordinate-wise lower median `med` (SPEC §1).
      direction: `[d]` `u_search = med - mu`.
    """

    mean: Array
    median: Array
    direction: Array


class Selection(NamedTuple):
    """Stage 1b (paper Eq. 7-8).

    Attributes:
      projections: `[n]` `p_i = <U_i, u / ||u||>` for every row (0 for all rows if `u == 0`).
      skewed_mask: `[n]` bool, the set S: the `k` rows of the honest mask with the largest `p_i`,
        ties broken by row order (the earlier row wins; SPEC §6.7).
    """

    projections: Array
    skewed_mask: Array


class HiddenVector(NamedTuple):
    """Stage 2 ingredients (paper Eq. 12-13), all from one pass over `U`.

    Attributes:
      centre: `[d]` `g_S`, the mean of the rows in S.
      sigma: `[d]` `sigma_S`, their coordinate-wise biased std.
      dev: `[d]` `sign(g_S - mu) * sigma_S`.
      sq_dists: `[n]` `||U_i - g_S||^2` (`A_i`).
      dots: `[n]` `<U_i - g_S, dev>` (`B_i`).
      dev_sq_norm: scalar `||dev||^2` (`C`).
      diameter_sq: scalar `D^2 = max_{i,j in S} ||U_i - U_j||^2` (0 for |S| <= 1).

    For `i in S`, `||g_S + a dev - U_i||^2 = A_i - 2 a B_i + a^2 C`.
    """

    centre: Array
    sigma: Array
    dev: Array
    sq_dists: Array
    dots: Array
    dev_sq_norm: Array
    diameter_sq: Array


class StrikeResult(NamedTuple):
    """Everything `strike_vector` computed.

    Attributes:
      vector: `[d]` the update every Byzantine client sends.
      alpha: scalar, the bisection's feasible alpha (before the `nu` factor); 0 in the fallback.
      fallback: scalar bool, True when `h <= f` and the fallback rule produced `vector`.
      search: `SearchDirection`.
      selection: `Selection`.
      hidden: `HiddenVector`.
    """

    vector: Array
    alpha: Array
    fallback: Array
    search: SearchDirection
    selection: Selection
    hidden: HiddenVector


# From this many coordinates on, the fused CPU path is the default (its run-time gain pays for
# its longer compile within a few rounds; below, the compile dominates).
FUSED_MIN_DIM = 1 << 20
# From this many rows stage 2 forms the Gram matrix of S alone (`hidden_vector(compact=True)`) also
# on the unfused path: at 10,000 x 20,000 with f = 2,000 (|S| = 6,000, a 8,192-row bucket) STRIKE took
# 27.5 s compact and 43.7 s with all 10,000 rows (quiet 2-core CPU, `ops.Backend.gram_column_chunk`
# blocks). Below, |S| = h - f usually lands in the all-rows bucket, where compact only adds a gather.
COMPACT_MIN_ROWS = 4096

def search_direction(updates: Array, honest_mask: Array, *, backend: ops.Backend | None = None) -> SearchDirection:
    """Stage 1a: the honest mean, lower median and `u_search = med - mu` (paper Eq. 6).

    Args:
      updates: `[n, d]`.
      honest_mask: `[n]` bool, the rows of H (may be traced).
      backend: `ops.Backend` for the median (static; default the platform's).

    Returns:
      `SearchDirection` of `[d]` vectors.
    """
    honest_mask = jnp.asarray(honest_mask, bool)
    mean = ops.masked_mean(updates, honest_mask)
    median = ops.masked_lower_median(updates, honest_mask, backend=backend)
    return SearchDirection(mean, median, median - mean)


def select_skewed(updates: Array, honest_mask: Array, direction: Array, num_selected) -> Selection:
    """Stage 1b: S = the `num_selected` honest rows with the largest projection on `direction`.

    Ranks by the unnormalised `<U_i, u>` (dividing by `||u|| > 0` does not change the order, and
    rounding it could only create ties); with `u == 0` all scores are 0 and the earliest rows win.

    Args:
      updates: `[n, d]`.
      honest_mask: `[n]` bool.
      direction: `[d]` `u_search`.
      num_selected: int, possibly traced (`h - f`); `<= 0` selects nothing.

    Returns:
      `Selection`.
    """
    return _selection(updates @ direction, direction, jnp.asarray(honest_mask, bool), num_selected)


def _selection(raw: Array, direction: Array, honest_mask: Array, num_selected) -> Selection:
    """`select_skewed` from the raw scores `raw = updates @ direction` (`[n]`)."""
    norm = jnp.sqrt(jnp.vdot(direction, direction))
    projections = jnp.where(norm > 0, raw / jnp.where(norm > 0, norm, 1.0), 0.0)
    scores = jnp.where(honest_mask, raw, -jnp.inf)
    skewed = ops.largest_k_mask(scores, num_selected) & honest_mask
    return Selection(projections, skewed)


def _search_and_scores_unfused(updates: Array, honest_mask: Array, backend: ops.Backend | None):
    sd = search_direction(updates, honest_mask, backend=backend)
    return sd.mean, sd.median, updates @ sd.direction


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _search_and_scores(updates: Array, honest_mask: Array, chunk: int | None, backend: ops.Backend | None):
    """Stage 1 in one blocked pass over `U` (CPU, sorting-network median): per column block the
    honest mean, the masked lower median, `u = med - mu` and the partial scores `U_b @ u_b`.

    Returns `(mean [d], median [d], raw [n])`, equal to `search_direction` and `updates @ u` up to
    float32 summation order. One pass over `U` instead of three (mean, median, scores); the
    sorting network dominates its cost either way (`experiments/bench_strike.py` times both).
    Derivatives follow the unfused stages (`_search_and_scores_unfused`), so gradients are the
    same as without fusion.
    """
    n = updates.shape[0]
    weights = ops.mean_weights(honest_mask, updates.dtype)

    def piece(xb, _):
        mean_b = weights @ xb
        median_b = ops.network_masked_lower_median(xb, honest_mask)
        return (mean_b, median_b), (xb @ (median_b - mean_b),)

    (mean, median), (raw,) = ops.scan_columns(updates, piece, (), (jnp.zeros((n,), updates.dtype),),
                                              chunk=chunk, compensated=True, backend=backend)
    return mean, median, raw


@_search_and_scores.defjvp
def _search_and_scores_jvp(chunk, backend, primals, tangents):
    updates, honest_mask = primals
    out = _search_and_scores(updates, honest_mask, chunk, backend)
    _, t_out = jax.jvp(lambda x: _search_and_scores_unfused(x, honest_mask, backend), (updates,), (tangents[0],))
    return out, t_out


def hidden_vector(updates: Array, skewed_mask: Array, mean: Array, *, chunk: int | None = None,
                  backend: ops.Backend | None = None, compact: bool = False) -> HiddenVector:
    """Stage 2a: `g_S`, `sigma_S`, `dev = sign(g_S - mu) * sigma_S` and the constraint's coefficients.

    Args:
      updates: `[n, d]`.
      skewed_mask: `[n]` bool, the set S (may be traced; empty gives zeros).
      mean: `[d]` the honest mean `mu`.
      chunk: columns per pass block (static; default per `backend`).
      backend: `ops.Backend` (static; default the platform's).
      compact: the Gram matrix of the rows of S only (`_hidden_compact`) instead of all `n` rows
        (static; same values up to float32 summation order).

    Returns:
      `HiddenVector`.
    """
    skewed_mask = jnp.asarray(skewed_mask, bool)
    if compact:
        return _hidden_compact(updates, skewed_mask, mean, chunk, backend)
    st = ops.column_stats(updates, ops.mean_weights(skewed_mask, updates.dtype), mean, gram=True, chunk=chunk,
                          backend=backend)
    d2, _ = ops.sq_dists_from_gram(st.gram)
    diameter_sq = ops.masked_max_pairwise(d2, skewed_mask)
    return HiddenVector(
        centre=st.centre,
        sigma=st.sigma,
        dev=st.dev,
        sq_dists=jnp.diagonal(st.gram),
        dots=st.dots,
        dev_sq_norm=st.dev_sq_norm,
        diameter_sq=diameter_sq,
    )


def _gram_buckets(n: int) -> tuple[int, ...]:
    """Static row counts of the compact Gram matrix: powers of two from 8, then `n`."""
    sizes, r = [], 8
    while r < n:
        sizes.append(r)
        r *= 2
    return tuple(sizes) + (n,)


def _hidden_compact(updates: Array, skewed_mask: Array, mean: Array, chunk: int | None,
                    backend: ops.Backend | None) -> HiddenVector:
    """`hidden_vector` with the Gram matrix of the rows of S alone.

    Only `D^2` needs pairwise products, and only between rows of S (`|S| = h - f`); `A_i` and
    `B_i` are per-row sums. So each column block gathers the rows of S (in cache) and multiplies
    `[m, c] @ [c, m]` with `m` the smallest of `_gram_buckets(n)` holding `|S|` (`lax.switch`
    over the static sizes, as `|S|` is traced): at n = 50, f = 10, `m = 32` does 0.41 of the
    all-rows product's work (`experiments/bench_strike.py`).
    """
    n = updates.shape[0]
    dtype = updates.dtype
    count = skewed_mask.sum()
    w = ops.mean_weights(skewed_mask, dtype)
    # S rows first, in row order (a stable sort of the complement).
    order = jnp.argsort(~skewed_mask, stable=True)
    sizes = _gram_buckets(n)

    def pass_with(m):
        sel = order[:m]

        def piece(xb, sb):
            centre_b = w @ xb
            y = xb - centre_b
            sigma_b = jnp.sqrt(w @ (y * y))
            dev_b = sigma_b * jnp.sign(centre_b - sb[0])
            ys = jnp.take(y, sel, axis=0)
            return (centre_b, sigma_b, dev_b), (ys @ ys.T, y @ dev_b, jnp.sum(y * y, axis=1), dev_b @ dev_b)

        acc0 = (jnp.zeros((m, m), dtype), jnp.zeros((n,), dtype), jnp.zeros((n,), dtype), jnp.zeros((), dtype))
        c = ops.resolve(backend).gram_column_chunk(n, m, updates.shape[1]) if chunk is None else chunk
        (centre, sigma, dev), (g, q, a, dd) = ops.scan_columns(
            updates, piece, (jnp.asarray(mean, dtype),), acc0, chunk=c, compensated=True, backend=backend)
        d2, _ = ops.sq_dists_from_gram(0.5 * (g + g.T))
        diameter_sq = ops.masked_max_pairwise(d2, jnp.arange(m) < count)
        return HiddenVector(centre, sigma, dev, a, q, dd, diameter_sq)

    index = jnp.searchsorted(jnp.asarray(sizes), count)  # first size >= |S|
    return lax.switch(jnp.minimum(index, len(sizes) - 1), [functools.partial(pass_with, m) for m in sizes])


@functools.partial(jax.jit, static_argnames=("tol", "max_doublings", "max_halvings"))
def bisect_alpha(
    sq_dists: Array,
    dots: Array,
    dev_sq_norm: Array,
    diameter_sq: Array,
    mask: Array,
    *,
    tol: float = TOL,
    max_doublings: int = MAX_DOUBLINGS,
    max_halvings: int = MAX_HALVINGS,
) -> Array:
    """Stage 2b: the largest feasible `alpha` of paper Eq. 13 by bisection (Appendix C, SPEC §6.4).

    `F(a) = max_{i in mask} sqrt(A_i - 2 a B_i + a^2 C) - D`; `F(0) <= 0` and `F` is convex, so the
    feasible set `{F <= 0}` is an interval `[0, alpha*]`. Bracket `[0, 1]`; while `F(hi) < 0` (at
    most `max_doublings` times) move `lo` to `hi` (feasible) and double `hi`; then halve the bracket
    while `hi - lo > tol` (at most `max_halvings` times), keeping `lo` feasible (`F(mid) <= 0`).
    Returns `lo`, so `F(alpha) <= 0` always holds (the reference also returns the lower end).
    Comparisons use squared distances (`F <= 0` iff `max_i A_i - 2aB_i + a^2C <= D^2`).

    Both loops have static trip counts (`fori_loop`, finished iterations are no-ops), so this is
    jit-, vmap- and reverse-mode friendly and costs O(n) per step.

    Args:
      sq_dists: `[n]` `A_i = ||U_i - g_S||^2`.
      dots: `[n]` `B_i = <U_i - g_S, dev>`.
      dev_sq_norm: scalar `C = ||dev||^2`.
      diameter_sq: scalar `D^2`.
      mask: `[n]` bool, the set S (empty -> 0).
      tol: absolute tolerance on alpha (1e-5).
      max_doublings: bound on the bracket doublings (60).
      max_halvings: bound on the halvings (80: enough for the widest bracket).

    Returns:
      scalar alpha (dtype of `sq_dists`).
    """
    dtype = sq_dists.dtype
    mask = jnp.asarray(mask, bool)

    def excess(a):
        vals = sq_dists - 2.0 * a * dots + (a * a) * dev_sq_norm
        return jnp.max(jnp.where(mask, vals, -jnp.inf)) - diameter_sq

    def double(_, carry):
        lo, hi = carry
        grow = excess(hi) < 0
        return jnp.where(grow, hi, lo), jnp.where(grow, 2.0 * hi, hi)

    lo, hi = lax.fori_loop(0, max_doublings, double, (jnp.zeros((), dtype), jnp.ones((), dtype)))

    def halve(_, carry):
        lo, hi = carry
        mid = 0.5 * (lo + hi)
        active = hi - lo > tol
        ok = excess(mid) <= 0
        return jnp.where(active & ok, mid, lo), jnp.where(active & ~ok, mid, hi)

    lo, _ = lax.fori_loop(0, max_halvings, halve, (lo, hi))
    return jnp.where(mask.any(), lo, jnp.zeros((), dtype))


def fallback_vector(mean: Array, median: Array, num_honest) -> Array:
    """SPEC §6.6, used when `h <= f`: `-10 * mu` if `h == 1`, else `mu + 10 * (med - mu)`."""
    return jnp.where(num_honest == 1, -10.0 * mean, mean + 10.0 * (median - mean))


@functools.partial(jax.jit, static_argnames=("tol", "chunk", "backend", "fused", "compact"))
def strike_vector(updates: Array, byzantine_mask: Array, nu=1.0, *, tol: float = TOL,
                  chunk: int | None = None, backend: ops.Backend | None = None,
                  fused: bool | None = None, compact: bool | None = None) -> StrikeResult:
    """The STRIKE Byzantine update for one round (SPEC §6 items 1-7; Algorithm 1).

    One jitted function of `(updates, byzantine_mask, nu)` (SPEC §6): `f` and `nu` are traced, so
    new masks or `nu` values never recompile and `jax.vmap` over either compiles once.

    Args:
      updates: `[n, d]` honestly computed updates of all sampled clients.
      byzantine_mask: `[n]` bool (`f = sum`, `h = n - f`; may be traced).
      nu: attack strength factor (> 0; may be traced).
      tol: bisection tolerance on alpha (static).
      chunk: columns per pass block (static; default per `backend`).
      backend: `ops.Backend` (static; default the platform's).
      fused: stage 1 as one blocked pass (`_search_and_scores`) instead of the separate
        `search_direction` and `select_skewed`, and stage 2 with the Gram matrix of S alone
        (`hidden_vector(..., compact=True)`) (static; default: where the median is a sorting
        network, i.e. on CPU for `n <= backend.network_max_rows`, and `d >= FUSED_MIN_DIM`; False is
        the code before issue 9).
      compact: stage 2 with the Gram matrix of S alone (`hidden_vector(..., compact=True)`), static;
        default: `fused`, or `n >= COMPACT_MIN_ROWS`.

    Returns:
      `StrikeResult`; `vector` is `g_S + nu * alpha * dev` when `h > f`, else the fallback.
      With `h == 0`, the Byzantine rows' own updates play the role of H (SPEC §6).
    """
    byzantine_mask = jnp.asarray(byzantine_mask, bool)
    num_byz = byzantine_mask.sum()
    num_honest = (~byzantine_mask).sum()
    ref = reference_mask(byzantine_mask)
    backend = ops.resolve(backend)
    if fused is None:
        fused = (backend.sort_method(updates.shape[0], updates.dtype) == "network"
                 and updates.shape[1] >= FUSED_MIN_DIM)
    if fused:
        mean, median, raw = _search_and_scores(updates, ref, chunk, backend)
        search = SearchDirection(mean, median, median - mean)
        selection = _selection(raw, search.direction, ref, num_honest - num_byz)
    else:
        search = search_direction(updates, ref, backend=backend)
        selection = select_skewed(updates, ref, search.direction, num_honest - num_byz)
    hidden = hidden_vector(updates, selection.skewed_mask, search.mean, chunk=chunk, backend=backend,
                           compact=(fused or updates.shape[0] >= COMPACT_MIN_ROWS) if compact is None else compact)
    fallback = num_honest <= num_byz
    alpha = bisect_alpha(hidden.sq_dists, hidden.dots, hidden.dev_sq_norm, hidden.diameter_sq,
                         selection.skewed_mask, tol=tol)
    alpha = jnp.where(fallback, jnp.zeros_like(alpha), alpha)
    nu = jnp.asarray(nu, updates.dtype)
    main = hidden.centre + (nu * alpha) * hidden.dev
    vector = jnp.where(fallback, fallback_vector(search.mean, search.median, num_honest), main)
    return StrikeResult(vector, alpha, fallback, search, selection, hidden)


@register("attack", "strike", nu=real())
def strike_attack(nu=1.0, *, backend: ops.Backend | None = None) -> Stage:
    """STRIKE (SPEC §6): every Byzantine client sends `g_S + nu * alpha * dev`.

    Args:
      nu: attack strength factor, `> 0` (default 1; the paper sweeps `{0.25, 0.5, ..., 2.0}`;
        traceable: `jax.vmap(lambda nu: attacks.get("strike", nu=nu).apply(...))` compiles once).
      backend: `ops.Backend` (resolved now).

    Returns:
      An attack `Stage` (stateless).

    Raises:
      ValueError: a concrete `nu` that is not a finite number > 0.
    """
    backend = ops.resolve(backend)
    return row_attack("strike", lambda u, m: strike_vector(u, m, nu, backend=backend).vector)


__all__ = [
    "HiddenVector",
    "SearchDirection",
    "Selection",
    "StrikeResult",
    "bisect_alpha",
    "fallback_vector",
    "hidden_vector",
    "search_direction",
    "select_skewed",
    "strike_attack",
    "strike_vector",
]
