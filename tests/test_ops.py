"""`strike_jax.ops`: order statistics (all three strategies), distances, safe weighted sums.

References are plain NumPy float64 loops written from SPEC §1 (lower median, NaN sorted last)."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import ops

METHODS = ["network", "radix", "sort"]


@pytest.fixture(params=METHODS)
def method(request):
    """The order-statistics strategy, passed explicitly as a static `ops.Backend`."""
    return ops.Backend(sort=request.param)


def _ref_sorted_column(values):
    """Ascending with NaN treated as +inf (SPEC §7: non-finite values go to the ends)."""
    return sorted(float("inf") if np.isnan(v) else float(v) for v in values)


def _ref_band_mean(X, lo, hi, mask=None):
    n, d = X.shape
    rows = [i for i in range(n) if mask is None or mask[i]]
    out = np.empty(d)
    for j in range(d):
        col = _ref_sorted_column([X[i, j] for i in rows]) + [float("inf")] * (n - len(rows))
        out[j] = sum(col[lo:hi + 1]) / (hi - lo + 1)
    return out


def _data(n, d, seed, ties=False, nonfinite=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if ties:
        X = np.round(X)
    if nonfinite:
        bad = rng.random((n, d)) < nonfinite
        X[bad] = rng.choice([np.nan, np.inf, -np.inf], size=bad.sum())
    return X.astype(np.float32)


def test_batcher_network_sorts_every_zero_one_input():
    # 0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input.
    for n in range(1, 13):
        pairs = ops._batcher_pairs(n)
        for bits in itertools.product((0, 1), repeat=n):
            v = list(bits)
            for a, b in pairs:
                if v[a] > v[b]:
                    v[a], v[b] = v[b], v[a]
            assert v == sorted(bits), (n, bits)
    rng = np.random.default_rng(0)
    for n in (13, 31, 50, 64, 100):
        pairs = ops._batcher_pairs(n)
        for _ in range(50):
            v = list(rng.integers(0, 3, size=n))
            want = sorted(v)
            for a, b in pairs:
                if v[a] > v[b]:
                    v[a], v[b] = v[b], v[a]
            assert v == want


def test_pruned_network_keeps_only_needed_comparators():
    full = ops._pruned_network(50, tuple(range(50)))
    med = ops._pruned_network(50, (24,))
    assert len(full) == len(ops._batcher_pairs(50))
    assert len(med) < len(full)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("n,d", [(1, 3), (2, 4), (7, 5), (8, 1), (12, 37)])
def test_rank_band_mean_matches_reference(method, n, d, jit):
    for case, (ties, nonfinite) in enumerate([(False, 0.0), (True, 0.0), (False, 0.15)]):
        X = _data(n, d, seed=10 * n + d + case, ties=ties, nonfinite=nonfinite)
        bands = {(0, 0), ((n - 1) // 2, (n - 1) // 2), ((n - 1) // 2, n // 2), (0, n - 1), (n // 3, n - 1 - n // 3)}
        for lo, hi in sorted(bands):
            want = _ref_band_mean(X.astype(np.float64), lo, hi)
            band_mean = functools.partial(ops.rank_band_mean, backend=method)
            fn = jax.jit(band_mean) if jit else band_mean
            got = np.asarray(fn(jnp.asarray(X), lo, hi))  # traced ranks under jit, static otherwise
            fin = np.isfinite(want)
            np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-5, err_msg=f"{lo},{hi}")
            # Non-finite bands stay non-finite (never a silent finite number).
            assert not np.isfinite(got[~fin]).any()


def test_order_statistic_masked_and_vmapped_over_rank(method):
    X = _data(9, 6, 3, nonfinite=0.1)
    mask = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0], bool)
    cnt = int(mask.sum())
    ks = jnp.arange(cnt)
    got = jax.vmap(lambda k: ops.order_statistic(jnp.asarray(X), k, jnp.asarray(mask), backend=method))(ks)
    for k in range(cnt):
        want = _ref_band_mean(X.astype(np.float64), k, k, mask)
        fin = np.isfinite(want)
        np.testing.assert_allclose(np.asarray(got[k])[fin], want[fin], rtol=1e-6)
    med = ops.masked_lower_median(jnp.asarray(X), jnp.asarray(mask), backend=method)
    np.testing.assert_array_equal(np.asarray(med), np.asarray(got[(cnt - 1) // 2]))


def test_lower_median_is_not_the_midpoint(method):
    X = np.arange(8, dtype=np.float32).reshape(8, 1)[::-1]
    assert float(ops.lower_median(jnp.asarray(X), backend=method)[0]) == 3.0
    assert float(ops.rank_band_mean(jnp.asarray(X), 3, 4, backend=method)[0]) == 3.5


def test_rank_band_mean_gradient(method):
    # Generic input (no ties): d trmean / dX = 1/(n - 2b) on the kept entries, 0 elsewhere.
    n, d, b = 9, 4, 2
    X = jnp.asarray(_data(n, d, 5))
    g = jax.jit(jax.grad(lambda x: jnp.sum(ops.rank_band_mean(x, b, n - 1 - b, backend=method)
                                           * jnp.arange(1.0, d + 1))))(X)
    ranks = np.argsort(np.argsort(np.asarray(X), axis=0), axis=0)
    kept = (ranks >= b) & (ranks <= n - 1 - b)
    want = kept * np.arange(1.0, d + 1) / (n - 2 * b)
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-6, atol=1e-7)
    gm = jax.jit(jax.grad(lambda x: jnp.sum(ops.lower_median(x, backend=method))))(X)
    np.testing.assert_allclose(np.asarray(gm), ranks == (n - 1) // 2, atol=1e-7)
    # Traced ranks (jit) give the same gradient.
    gj = jax.jit(jax.grad(lambda x, lo: jnp.sum(ops.rank_band_mean(x, lo, n - 1 - lo, backend=method)
                                                * jnp.arange(1.0, d + 1))))(X, b)
    np.testing.assert_allclose(np.asarray(gj), want, rtol=1e-6, atol=1e-7)


def _ref_window_mean(X, beta, mask):
    n, d = X.shape
    rows = [i for i in range(n) if mask[i]]
    out = np.empty(d)
    for j in range(d):
        vals = [X[i, j] for i in rows]
        med = sorted(vals)[(len(vals) - 1) // 2]
        kept = sorted(vals, key=lambda v: (abs(v - med), v))[:beta]
        out[j] = sum(kept) / beta
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_median_window_mean_matches_reference(method, ties):
    X = _data(11, 7, 6, ties=ties)
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)
    for beta in (1, 2, 4, int(mask.sum())):
        got = jax.jit(functools.partial(ops.median_window_mean, backend=method))(jnp.asarray(X), beta,
                                                                              jnp.asarray(mask))
        np.testing.assert_allclose(np.asarray(got), _ref_window_mean(X.astype(np.float64), beta, mask),
                                   rtol=1e-5, atol=1e-6, err_msg=f"beta={beta}")


def test_pairwise_sq_dists_precise_with_large_offset():
    rng = np.random.default_rng(1)
    X = (1e3 + rng.normal(size=(6, 3000))).astype(np.float32)  # |x|^2 ~ 3e9, distances ~ 6e3
    Xd = X.astype(np.float64)
    want = ((Xd[:, None] - Xd[None]) ** 2).sum(-1)
    got = np.asarray(jax.jit(ops.pairwise_sq_dists)(jnp.asarray(X)))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.all(np.diag(got) == 0) and np.array_equal(got, got.T)
    # Uncentred float32 expansion would be off by ~|x|^2 * 1e-7 = 3e2, i.e. ~5% of a distance.
    g = jnp.asarray(X) @ jnp.asarray(X).T
    naive = np.asarray(jnp.diag(g)[:, None] + jnp.diag(g)[None] - 2 * g)
    assert np.abs(naive - want).max() > 10 * np.abs(got - want).max()


@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_gram_blocks_and_nonfinite_rows(chunk):
    X = _data(7, 150, 2)
    X[2, 5] = np.nan
    X[4, 100] = -np.inf
    g = np.asarray(ops.centred_gram(jnp.asarray(X), chunk=chunk))
    d2, fin = ops.sq_dists_from_gram(jnp.asarray(g))
    d2, fin = np.asarray(d2), np.asarray(fin)
    np.testing.assert_array_equal(fin, [1, 1, 0, 1, 0, 1, 1])
    ok = np.flatnonzero(fin)
    Xd = X.astype(np.float64)
    for i in range(7):
        for j in range(7):
            if i == j:
                assert d2[i, j] == 0
            elif fin[i] and fin[j]:
                np.testing.assert_allclose(d2[i, j], ((Xd[i] - Xd[j]) ** 2).sum(), rtol=1e-5)
            else:
                assert d2[i, j] == np.inf
    assert len(ok) == 5
    np.testing.assert_array_equal(np.asarray(ops.finite_rows(jnp.asarray(X))), fin)


def test_gram_forms_agree():
    # Blocked (few rows), upper-triangle blocks (many rows) and plain products: same matrix.
    X = jnp.asarray(_data(9, 300, 8) + 20)
    blocked = np.asarray(ops.centred_gram(X, chunk=64, backend=ops.Backend(gram="blocks")))
    tri = np.asarray(ops.centred_gram(X, backend=ops.Backend(gram="triangle")))
    plain = np.asarray(ops.centred_gram(X, backend=ops.Backend(gram="plain")))
    np.testing.assert_allclose(tri, blocked, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(plain, blocked, rtol=1e-4, atol=1e-3)
    d_tri = np.asarray(ops.sq_dists_from_gram(jnp.asarray(tri))[0])
    d_blk = np.asarray(ops.sq_dists_from_gram(jnp.asarray(blocked))[0])
    np.testing.assert_allclose(d_tri, d_blk, rtol=1e-5, atol=1e-3)


def test_sq_dists_to_and_norms():
    X = _data(5, 1000, 3) + 50
    c = X.mean(0) + 0.5
    want = ((X.astype(np.float64) - c) ** 2).sum(1)
    np.testing.assert_allclose(np.asarray(ops.sq_dists_to(jnp.asarray(X), jnp.asarray(c))), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ops.sq_norms(jnp.asarray(X))), (X.astype(np.float64) ** 2).sum(1), rtol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_weighted_rows_safe(jit):
    X = _data(4, 6, 4)
    X[1, 2] = np.nan
    X[3, 0] = np.inf
    ok = np.isfinite(X).all(1)
    fn = jax.jit(ops.weighted_rows_safe) if jit else ops.weighted_rows_safe
    w = np.array([0.5, 0.0, 0.5, 0.0], np.float32)
    got = np.asarray(fn(jnp.asarray(w), jnp.asarray(X), jnp.asarray(ok)))
    np.testing.assert_allclose(got, 0.5 * X[0] + 0.5 * X[2], rtol=1e-6)
    assert np.isnan(np.asarray(ops.weighted_rows(w, jnp.asarray(X)))).any()  # why the safe one exists
    # A bad row with a non-zero weight still shows (non-finite result, never silently dropped).
    w2 = np.array([0.5, 0.5, 0.0, 0.0], np.float32)
    assert not np.isfinite(np.asarray(fn(jnp.asarray(w2), jnp.asarray(X), jnp.asarray(ok)))).all()
    # Matrix weights, and vmap over weight vectors.
    W = np.stack([w, np.array([0, 0, 1, 0], np.float32)])
    got2 = np.asarray(fn(jnp.asarray(W), jnp.asarray(X), jnp.asarray(ok)))
    np.testing.assert_allclose(got2, W[:, [0, 2]] @ X[[0, 2]], rtol=1e-6)
    got3 = jax.vmap(lambda ww: ops.weighted_rows_safe(ww, jnp.asarray(X), jnp.asarray(ok)))(jnp.asarray(W))
    np.testing.assert_allclose(np.asarray(got3), got2, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(ops.masked_mean_safe(jnp.asarray(X), jnp.asarray([1, 0, 1, 0], bool), jnp.asarray(ok))),
        (X[0] + X[2]) / 2, rtol=1e-6)


def test_stable_ranks_ties_and_nan():
    s = jnp.asarray([2.0, np.nan, 1.0, 2.0, -np.inf, np.nan])
    np.testing.assert_array_equal(np.asarray(ops.stable_ranks(s)), [2, 4, 1, 3, 0, 5])
    np.testing.assert_array_equal(np.asarray(ops.smallest_k_mask(s, 2)), [0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(np.asarray(ops.largest_k_mask(jnp.asarray([1.0, 3.0, 3.0, 0.0]), 2)), [0, 1, 1, 0])


@pytest.mark.parametrize("chunk", [1, 3, 5, 16])
def test_scan_columns_blocks_and_remainder(chunk):
    X = jnp.asarray(_data(3, 11, 7))
    side = jnp.arange(11.0)

    def piece(xb, sb):
        return xb * sb[0], (xb.sum(axis=1),)

    for compensated in (False, True):
        vec, (acc,) = ops.scan_columns(X, piece, (side,), (jnp.zeros(3),), chunk=chunk, compensated=compensated)
        np.testing.assert_allclose(np.asarray(vec), np.asarray(X) * np.arange(11.0), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(acc), np.asarray(X).sum(1), rtol=1e-5)


def test_compensated_block_sum_is_more_accurate():
    # 4096 blocks of one column each: a plain float32 running sum drifts, Kahan's does not.
    X = jnp.asarray(np.full((1, 4096), 0.1, np.float32) + np.float32(1e4))

    def piece(xb, sb):
        return None, (xb.sum(axis=1),)

    want = float(np.asarray(X, np.float64).sum())
    plain = float(ops.scan_columns(X, piece, (), (jnp.zeros(1),), chunk=1)[1][0][0])
    comp = float(ops.scan_columns(X, piece, (), (jnp.zeros(1),), chunk=1, compensated=True)[1][0][0])
    assert abs(comp - want) <= 1e-7 * want < abs(plain - want)


def test_sort_method_choice():
    if jax.default_backend() == "cpu":
        assert ops.sort_method(50, jnp.float32) == "network"
        assert ops.sort_method(1000, jnp.float32) == "radix"
        assert ops.sort_method(1000, jnp.float16) == "sort"
    with pytest.raises(ValueError, match="allowed"):
        ops.sort_method(5, jnp.float32, ops.Backend(sort="bogus"))


@pytest.mark.parametrize("n", [1, 2, 11, 24])
def test_masked_lower_median_every_mask_size(method, n):
    # The static-rank form (unselected rows padded to -inf / +inf) against the float64 reference,
    # bit for bit, for every selected count: ties, +-0, NaN (as +inf) and infinities; one
    # compile for all masks (vmap over them), an empty mask -> +inf.
    X = _data(n, 9, 40 + n, ties=True, nonfinite=0.15)
    X[:, 0] = np.where(np.arange(n) % 2 == 0, -0.0, 0.0)
    rng = np.random.default_rng(n)
    masks = np.zeros((n + 1, n), bool)
    for k in range(n + 1):
        masks[k, rng.permutation(n)[:k]] = True
    fn = jax.jit(jax.vmap(functools.partial(ops.masked_lower_median, backend=method), in_axes=(None, 0)))
    got = np.asarray(fn(jnp.asarray(X), jnp.asarray(masks)))
    for k in range(n + 1):
        if k == 0:
            assert np.all(got[k] == np.inf)
            continue
        r = (k - 1) // 2
        want = _ref_band_mean(X.astype(np.float64), r, r, masks[k]).astype(np.float32)
        np.testing.assert_array_equal(got[k], want, err_msg=f"k={k}")


def test_masked_lower_median_gradient(method):
    # Generic input: the derivative is 1 at the selected rows' median entry of every column.
    n, d = 9, 5
    X = jnp.asarray(_data(n, d, 8))
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
    g = jax.jit(jax.grad(lambda x: jnp.sum(ops.masked_lower_median(x, jnp.asarray(mask), backend=method))))(X)
    med = _ref_band_mean(np.asarray(X, np.float64), (mask.sum() - 1) // 2, (mask.sum() - 1) // 2, mask)
    want = (np.asarray(X, np.float64) == med[None, :]) & mask[:, None]
    np.testing.assert_allclose(np.asarray(g), want, atol=1e-7)


def test_network_masked_lower_median_matches_reference():
    # Every mask size (the rank (k-1)//2 is traced), NaN counted as +inf, an empty mask -> +inf.
    X = _data(11, 7, 4, nonfinite=0.1)
    rng = np.random.default_rng(3)
    fn = jax.jit(ops.network_masked_lower_median)
    for k in range(12):
        mask = np.zeros(11, bool)
        mask[rng.permutation(11)[:k]] = True
        got = np.asarray(fn(jnp.asarray(X), jnp.asarray(mask)))
        if k == 0:
            assert np.all(got == np.inf)
            continue
        r = (k - 1) // 2
        want = _ref_band_mean(X.astype(np.float64), r, r, mask)
        np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("n", [12, 196, 552])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smallest_k_mask_rows_without_sort_equals_stable_ranks(n, dtype):
    """On CPU the mask comes from an order statistic (radix for float32, a column sort otherwise)
    and index-ordered ties: equal to the stable ranks of a per-row double loop, with many ties,
    infinities, NaN (ranked as +inf) and a traced k (jit)."""
    from strike_jax.ops import order

    rng = np.random.default_rng(3)
    s = np.round(rng.normal(size=(7, n)) * 2) / 2  # many exact ties per row
    s[:, :5] = np.inf
    s[1, 3] = np.nan
    s[2, :] = 1.0  # a row of ties only
    ref = np.where(np.isnan(s), np.inf, s)
    si, sj = ref[:, :, None], ref[:, None, :]  # [r, i, j]: rank of i counts the j before it
    before = (sj < si) | ((sj == si) & (np.arange(n)[None, None, :] < np.arange(n)[None, :, None]))
    ranks = before.sum(axis=2)
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", dtype == np.float64)
    try:
        x = jnp.asarray(s, dtype)
        assert x.dtype == dtype
        np.testing.assert_array_equal(np.asarray(order.stable_ranks_rows(x)), ranks)
        run = jax.jit(order.smallest_k_mask_rows)
        for k in (0, 1, 7, n - 5, n):
            np.testing.assert_array_equal(np.asarray(run(x, k)), ranks < k, err_msg=str(k))
    finally:
        jax.config.update("jax_enable_x64", old)


def test_gram_column_chunk_keeps_the_accumulator_below_the_blocks():
    cpu = ops.Backend(platform="cpu")
    # Few rows: the plain column chunk.
    assert cpu.gram_column_chunk(50, 32, 10**6) == cpu.column_chunk(50, 10**6)
    assert cpu.gram_column_chunk(1000, 1000, 10**5) == cpu.column_chunk(1000, 10**5)
    # Many rows: at least m / 4 columns (a power of two), at most d.
    assert cpu.column_chunk(10_000, 20_000) == 128
    assert cpu.gram_column_chunk(10_000, 8192, 20_000) == 2048
    assert cpu.gram_column_chunk(10_000, 10_000, 20_000) == 4096
    assert cpu.gram_column_chunk(10_000, 10_000, 3000) == 3000
