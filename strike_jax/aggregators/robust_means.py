"""Robust means from ByzFL's catalogue: Meamed, MoNNA, MDA, SMEA, CAF.

Every rule is a stage over the `[n, d]` matrix with a possibly traced `ctx.f` (clamped to the
rule's limit; a concrete `f` above it raises ValueError naming the limit). Hyper-parameter names
and defaults follow ByzFL 0.0.11 (`f` comes with the round, not with the builder). Limits: an
honest majority, `f <= (n - 1) // 2` (`majority_limit`), and for MDA/SMEA also `C(n, f) <=
max_subsets`.

Speed: each rule reads `X` a small, fixed number of times. Meamed is Bulyan's coordinate-wise
window (`ops.median_window_mean`: fused order statistics, no sort of `X`); MoNNA is one pass for
the distances to the trusted row and one for the average; MDA, SMEA and CAF work on the `[n, n]`
centred Gram matrix (`ops.centred_gram`, one blocked pass) and finish with one weighted row sum.
MDA and SMEA are exact searches over all subsets of `n - f` rows, so they are only offered while
the number of subsets stays below a bound (`max_subsets`): the bound is part of the rule's limit.

Rows with NaN/Inf (SPEC §7) are infinitely far from everything: distance-based rules never
select them, Meamed sorts them to the ends, CAF starts them at weight 0. With at most `f` such
rows every rule returns a finite vector.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from strike_jax import ops
from strike_jax.aggregators.base import check_rows, majority_limit, resolve_f, rule_stage
from strike_jax.registry import integer, is_traced, register
from strike_jax.stages import Stage

Array = jax.Array


def _majority_rule(name: str, array_fn, backend: ops.Backend | None, **rows: Any) -> Stage:
    """A stateless rule with the honest-majority limit from `array_fn(updates, f, backend=...) -> [d]`
    (`rows`: `max_rows` and `cost` of `rule_stage`)."""
    backend = ops.resolve(backend)

    def core(updates, state, f, key):
        return array_fn(updates, f, backend=backend), state

    return rule_stage(name, core, limit=majority_limit, **rows)


# ------------------------------------------------------------------------------------------ Meamed


@functools.partial(jax.jit, static_argnames=("backend",))
def _meamed(updates: Array, f: Array, *, backend: ops.Backend) -> Array:
    # Per coordinate, the n - f values closest to the lower median; NaN/Inf are sorted to the
    # ends (infinitely far from the median); ties in distance go to the smaller value.
    return ops.median_window_mean(updates, updates.shape[0] - f, backend=backend)


@register("rule", "meamed")
def meamed(*, backend: ops.Backend | None = None) -> Stage:
    """Meamed (Xie, Koyejo & Gupta 2018, "Generalized Byzantine-tolerant SGD", Def. 3 "mean around
    median"; ByzFL `Meamed(f)`).

    Per coordinate `k`: with `m_k` the median of `x_1k .. x_nk`, average the `n - f` values with the
    smallest `|x_ik - m_k|` (`ops.median_window_mean`, Bulyan's window). The median is the lower
    median (SPEC §1); ByzFL uses `np.median`, the same for odd `n`. Ties in distance go to the
    smaller value (ByzFL's `argpartition` leaves them unspecified). Limit `f <= (n - 1) // 2`.
    Differentiable (sub-gradient through the kept values).

    Returns:
      A rule `Stage`.
    """
    return _majority_rule("meamed", _meamed, backend)


# ------------------------------------------------------------------------------------------- MoNNA


def monna_mask(updates: Array, f: Array, idx: int, backend: ops.Backend) -> tuple[Array, Array]:
    """`(selected [n], finite [n])`: the `n - f` rows nearest to row `idx` (itself first, ties by
    row index), never a non-finite row. If row `idx` is itself non-finite, its neighbours are
    searched from the coordinate-wise lower median of the rows instead (a robust stand-in)."""
    n = updates.shape[0]
    finite = ops.finite_rows(updates, backend=backend)
    centre = lax.cond(finite[idx], lambda u: u[idx], lambda u: ops.lower_median(u, backend=backend), updates)
    dist = ops.sq_dists_to(updates, centre, backend=backend)
    dist = jnp.where(finite & jnp.isfinite(dist), dist, jnp.inf)
    dist = jnp.where((jnp.arange(n) == idx) & finite, -1.0, dist)  # the trusted row first
    sel = ops.smallest_k_mask(lax.stop_gradient(dist), n - f) & finite
    return sel, finite


@functools.partial(jax.jit, static_argnames=("idx", "backend"))
def _monna(updates: Array, f: Array, *, idx: int, backend: ops.Backend) -> Array:
    sel, finite = monna_mask(updates, f, idx, backend)
    return ops.masked_mean_safe(updates, sel, finite)


@register("rule", "monna", idx=integer(low=0))
def monna(idx=0, *, backend: ops.Backend | None = None) -> Stage:
    """MoNNA (Farhadkhani et al., ICML 2023, "Robust collaborative learning with linear gradient
    overhead", Alg. 1; ByzFL `MoNNA(f, idx)`).

    The mean of the `n - f` rows nearest (Euclidean) to the trusted row `idx`, that row included.
    In the paper each honest node runs it around its own vector; in a server setting `idx` is a
    row the server trusts. Limit `f <= (n - 1) // 2`. Differentiable through the average (the
    selection is piecewise constant).

    Args:
      idx: the trusted row (static, `0 <= idx < n`; `idx < n` is checked when the rule runs).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`.
    """
    backend = ops.resolve(backend)

    def core(updates, state, f, key):
        n = updates.shape[0]
        if idx >= n:
            raise ValueError(f"monna: idx={idx} must be < n={n} (the trusted row's index).")
        return _monna(updates, f, idx=idx, backend=backend), state

    return rule_stage("monna", core, limit=majority_limit)


# ------------------------------------------------------------------------------ subset enumeration

#: Default bound on the number of subsets MDA and SMEA enumerate.
MDA_MAX_SUBSETS = 100_000
SMEA_MAX_SUBSETS = 20_000
#: Largest `n` the exact searches accept (their work grows like `C(n, f) * n^2` for MDA and
#: `C(n, f) * n^3` for SMEA, `f >= 1` whenever `C(n, 1) = n <= max_subsets`; measured on XLA:CPU with
#: d = 1000 and a traced f: MDA 2 s per round at n = 1000, SMEA 1 s at n = 50 and 42 s at n = 100).
MDA_MAX_ROWS = 1000
SMEA_MAX_ROWS = 64
_MAX_ROWS = {"mda": (MDA_MAX_ROWS, "an exact search over C(n, f) subsets, O(n^3 log n) for MDA"),
             "smea": (SMEA_MAX_ROWS, "an exact search over C(n, f) subsets, an O(n^3) eigenproblem each")}
#: CAF's row limit: up to `n` reweighting steps, each an `[n, n]` eigenproblem (O(n^4) worst
#: case; measured 16 s per round at n = 1000, d = 1000 on XLA:CPU).
CAF_MAX_ROWS = 1000


def subset_limit(n: int, max_subsets: int) -> int:
    """Largest `f <= (n - 1) // 2` with `C(n, f) <= max_subsets` (the exact searches' limit)."""
    f = 0
    while f + 1 <= majority_limit(n) and math.comb(n, f + 1) <= max_subsets:
        f += 1
    return f


@functools.lru_cache(maxsize=32)
def removal_sets(n: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every set of removed rows of the given sizes, sizes ascending; within a size, in the order
    of `itertools.combinations(range(n), n - k)` over the *kept* rows (ByzFL's order, so that
    ties between subsets resolve alike): `(rows [M, max(sizes)] int32 padded with n, size [M])`."""
    width = max(max(sizes), 1)
    rows, size = [], []
    for k in sizes:
        # Combinations of the kept rows in lexicographic order are those of the removed rows in
        # reverse lexicographic order: enumerated directly, O(C(n, k) * k) rather than O(C(n, k) * n).
        for removed in sorted(itertools.combinations(range(n), k), reverse=True):
            rows.append(list(removed) + [n] * (width - k))
            size.append(k)
    return np.asarray(rows, np.int32).reshape(-1, width), np.asarray(size, np.int32)


def _kept_masks(n: int, removed: Array, dtype) -> Array:
    """`[M, n]` 1.0 for kept rows from the padded removed-row table `[M, w]`."""
    hit = jnp.zeros((removed.shape[0], n + 1), dtype).at[jnp.arange(removed.shape[0])[:, None], removed].set(1.0)
    return 1.0 - hit[:, :n]


def _subset_tables(name: str, n: int, f, max_subsets: int):
    """Resolves `f` for MDA/SMEA and returns `(f_arr, removed [M, w], size [M])`.

    A concrete `f` enumerates only the subsets of that size; a traced `f` every size up to the
    limit (the valid ones are masked at run time)."""
    check_rows(name, n, *_MAX_ROWS[name])
    lim = subset_limit(n, max_subsets)
    if f is not None and not is_traced(f):
        fc = int(np.asarray(f))
        if lim < fc <= majority_limit(n):
            raise ValueError(
                f"{name} tolerates at most f={lim} Byzantine rows among n={n}: it enumerates all C(n, f) subsets "
                f"and C({n}, {fc}) = {math.comb(n, fc):,} exceeds max_subsets={max_subsets:,}; its limit for n={n} "
                f"is f={lim} (raise max_subsets or use fewer rows).")
        fr = resolve_f(f, lim, name, n)
        sizes: tuple[int, ...] = (min(fc, lim),) if fc >= 0 else (0,)
    else:
        fr = resolve_f(f, lim, name, n)
        sizes = tuple(range(lim + 1))
    removed, size = removal_sets(n, sizes)
    return fr, jnp.asarray(removed), jnp.asarray(size)


def _subset_rule(name: str, search, max_subsets: int, backend: ops.Backend) -> Stage:
    """MDA / SMEA as a stage: `search(updates, f, removed, size, backend=...) -> [d]` over the
    removal tables of `_subset_tables` (which checks `f` against the combinatorial limit itself)."""

    def limit(n):
        check_rows(name, n, *_MAX_ROWS[name])
        return subset_limit(n, max_subsets)

    def check_f(f, n):
        fr, removed, size = _subset_tables(name, n, f, max_subsets)
        return fr, removed, size

    def core(updates, state, tables, key):
        return search(updates, *tables, backend=backend), state

    return rule_stage(name, core, limit=limit, check_f=check_f)


def _first_true(flags: Array) -> Array:
    """Index of the first True entry (0 if none)."""
    return jnp.argmax(flags)


# --------------------------------------------------------------------------------------------- MDA


def mda_mask(d2: Array, f: Array, removed: Array, size: Array) -> Array:
    """The kept rows of the subset with the smallest diameter among those removing exactly `f` rows.

    Binary search over the `n^2` candidate diameters (the sorted entries of `d2`): for a threshold
    `t`, a subset is feasible when none of its pairs is farther than `t`, i.e. `k^T B_t k = 0` with
    `B_t = [d2 > t]` and `k` its kept-row indicator: one `[M, n] @ [n, n]` product per step. The
    answer is the first feasible subset (enumeration order) at the smallest feasible threshold,
    i.e. the first subset of minimum diameter.

    Args:
      d2: `[n, n]` squared distances (`+inf` for non-finite rows).
      f: number of rows to remove (traced ok).
      removed, size: the table of `removal_sets`.

    Returns:
      `[n]` bool.
    """
    n = d2.shape[0]
    dtype = jnp.float32
    kept = _kept_masks(n, removed, dtype)
    valid = size == f
    cand = jnp.sort(d2.reshape(-1))

    def feasible(t):
        bad = (d2 > t).astype(dtype)
        inside = jnp.sum((kept @ bad) * kept, axis=1)
        return valid & (inside == 0)

    def body(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) // 2
        ok = jnp.any(feasible(cand[mid]))
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    steps = max(int(math.ceil(math.log2(n * n))) + 1, 1)
    _, hi = lax.fori_loop(0, steps, body, (jnp.asarray(0), jnp.asarray(n * n - 1)))
    best = _first_true(feasible(cand[hi]))
    return kept[best] > 0


@functools.partial(jax.jit, static_argnames=("backend",))
def _mda(updates: Array, fr: Array, removed: Array, size: Array, *, backend: ops.Backend) -> Array:
    d2, finite = ops.pairwise_sq_dists_finite(updates, backend=backend)
    sel = mda_mask(lax.stop_gradient(d2), fr, removed, size) & finite
    return ops.masked_mean_safe(updates, sel, finite)


@register("rule", "mda", max_subsets=integer(low=1))
def mda(max_subsets=MDA_MAX_SUBSETS, *, backend: ops.Backend | None = None) -> Stage:
    """Minimum-Diameter Averaging (El Mhamdi et al., PODC 2020, "Genuinely distributed Byzantine
    machine learning", MDA; also Rousseeuw 1985's minimum-volume idea; ByzFL `MDA(f)`).

    `S* = argmin_{|S| = n - f} max_{i, j in S} ||x_i - x_j||`; output the mean of `S*`. Exact: all
    `C(n, f)` subsets are searched (see `mda_mask`). Ties (common: every subset keeping the same
    farthest pair has the same diameter): the first minimal subset in the order of
    `itertools.combinations` over the kept rows, as ByzFL.

    Limit: `f <= (n - 1) // 2` and `C(n, f) <= max_subsets` (e.g. f <= 3 at n = 50 with the default
    1e5): a concrete `f` above raises ValueError naming both; a traced `f` is clamped (the traced
    form enumerates every size up to the limit). Non-finite rows are never in `S*` when `f` covers
    them. Differentiable through the average.

    Cost: `O(n^2 d)` for the distances, then `~2 log2(n)` products `[M, n] @ [n, n]` over the `M`
    enumerated subsets (`M ~ n` at large n): `O(n^3 log n)` time and `O(M n)` memory. `n` above
    `MDA_MAX_ROWS` (1000) raises ValueError before any work.

    Args:
      max_subsets: bound on `C(n, f)` (static).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`.
    """
    return _subset_rule("mda", _mda, max_subsets, ops.resolve(backend))


# -------------------------------------------------------------------------------------------- SMEA


def _centred_blocks(gram: Array, kept: Array, chunk: int):
    """Chunks of the subsets' centred Gram matrices, for `lax.map`: `(k, r, s, m)` per chunk.

    `P G P = D_k (G - r 1^T - 1 r^T + s 1 1^T) D_k` with `r = G k / m`, `s = k^T G k / m^2`
    (`P = D_k (I - k k^T / m)`): built element-wise, no `n x n x n` product per subset; one
    `[M, n] @ [n, n]` product gives every `r`."""
    n = gram.shape[0]
    M = kept.shape[0]
    c = max(1, min(chunk, M))
    pad = (-M) % c
    kp = jnp.concatenate([kept, jnp.ones((pad, n), kept.dtype)]) if pad else kept
    m = jnp.maximum(kp.sum(axis=1), 1.0)
    r = (kp @ gram) / m[:, None]
    s = jnp.sum(r * kp, axis=1) / m
    return (kp.reshape(-1, c, n), r.reshape(-1, c, n), s.reshape(-1, c), m.reshape(-1, c)), M


def _build(gram, k, rr, ss):
    cen = gram[None] - rr[:, :, None] - rr[:, None, :] + ss[:, None, None]
    return cen * k[:, :, None] * k[:, None, :]


def subset_top_eigenvalues(gram: Array, kept: Array, *, chunk: int = 256) -> Array:
    """`lambda_max` of the empirical covariance of every subset, from the centred Gram matrix.

    For a subset `S` of `m` rows, `Sigma_S = (1/m) sum_{i in S} (x_i - mean_S)(x_i - mean_S)^T`
    shares its non-zero eigenvalues with `(1/m) P G P`, `P = D_k (I - k k^T / m)` (`k` the kept
    indicator, `G` any centred Gram matrix): an `[n, n]` symmetric eigenvalue problem per subset
    (exact, `eigvalsh`), done `chunk` subsets at a time.

    Args:
      gram: `[n, n]` (finite).
      kept: `[M, n]` 0/1.

    Returns:
      `[M]`.
    """
    blocks, M = _centred_blocks(gram, kept, chunk)

    def block(args):
        k, rr, ss, mm = args
        return jnp.linalg.eigvalsh(_build(gram, k, rr, ss))[:, -1] / mm

    return lax.map(block, blocks).reshape(-1)[:M]


def subset_eigenvalue_lower_bounds(gram: Array, kept: Array, start: Array, *, steps: int = 30,
                                   chunk: int = 1024) -> Array:
    """Lower bounds on every subset's `lambda_max` (as `subset_top_eigenvalues`): the Rayleigh
    quotient after `steps` power iterations from `start` (restricted to the subset). Any unit
    vector's Rayleigh quotient is at most `lambda_max`; ~5x cheaper than `eigvalsh` on XLA:CPU."""
    blocks, M = _centred_blocks(gram, kept, chunk)

    def block(args):
        k, rr, ss, mm = args
        a = _build(gram, k, rr, ss)
        v0 = start[None, :] * k
        v0 = jnp.where(jnp.sum(v0 * v0, axis=1, keepdims=True) > 0, v0, k)

        def step(_, v):
            w = jnp.einsum("bij,bj->bi", a, v)
            nrm = jnp.sqrt(jnp.sum(w * w, axis=1, keepdims=True))
            return jnp.where(nrm > 0, w / jnp.where(nrm > 0, nrm, 1.0), v)

        v = lax.fori_loop(0, steps, step, v0 / jnp.sqrt(jnp.sum(v0 * v0, axis=1, keepdims=True)))
        q = jnp.einsum("bi,bij,bj->b", v, a, v) / jnp.maximum(jnp.sum(v * v, axis=1), 1e-30)
        return jnp.maximum(q, 0.0) / mm

    return lax.map(block, blocks).reshape(-1)[:M]


#: SMEA: subsets checked exactly after the lower-bound screen, and the bound's safety margin.
SMEA_SCREEN = 1024
SMEA_MARGIN = 1e-4


def smea_choice(gram: Array, kept: Array, eligible: Array, screen: int = SMEA_SCREEN) -> Array:
    """Index of the first eligible subset of smallest `lambda_max` (exact).

    Few subsets: `eigvalsh` for all. Many: a screen by power-iteration lower bounds
    (`subset_eigenvalue_lower_bounds`, started from the top eigenvector of the whole Gram
    matrix), `eigvalsh` for the `screen` subsets with the lowest bounds, and a certificate:
    if the best exact value is below the next-lowest bound (with a relative margin for rounding),
    no other subset can do better, so the answer is exact; otherwise (`lax.cond`) every subset is
    solved exactly.
    """
    M = kept.shape[0]

    def exact_all(_):
        lam = jnp.where(eligible, subset_top_eigenvalues(gram, kept), jnp.inf)
        return jnp.argmax(eligible & (lam == jnp.min(lam)))

    if M <= 4 * screen:
        return exact_all(None)
    _, evecs = jnp.linalg.eigh(gram)
    lb = jnp.where(eligible, subset_eigenvalue_lower_bounds(gram, kept, evecs[:, -1]), jnp.inf)
    order = jnp.argsort(lb, stable=True)
    top = order[:screen]
    lam = jnp.where(eligible[top], subset_top_eigenvalues(gram, kept[top]), jnp.inf)
    best = jnp.min(lam)
    # the first (enumeration order) of the screened subsets reaching the minimum
    best_idx = jnp.min(jnp.where(lam == best, top, M))
    certified = jnp.isfinite(best) & (best < lb[order[screen]] * (1.0 - SMEA_MARGIN))
    return lax.cond(certified, lambda _: best_idx, exact_all, None)


@functools.partial(jax.jit, static_argnames=("screen", "backend"))
def _smea(updates: Array, fr: Array, removed: Array, size: Array, *, screen: int, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    g = lax.stop_gradient(ops.centred_gram(updates, backend=backend))
    finite = jnp.isfinite(jnp.diagonal(g))
    g = jnp.where(finite[:, None] & finite[None, :], g, 0.0)
    kept = _kept_masks(n, removed, updates.dtype)
    holds_bad = (kept @ (~finite).astype(updates.dtype)) > 0
    valid = size == fr
    # Subsets holding a non-finite row only when no subset of the right size avoids them all.
    clean = valid & ~holds_bad
    best = smea_choice(g, kept, jnp.where(jnp.any(clean), clean, valid), screen)
    sel = (kept[best] > 0) & finite
    return ops.masked_mean_safe(updates, sel, finite)


@register("rule", "smea", max_subsets=integer(low=1))
def smea(max_subsets=SMEA_MAX_SUBSETS, *, backend: ops.Backend | None = None) -> Stage:
    """Smallest Maximum Eigenvalue Averaging (Allouah et al., ICML 2023, "On the privacy-robustness-
    utility trilemma in distributed learning", SMEA; ByzFL `SMEA(f)`).

    `S* = argmin_{|S| = n - f} lambda_max(Sigma_S)` with `Sigma_S` the (biased) empirical covariance
    of the rows in `S`; output the mean of `S*`. The paper's `lambda_max` is the exact top
    eigenvalue, computed here exactly (`subset_top_eigenvalues`); ByzFL 0.0.11 estimates it with
    one power-iteration step from a random start (`max_iters=1`), so its choice of `S*` is random
    and can differ: we follow the paper. Ties: the first minimal subset in the order of
    `itertools.combinations` over the kept rows.

    Search (`smea_choice`): with many subsets, power-iteration lower bounds on every subset's
    `lambda_max` screen them, the `SMEA_SCREEN` lowest (read when the rule is built) are solved
    exactly (`eigvalsh`), and the answer is certified exact when its value is below every other
    subset's bound; otherwise every subset is solved exactly (also correct, ~5x slower:
    `eigvalsh` on XLA:CPU costs ~0.3 ms per 50 x 50 matrix).

    Limit: `f <= (n - 1) // 2` and `C(n, f) <= max_subsets` (default 2e4). Non-finite rows:
    subsets holding one score `+inf`. Differentiable through the average.

    Cost: one `[n, n]` eigenvalue problem per enumerated subset (`O(M n^3)`, `M` up to
    `max_subsets`): `n` above `SMEA_MAX_ROWS` (64) raises ValueError before any work.

    Args:
      max_subsets: bound on `C(n, f)` (static).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`.
    """
    return _subset_rule("smea", functools.partial(_smea, screen=SMEA_SCREEN), max_subsets, ops.resolve(backend))


# --------------------------------------------------------------------------------------------- CAF


#: Relative tolerance under which a row's tau counts as tied with the maximum (CAF).
CAF_TIE_RTOL = 1e-4
# Up to this many rows CAF's filter loop runs a fixed n steps and is differentiable end to end; above
# it, a while_loop (fewer steps) with the weights held constant under differentiation.
CAF_SCAN_MAX_ROWS = 128


@jax.custom_jvp
def _top_eigenpair(a: Array) -> tuple[Array, Array]:
    """The largest eigenvalue of the symmetric `a` `[n, n]` and its unit eigenvector.

    Its derivative needs only the top eigenvalue to be simple: `dlam = u^T da u`,
    `du = sum_{j != top} u_j (u_j^T da u) / (lam - lam_j)`. (`jnp.linalg.eigh`'s own derivative
    divides by every eigenvalue gap, so CAF's repeated zero eigenvalues, one per dropped row, would
    make it NaN.)
    """
    evals, evecs = jnp.linalg.eigh(a)
    return evals[-1], evecs[:, -1]


@_top_eigenpair.defjvp
def _top_eigenpair_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    evals, evecs = jnp.linalg.eigh(a)
    lam, u = evals[-1], evecs[:, -1]
    dau = da @ u
    gap = lam - evals
    others = jnp.arange(a.shape[0]) < a.shape[0] - 1
    coef = jnp.where(others & (gap > 0), (evecs.T @ dau) / jnp.where(others & (gap > 0), gap, 1.0), 0.0)
    return (lam, u), (u @ dau, evecs @ coef)


def caf_weights(gram: Array, finite: Array, f: Array) -> Array:
    """CAF's output as row weights `[n]` (summing to 1), from the centred Gram matrix.

    Works in the `n`-dimensional space of row weights: with `w = c / sum(c)`, the centred rows
    `Y = X - 1 (w^T X)` have Gram `K = (I - 1 w^T) G (I - w 1^T)`, the weighted covariance
    `Sigma_c = Y^T diag(w) Y` has the eigenpairs of `A = diag(sqrt w) K diag(sqrt w)` (top `lam`,
    `u`), its top eigenvector is `v = Y^T (sqrt(w) u) / sqrt(lam)`, so `tau_i = <y_i, v>^2 =
    (K (sqrt(w) u))_i^2 / lam`. Exact eigenvectors (`eigh`), no pass over `X`.

    The loop runs while `sum(c) > n - 2f`; every step zeroes at least one weight, so it ends after
    at most `n` steps. Non-finite rows start at weight 0.
    """
    n = gram.shape[0]
    dtype = gram.dtype
    ones = jnp.ones((n,), dtype)
    g = jnp.where(finite[:, None] & finite[None, :], gram, 0.0)
    c0 = finite.astype(dtype)
    target = (n - 2 * f).astype(dtype)

    def cond(carry):
        c, it, _, _ = carry
        return (c.sum() > target) & (it < n)

    def body(carry):
        c, it, best_lam, best_w = carry
        w = c / jnp.maximum(c.sum(), jnp.finfo(dtype).tiny)
        left = jnp.eye(n, dtype=dtype) - jnp.outer(ones, w)
        k = left @ g @ left.T
        pos = w > 0
        sw = jnp.where(pos, jnp.sqrt(jnp.where(pos, w, 1.0)), 0.0)  # no infinite slope at w = 0
        a = sw[:, None] * k * sw[None, :]
        top, vec = _top_eigenpair(0.5 * (a + a.T))
        lam = jnp.maximum(top, 0.0)
        proj = k @ (sw * vec)
        tau = jnp.where(lam > 0, proj * proj / jnp.where(lam > 0, lam, 1.0), 0.0)
        tau_max = jnp.max(jnp.where(c > 0, tau, 0.0))
        c_new = jnp.where(tau_max > 0, c * (1.0 - tau / jnp.where(tau_max > 0, tau_max, 1.0)), c)
        # Rows tied with the maximum up to rounding (e.g. copies of one Byzantine vector) drop to
        # exactly 0, as in exact arithmetic; a weight of 1e-7 would keep them "weighted" and let
        # their huge tau hold back everyone else's update.
        c_new = jnp.where(tau >= tau_max * (1.0 - CAF_TIE_RTOL), 0.0, c_new)
        c_new = jnp.clip(c_new, 0.0, 1.0)
        # tau_max == 0: every weighted row lies on the mean; drop all but the first to terminate.
        first = jnp.arange(n) == jnp.argmax(c > 0)
        c_new = jnp.where(tau_max > 0, c_new, jnp.where(first, c, 0.0))
        better = lam < best_lam
        return c_new, it + 1, jnp.where(better, lam, best_lam), jnp.where(better, w, best_w)

    w0 = c0 / jnp.maximum(c0.sum(), 1.0)
    init = (c0, jnp.asarray(0), jnp.asarray(jnp.inf, dtype), w0)
    if n <= CAF_SCAN_MAX_ROWS:
        # A fixed trip count (steps past the end are skipped): reverse-mode autodiff runs through
        # it, so the weights' dependence on the rows enters the gradient (a while_loop has none).
        def step(_, carry):
            return lax.cond(cond(carry), body, lambda c: c, carry)

        _, _, _, best_w = lax.fori_loop(0, n, step, init)
    else:
        _, _, _, best_w = lax.while_loop(cond, body, init)
    return best_w


@functools.partial(jax.jit, static_argnames=("backend",))
def _caf(updates: Array, fr: Array, *, backend: ops.Backend) -> Array:
    g = ops.centred_gram(updates, backend=backend)
    if updates.shape[0] > CAF_SCAN_MAX_ROWS:
        g = lax.stop_gradient(g)  # the while_loop has no reverse-mode derivative
    finite = jnp.isfinite(jnp.diagonal(g))
    w = caf_weights(g, finite, fr)
    return ops.weighted_rows_safe(w, updates, finite)


@register("rule", "caf")
def caf(*, backend: ops.Backend | None = None) -> Stage:
    """CAF, the Covariance-bound Agnostic Filter (Allouah, Guerraoui & Stephan, ICML 2025, "Towards
    trustworthy federated learning with untrusted participants", Alg. 1; ByzFL `CAF(f)`).

    Weights `c_i = 1`; while `sum_i c_i > n - 2f`: `mu_c = sum c_i x_i / sum c_i`; `(lam, v)` the
    top eigenpair of `Sigma_c = sum c_i (x_i - mu_c)(x_i - mu_c)^T / sum c_i`;
    `tau_i = <x_i - mu_c, v>^2`; `c_i <- c_i (1 - tau_i / max_j tau_j)`. Output the `mu_c` with the
    smallest `lam` met. Computed exactly on the `[n, n]` Gram matrix (`caf_weights`). Differentiable
    through the filter (weights included) up to `CAF_SCAN_MAX_ROWS` rows; above, the weights are held
    constant under differentiation.

    Where we differ from ByzFL 0.0.11 (its docs state the same algorithm): ByzFL estimates
    `(lam, v)` with a single power-iteration step from a random start (random, inexact); we use the
    exact eigenpair (the paper's `lambda_max`). The max in `max_j tau_j` runs over rows with positive
    weight (the filter of the paper's analysis; ByzFL's code takes it over all rows, which is the
    same whenever the largest `tau` belongs to a weighted row), so each step removes a row and
    the loop ends after at most `n` steps. Non-finite rows start at weight 0.

    Limit `f <= (n - 1) // 2`. Gradients flow through the final weighted average with the weights
    held fixed (eigenvectors are not differentiated). Cost: one Gram pass (`O(n^2 d)`), one weighted
    row sum, and up to `2f` (at most `n`) `n x n` eigenproblems: `O(n^4)` time, `O(n^2)` memory;
    `n` above `CAF_MAX_ROWS` (1000) raises ValueError before any work.

    Returns:
      A rule `Stage`.
    """
    return _majority_rule("caf", _caf, backend, max_rows=CAF_MAX_ROWS,
                          cost="up to n eigenproblems of [n, n], O(n^4)")


__all__ = ["caf", "caf_weights", "mda", "mda_mask", "meamed", "monna", "monna_mask", "removal_sets", "smea",
           "smea_choice", "subset_limit", "subset_top_eigenvalues"]
