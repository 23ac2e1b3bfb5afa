"""Ranks, selection masks and order statistics along the client axis of the `[n, d]` matrix.

Every function is pure, jit/vmap/grad-safe and accepts traced counts, ranks and masks: selection
is by rank masks, never by Python slicing, so the number of Byzantine clients `f` may be traced.

Order statistics along the client axis (median, trimmed mean, Bulyan's window) avoid `jnp.sort`
on CPU, where it is ~25x slower than NumPy (18 s for a column sort at 1000 x 1e5 vs 1.1 s for
`np.partition`). Three strategies, chosen by `Backend.sort_method` (a static argument):

- ``"network"`` (CPU, `n <= network_max_rows`): a Batcher odd-even merge sorting network of
  element-wise min/max over the rows, pruned to the ranks asked for. Rows are taken as `[1, d]`
  slices so that every op keeps the same shape; XLA then fuses the whole network and the weighted
  sum of its outputs into *one* loop kernel that reads each row once (with `[d]` slices the
  reshapes split it into ~100 kernels recomputing shared work). Median at 50 x 1M: ~25-40 ms vs
  ~170-230 ms for `np.partition`; trimmed mean ~60 ms vs ~150 ms for `np.sort`. Above ~100 rows
  the fused kernel stops fusing and compile time grows: 100 is the cut.
- ``"radix"`` (CPU, larger `n`, float32): an exact bitwise binary search on order-preserving
  integer keys (32 passes of "how many keys are below the candidate"), walked over column blocks
  that stay in cache; two ranks share one pass (counts packed in one float). 0.7 s for a median
  at 1000 x 1e5, vs 1.1 s for `np.partition` and 18 s for `jnp.sort`.
- ``"sort"`` (accelerators, other dtypes): `jnp.sort` along the client axis, fast on GPU.

A masked lower median (`masked_lower_median`, traced count of selected rows) is computed at a
static rank by padding the unselected rows to `-inf` / `+inf` (`_median_pads`), so a network is
pruned to one output and radix searches one rank (issue 24: 9.0 -> 4.6 passes at 50 x 11.2M).

Non-finite values (SPEC §7): order statistics treat NaN as `+inf` (sorted to the end).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from strike_jax.ops.backend import Backend, resolve
from strike_jax.ops.blocks import scan_columns

Array = jax.Array


# Ranks and selection masks over `[n]` scores.
# --------------------------------------------------------------------------------------------


def stable_ranks(scores: Array) -> Array:
    """Rank of every score in ascending order, ties broken by index (stable). `[n]` -> `[n]` int32.

    `rank_i = #{j : s_j < s_i} + #{j < i : s_j == s_i}`; NaN scores rank as `+inf` (after every
    number, among themselves by index).
    """
    n = scores.shape[0]
    s = jnp.where(jnp.isnan(scores), jnp.inf, scores)
    s_i = s[:, None]
    s_j = s[None, :]
    idx = jnp.arange(n)
    before = (s_j < s_i) | ((s_j == s_i) & (idx[None, :] < idx[:, None]))
    return before.sum(axis=1).astype(jnp.int32)


def stable_ranks_rows(scores: Array) -> Array:
    """`stable_ranks` of every row of `scores` (`[m, n]` -> `[m, n]` int32), by one stable argsort
    whose inverse permutation is scattered (O(m n log n); `vmap(stable_ranks)` would build an
    `[m, n, n]` comparison, and a second argsort for the inverse doubled the time: 10.4 -> 5.6 ms
    at 196 x 196 on XLA:CPU)."""
    s = jnp.where(jnp.isnan(scores), jnp.inf, scores)
    m, n = s.shape
    order = jnp.argsort(s, axis=1, stable=True)
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (m, n))
    return jnp.zeros((m, n), jnp.int32).at[jnp.arange(m)[:, None], order].set(positions, unique_indices=True)


#: Off CPU, up to this many columns `smallest_k_mask_rows` selects by a sort; above (and always on
#: CPU), by an order statistic.
ROWS_SORT_LIMIT = 512


def smallest_k_mask_rows(scores: Array, k: Array | int, *, backend: Backend | None = None) -> Array:
    """`stable_ranks_rows(scores) < k` (`[m, n]` -> `[m, n]` bool: each row's `k` smallest, ties by
    index; NaN as `+inf`; `k` may be traced).

    By the `k`-th smallest value of each row (`order_statistic` on the transpose) and the first ties
    at it in index order: on CPU always, by radix selection for float32 (XLA:CPU's sort is slow: ranks
    by two argsorts took 10.4 ms at 196 x 196 and 83 ms at 512 x 512, the radix mask 0.83 and 6.7 ms,
    and ~80 s at 10,000 x 10,000); elsewhere above `ROWS_SORT_LIMIT` columns, below by a sort."""
    backend = resolve(backend)
    s = jnp.where(jnp.isnan(scores), jnp.inf, scores)
    if not backend.on_cpu and s.shape[1] <= ROWS_SORT_LIMIT:
        return stable_ranks_rows(s) < k
    if backend.on_cpu and backend.sort == "auto":
        # Not a network: `k` is usually traced, so a network would sort every position, and its
        # compile grows as n^2.
        backend = dataclasses.replace(backend, sort="radix")
    k = jnp.asarray(k, jnp.int32)
    t = order_statistic(s.T, jnp.clip(k - 1, 0, s.shape[1] - 1), backend=backend)  # [m]
    less = s < t[:, None]
    eq = s == t[:, None]
    need = k - less.sum(axis=1, dtype=jnp.int32)
    return (less | (eq & (jnp.cumsum(eq, axis=1, dtype=jnp.int32) <= need[:, None]))) & (k > 0)


def smallest_k_mask(scores: Array, k: Array | int) -> Array:
    """`[n]` bool mask of the `k` smallest scores (ties by index); `k` may be traced."""
    return stable_ranks(scores) < k


def largest_k_mask(scores: Array, k: Array | int) -> Array:
    """`[n]` bool mask of the `k` largest scores (ties by index: the earlier row wins)."""
    return stable_ranks(-scores) < k


# --------------------------------------------------------------------------------------------
# Order statistics along the client axis.
# --------------------------------------------------------------------------------------------


def sort_method(n: int, dtype, backend: Backend | None = None) -> str:
    """The order-statistics strategy ("network", "radix" or "sort") for `n` rows of `dtype` under
    `backend` (default the platform's; see the module docstring and `Backend.sort_method`)."""
    return resolve(backend).sort_method(n, dtype)


def _plan(x: Array, backend: Backend | None) -> tuple[str, int]:
    """The static `(strategy, columns per block)` for order statistics of `x` (`[n, d]`)."""
    backend = resolve(backend)
    n, d = x.shape
    return backend.sort_method(n, x.dtype), backend.column_chunk(n, d)


@functools.cache
def _batcher_pairs(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators `(a, b)`, `a < b`, of Batcher's odd-even merge sort on `n` wires.

    Built for the next power of two; comparators touching a wire `>= n` are dropped, which is
    exact: padding wires would hold `+inf`, and a comparator `(a, b)` with `b >= n` leaves both
    wires unchanged.
    """
    p2 = 1
    while p2 < n:
        p2 *= 2
    pairs = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(min(k, p2 - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


@functools.cache
def _pruned_network(n: int, outputs: tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The comparators needed for the sorted positions `outputs`: `(a, b, need_min, need_max)`."""
    need = set(outputs)
    kept = []
    for a, b in reversed(_batcher_pairs(n)):
        lo, hi = a in need, b in need
        if lo or hi:
            kept.append((a, b, lo, hi))
            need.update((a, b))
    return tuple(reversed(kept))


def _network_sorted(rows: list, outputs: tuple[int, ...]) -> list:
    """Sorts `rows` (`[1, d]` arrays, no NaN) element-wise; returns the sorted rows at positions
    `outputs` (other entries None)."""
    rows = list(rows)
    for a, b, lo, hi in _pruned_network(len(rows), outputs):
        u, v = rows[a], rows[b]
        rows[a] = jnp.minimum(u, v) if lo else None
        rows[b] = jnp.maximum(u, v) if hi else None
    return rows


def _order_keys(x: Array) -> Array:
    """float32 -> uint32 keys with the same order (-0.0 just below +0.0; no NaN expected)."""
    b = lax.bitcast_convert_type(x, jnp.uint32)
    neg = (b >> 31) == 1
    return jnp.where(neg, ~b, b | jnp.uint32(0x80000000))


def _from_keys(u: Array) -> Array:
    neg = (u >> 31) == 0
    return lax.bitcast_convert_type(jnp.where(neg, ~u, u & jnp.uint32(0x7FFFFFFF)), jnp.float32)


def _radix_select_block(xb: Array, ranks: tuple, bits: int = 32) -> list:
    """Exact order statistics of every column of a float32 block `[n, c]` (no NaN).

    Binary search over the 32 key bits: after processing bit `j`, `lo` is the largest prefix with
    `#{keys < lo} <= k`, which ends at the `k`-th smallest key. Counts are one matrix-vector
    product per pass; with two ranks both indicator matrices share the product (`1 + 4096 * 1`
    packing, exact in float32 for `n < 4096`). `bits < 32` stops the search early (not an order
    statistic: `experiments/bench_scale.py --server-parts` times the cost of one step with it).
    """
    n, c = xb.shape
    keys = _order_keys(xb)
    ones = jnp.ones((n,), jnp.float32)
    ks = [jnp.asarray(k).astype(jnp.float32) for k in ranks]
    packed = len(ranks) == 2 and n < 4096

    def body(j, los):
        bit = (jnp.uint32(1) << (31 - j).astype(jnp.uint32))
        mids = [lo | bit for lo in los]
        if packed:
            ind = (keys < mids[0]).astype(jnp.float32) + 4096.0 * (keys < mids[1]).astype(jnp.float32)
            both = ones @ ind
            c1 = jnp.floor(both / 4096.0)
            cnts = [both - 4096.0 * c1, c1]
        else:
            cnts = [ones @ (keys < m).astype(jnp.float32) for m in mids]
        return tuple(jnp.where(cnt <= k, m, lo) for cnt, k, m, lo in zip(cnts, ks, mids, los))

    los = lax.fori_loop(0, bits, body, tuple(jnp.zeros((c,), jnp.uint32) for _ in ranks))
    return [_from_keys(lo) for lo in los]


def _radix_band_block(vb: Array, lo, hi, same: bool) -> Array:
    """Band sum of one block of values `vb` (`[n, c]`, float32, no NaN), see `_band_sum`."""
    n = vb.shape[0]
    if same:
        return _radix_select_block(vb, (lo,))[0]
    lo_v, hi_v = _radix_select_block(vb, (lo, hi))
    # Clip trick: sum_i clip(v_i, s_lo, s_hi) = lo * s_lo + (band sum) + (n - 1 - hi) * s_hi.
    total = jnp.ones((n,), vb.dtype) @ jnp.clip(vb, lo_v, hi_v)
    band = total - lo.astype(vb.dtype) * lo_v - (n - 1 - hi).astype(vb.dtype) * hi_v
    # A band of equal values (possibly infinite) is that value times its width (no inf - inf).
    return jnp.where(lo_v == hi_v, (hi - lo + 1).astype(vb.dtype) * lo_v, band)


def _radix_band_sum(fn: Callable, same: bool, chunk: int, x: Array, row_args: tuple, col_args: tuple,
                    lo: Array, hi: Array) -> Array:
    """Band sums of `fn(x, ...)` by radix selection, block by block (`fn` applied in cache)."""

    def piece(xb, cols):
        return _radix_band_block(_full(fn, xb, row_args, cols), lo, hi, same), ()

    out, _ = scan_columns(x, piece, col_args, chunk=chunk)
    return out


def _is_static(v) -> bool:
    return isinstance(v, (int, np.integer))


def _rows(fn: Callable, x: Array, row_args: Sequence[Array], col_args: Sequence[Array]) -> list:
    """`fn(x_i, row_scalars, col_vectors)` for every row as a `[1, d]` array.

    `fn` is element-wise with broadcasting, so the same `fn` also builds the whole `[n, d]`
    matrix (`_full`). Applying it per `[1, d]` row slice (not slicing a precomputed `[n, d]`
    expression, which XLA would materialise: an expression with `n` slicing users exceeds its
    fusion duplication budget) keeps a network and its inputs in one fused kernel.
    """
    cols = [c[None, :] for c in col_args]
    return [fn(x[i:i + 1], [a[i] for a in row_args], cols) for i in range(x.shape[0])]


def _full(fn: Callable, x: Array, row_args: Sequence[Array], col_args: Sequence[Array]) -> Array:
    return fn(x, [a[:, None] for a in row_args], [c[None, :] for c in col_args])


def _masked_values(x, r, c):
    """Row transform for order statistics: NaN -> +inf; unselected rows (`r[0]` False) -> +inf."""
    bad = jnp.isnan(x)
    if r:
        bad = bad | ~r[0]
    return jnp.where(bad, jnp.inf, x)


def _band_sum_forward(fn: Callable, plan: tuple[str, int], static_band, x: Array, row_args: tuple,
                      col_args: tuple, lo: Array, hi: Array) -> Array:
    """Per column, the sum of the sorted values of `fn(...)` (no NaN) with rank in `[lo, hi]`.

    `plan` is `(strategy, columns per block)` (`_plan`); `static_band` is `(lo, hi)` as Python
    ints when the ranks are static (a network is then pruned to them), else None.
    """
    n = x.shape[0]
    method, chunk = plan
    if method == "network":
        rows = _rows(fn, x, row_args, col_args)
        if static_band is not None:
            slo, shi = static_band
            rows = _network_sorted(rows, tuple(range(slo, shi + 1)))
            acc = rows[slo]
            for j in range(slo + 1, shi + 1):
                acc = acc + rows[j]
            return acc[0]
        rows = _network_sorted(rows, tuple(range(n)))
        zero = jnp.zeros((), x.dtype)
        acc = None
        for j in range(n):
            term = jnp.where((j >= lo) & (j <= hi), rows[j], zero)
            acc = term if acc is None else acc + term
        return acc[0]
    if method == "radix":
        same = static_band is not None and static_band[0] == static_band[1]
        return _radix_band_sum(fn, same, chunk, x, row_args, col_args, lo, hi)
    s = jnp.sort(_full(fn, x, row_args, col_args), axis=0)
    pos = jnp.arange(n)[:, None]
    return jnp.sum(jnp.where((pos >= lo) & (pos <= hi), s, jnp.zeros((), x.dtype)), axis=0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _band_sum_ad(fn, plan, static_band, x, row_args, col_args, lo, hi):
    return _band_sum_forward(fn, plan, static_band, x, row_args, col_args, lo, hi)


@_band_sum_ad.defjvp
def _band_sum_ad_jvp(fn, plan, static_band, primals, tangents):
    # One derivative rule for every strategy (differentiating a min/max network directly gives a
    # backward graph that takes minutes to compile at 50 rows). It is the sub-gradient of the band
    # sum of the values v = fn(x, ...): values strictly inside the band count once; the band's
    # copies of a tied boundary value are shared evenly among the tied entries. Only evaluated
    # under differentiation; costs two order statistics and a few passes.
    x, row_args, col_args, lo, hi = primals
    tx, tcols = tangents[0], tangents[2]
    out = _band_sum_ad(fn, plan, static_band, x, row_args, col_args, lo, hi)
    lo_band = None if static_band is None else (static_band[0], static_band[0])
    hi_band = None if static_band is None else (static_band[1], static_band[1])
    lo_v = _band_sum_ad(fn, plan, lo_band, x, row_args, col_args, lo, lo)
    hi_v = _band_sum_ad(fn, plan, hi_band, x, row_args, col_args, hi, hi)
    v, tv = jax.jvp(lambda x_, c_: _full(fn, x_, row_args, c_), (x, tuple(col_args)), (tx, tuple(tcols)))
    dtype = v.dtype
    inside = ((v > lo_v) & (v < hi_v)).astype(dtype)
    eq_lo = (v == lo_v).astype(dtype)
    eq_hi = (v == hi_v).astype(dtype)
    c_lo = jnp.maximum(eq_lo.sum(axis=0), 1.0)
    c_hi = jnp.maximum(eq_hi.sum(axis=0), 1.0)
    share_lo = (jnp.sum(v <= lo_v, axis=0) - lo).astype(dtype) / c_lo
    share_hi = (hi + 1 - jnp.sum(v < hi_v, axis=0)).astype(dtype) / c_hi
    share_flat = (hi - lo + 1).astype(dtype) / c_lo
    w = jnp.where(lo_v == hi_v, eq_lo * share_flat, inside + eq_lo * share_lo + eq_hi * share_hi)
    return out, jnp.sum(w * tv, axis=0)


def _band_sum(fn: Callable, x: Array, row_args: Sequence[Array], col_args: Sequence[Array], lo, hi,
              plan: tuple[str, int]) -> Array:
    """Per column, the sum of the sorted values of `fn(...)` (no NaN) with rank in `[lo, hi]`
    (Python ints or traced scalars), by `plan`; differentiable (see `_band_sum_ad_jvp`)."""
    static_band = (int(lo), int(hi)) if _is_static(lo) and _is_static(hi) else None
    return _band_sum_ad(fn, plan, static_band, x, tuple(row_args), tuple(col_args),
                        jnp.asarray(lo, jnp.int32), jnp.asarray(hi, jnp.int32))


def rank_band_sum(x: Array, lo, hi, mask: Array | None = None, *, backend: Backend | None = None) -> Array:
    """Per column, the sum of the sorted values whose rank is in `[lo, hi]` (0-based, inclusive).

    Args:
      x: `[n, d]`. NaN counts as `+inf`.
      lo, hi: ranks, Python ints or traced int scalars, `0 <= lo <= hi < n`.
      mask: optional `[n]` bool; unselected rows count as `+inf` (so ranks below the number of
        selected rows only see selected values).
      backend: `ops.Backend` (static; default the platform's): picks the strategy.

    Returns:
      `[d]` sums.
    """
    plan = _plan(x, backend)
    if _is_static(lo) and _is_static(hi):
        return _band_sum_static(x, mask, int(lo), int(hi), plan)
    return _band_sum_traced(x, mask, lo, hi, plan)


def _band_sum_any(x, mask, lo, hi, plan):
    row_args = () if mask is None else (mask,)
    return _band_sum(_masked_values, x, row_args, (), lo, hi, plan)


# Jitted entry points (compiled once per shape and strategy, also for eager callers); Python-int
# ranks stay static so that a network can be pruned to them.
_band_sum_static = jax.jit(_band_sum_any, static_argnums=(2, 3, 4))
_band_sum_traced = jax.jit(_band_sum_any, static_argnums=(4,))


def rank_band_mean(x: Array, lo, hi, mask: Array | None = None, *, backend: Backend | None = None) -> Array:
    """Per column, the mean of the sorted values with rank in `[lo, hi]` (see `rank_band_sum`).

    TrMean is `rank_band_mean(x, b, n - 1 - b)`; the midpoint median is
    `rank_band_mean(x, (n-1)//2, n//2)`. `[n, d]` -> `[d]`.
    """
    if _is_static(lo) and _is_static(hi):
        cnt = jnp.asarray(int(hi) - int(lo) + 1, x.dtype)
    else:
        cnt = (jnp.asarray(hi) - jnp.asarray(lo) + 1).astype(x.dtype)
    return rank_band_sum(x, lo, hi, mask, backend=backend) / cnt


def order_statistic(x: Array, k, mask: Array | None = None, *, backend: Backend | None = None) -> Array:
    """Per column, the `k`-th smallest value (0-based). `[n, d]` -> `[d]`.

    Args:
      x: `[n, d]`; NaN counts as `+inf`.
      k: rank, Python int or traced int scalar.
      mask: optional `[n]` bool: rank among the selected rows (others count as `+inf`).
      backend: `ops.Backend` (static; default the platform's).
    """
    return rank_band_sum(x, k, k, mask, backend=backend)


def lower_median(x: Array, *, backend: Backend | None = None) -> Array:
    """Coordinate-wise lower median of all rows (sorted position `(n-1)//2`, SPEC §1). `[n,d]->[d]`.

    NaN counts as `+inf`.
    """
    return order_statistic(x, (x.shape[0] - 1) // 2, backend=backend)


def _padded_values(x, r, c):
    """Row transform for a masked lower median at a static rank (`_median_pads`): selected rows
    (`r[0]`) keep their values (NaN -> +inf); unselected rows become -inf where `r[1]`, else +inf."""
    sel, low = r
    v = jnp.where(jnp.isnan(x), jnp.inf, x)
    return jnp.where(sel, v, jnp.where(low, -jnp.inf, jnp.inf))


def _median_pads(mask: Array) -> Array:
    """`[n]` bool: the unselected rows to pad with `-inf` so that the lower median of the `h`
    selected rows sits at the static sorted position `(n-1)//2` of all `n` rows.

    With `a` rows at `-inf` and `n - h - a` at `+inf`, sorted position `a + (h-1)//2` is the
    selected rows' lower median; `a = (n-1)//2 - (h-1)//2` makes it `(n-1)//2` for every `h`
    (`0 <= a <= n - h` for `1 <= h <= n`). A static rank lets a sorting network be pruned to one
    output and the radix selection search one rank, where a traced rank `(h-1)//2` needs a full
    sort or a network to every lower position (issue 24). The first `a` unselected rows pad low.
    """
    n = mask.shape[0]
    h = mask.sum(dtype=jnp.int32)
    a = (n - 1) // 2 - jnp.maximum(h - 1, 0) // 2
    unselected = ~mask
    return unselected & (jnp.cumsum(unselected, dtype=jnp.int32) <= a)


def _masked_median_any(x, mask, plan):
    k = (x.shape[0] - 1) // 2
    out = _band_sum(_padded_values, x, (mask, _median_pads(mask)), (), k, k, plan)
    return jnp.where(mask.any(), out, jnp.asarray(jnp.inf, x.dtype))


_masked_median = jax.jit(_masked_median_any, static_argnums=(2,))


def masked_lower_median(x: Array, mask: Array, *, backend: Backend | None = None) -> Array:
    """Coordinate-wise lower median of the rows where `mask` is True (`k = mask.sum()` may be traced).

    Unselected rows count as `+inf`; the result is sorted position `(k-1)//2` (`+inf` for an empty
    mask). Computed as the unmasked order statistic at the static rank `(n-1)//2` of the rows with
    the unselected ones padded to `-inf` / `+inf` (`_median_pads`): same values, and a static
    rank (a network pruned to one output: 325 comparators instead of a full sort's 403 plus a
    select per position at n = 50).
    """
    mask = jnp.asarray(mask, bool)
    return _masked_median(x, mask, _plan(x, backend))


def network_masked_lower_median(xb: Array, mask: Array) -> Array:
    """`masked_lower_median` of a block by the sorting network alone, for use inside a
    `scan_columns` piece that also does other work on the block (STRIKE's first pass).

    Same value as `masked_lower_median(xb, mask, backend=Backend(sort="network"))`, computed
    without its derivative rule (differentiating the network compiles for minutes): a caller that
    needs derivatives supplies its own rule. The network is pruned to the one static position
    `(n-1)//2` (`_median_pads`).

    Args:
      xb: `[n, c]` block (NaN counts as `+inf`).
      mask: `[n]` bool, the rows that count (others are `+inf`).

    Returns:
      `[c]` per column, sorted position `(k-1)//2` of the selected values (`+inf` for an empty mask).
    """
    n = xb.shape[0]
    k = (n - 1) // 2
    rows = _network_sorted(_rows(_padded_values, xb, (mask, _median_pads(mask)), ()), (k,))
    return jnp.where(mask.any(), rows[k][0], jnp.asarray(jnp.inf, xb.dtype))


def _column_sums(fn: Callable, x: Array, row_args: Sequence[Array], col_args: Sequence[Array],
                 plan: tuple[str, int]) -> tuple:
    """`sum_i fn(x_i, ...)` for an element-wise `fn` returning a tuple of terms: `[d]` each.

    With few rows on CPU the sums are chains over `[1, d]` row slices that XLA fuses with `fn`
    (one pass, nothing materialised); otherwise `fn` is applied to the whole matrix and summed
    by a product with ones.
    """
    n = x.shape[0]
    method, chunk = plan
    if method == "network":
        acc: list | None = None
        for terms in _rows(fn, x, row_args, col_args):
            acc = list(terms) if acc is None else [a + t for a, t in zip(acc, terms)]
        assert acc is not None  # x has at least one row (checked at the stage's boundary)
        return tuple(a[0] for a in acc)
    ones = jnp.ones((n,), x.dtype)

    def piece(xb, cols):
        return jnp.stack([ones @ t for t in _full(fn, xb, row_args, cols)]), ()

    sums, _ = scan_columns(x, piece, col_args, chunk=chunk)
    return tuple(sums)


def _distance_values(x, r, c):
    """Row transform: `|x - m|` for selected rows (`r[0]`), `+inf` otherwise (and for NaN)."""
    dist = jnp.abs(x - c[0])
    return jnp.where(r[0] & ~jnp.isnan(dist), dist, jnp.inf)


def _window_terms(x, r, c):
    sel, = r
    med, rad = c
    dtype = x.dtype
    dist = jnp.abs(x - med)
    lt = sel & (dist < rad)
    tie = sel & (dist == rad)
    tie_lo = tie & (x < med)
    tie_hi = tie & ~(x < med)
    zero = jnp.zeros((), dtype)
    return (lt.astype(dtype), tie_lo.astype(dtype), tie_hi.astype(dtype),
            jnp.where(lt, x, zero), jnp.where(tie_lo, x, zero), jnp.where(tie_hi, x, zero))


def median_window_mean(x: Array, beta, mask: Array | None = None, *, backend: Backend | None = None) -> Array:
    """Per column, the mean of the `beta` selected values closest to their lower median.

    This is Bulyan's coordinate-wise step (El Mhamdi et al. 2018). With `m` the lower median of
    the selected values (SPEC §1) and `D_i = |x_i - m|`, the kept values are the `beta` smallest
    by `(D_i, x_i)`: ties in distance go to the smaller value. Computed as `r` = the `beta`-th
    smallest `D`, then every value with `D < r` plus the tied ones (`D == r`, smaller side
    first; tied values on one side are equal up to rounding, so their mean stands for them).
    Three passes over `x`; no per-column sort of distances is materialised.

    Args:
      x: `[n, d]` (selected values finite).
      beta: Python int or traced int, `1 <= beta <= #selected`.
      mask: optional `[n]` bool of selected rows (default: all).
      backend: `ops.Backend` (static; default the platform's).

    Returns:
      `[d]`.
    """
    return _median_window_mean(x, beta, mask, _plan(x, backend))


@functools.partial(jax.jit, static_argnums=(3,))
def _median_window_mean(x: Array, beta, mask: Array | None, plan: tuple[str, int]) -> Array:
    n = x.shape[0]
    sel = jnp.ones((n,), bool) if mask is None else mask
    cnt = sel.sum()
    k_med = jnp.maximum(cnt - 1, 0) // 2
    med = _band_sum(_masked_values, x, (sel,), (), k_med, k_med, plan)
    k = jnp.maximum(jnp.asarray(beta) - 1, 0)
    rad = _band_sum(_distance_values, x, (sel,), (med,), k, k, plan)
    n_lt, c_lo, c_hi, s_lt, s_lo, s_hi = _column_sums(_window_terms, x, (sel,), (med, rad), plan)
    b = jnp.asarray(beta).astype(x.dtype)
    t = b - n_lt
    t_lo = jnp.minimum(t, c_lo)
    t_hi = t - t_lo
    total = s_lt + t_lo / jnp.maximum(c_lo, 1.0) * s_lo + t_hi / jnp.maximum(c_hi, 1.0) * s_hi
    return total / jnp.maximum(b, 1.0)


__all__ = [
    "largest_k_mask",
    "lower_median",
    "masked_lower_median",
    "network_masked_lower_median",
    "median_window_mean",
    "order_statistic",
    "rank_band_mean",
    "rank_band_sum",
    "smallest_k_mask",
    "sort_method",
    "stable_ranks",
    "stable_ranks_rows",
]
