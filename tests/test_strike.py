"""STRIKE (SPEC §6) against the brute-force NumPy float64 reference in reference_attacks.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_attacks as ref
from strike_jax import attacks
from strike_jax.attacks import strike_stages as st


def skewed_updates(seed, n, d):
    """Honest-looking updates with a skewed (exponential) component along one direction."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d)
    direction = rng.normal(size=d)
    other = rng.normal(size=d)
    e = rng.exponential(size=(n, 1))
    g = rng.normal(size=(n, 1))
    rows = base + e * direction + 0.5 * g * other + 0.3 * rng.normal(size=(n, d))
    return rows.astype(np.float32)


def mask_of(n, byz_rows):
    m = np.zeros(n, bool)
    m[list(byz_rows)] = True
    return m


# Two shapes only (compilations are the tests' main cost): n = 10 or 11, d = 257 (not a multiple of
# any chunk size). Byzantine rows: first rows, interleaved rows, a single one, |S| = 1, odd/even h.
D = 257
CASES = [
    (10, [0, 1]),
    (10, [1, 4, 7]),
    (10, [9]),
    (10, [0, 2, 4, 6]),
    (11, [0, 1, 2, 3, 4]),
    (11, [3, 5, 9, 10]),
]


def _run_impl(u, m, nu=1.0):
    """(attacked matrix, StrikeResult) through the registry attack and the staged function."""
    out = attacks.get("strike", nu=nu).apply(u, m, (), key=None)[0]
    return out, st.strike_vector(u, m, nu)


_RUN_JIT = jax.jit(_run_impl)  # module-level: tests with equal shapes share the compilation


def _run(u, m, jit=True, nu=1.0):
    fn = _RUN_JIT if jit else _run_impl
    out, res = fn(jnp.asarray(u), jnp.asarray(m), nu)
    return np.asarray(out), res


# Each case runs jitted; case 1 also eagerly (op by op), which exercises the same code unjitted.
@pytest.mark.parametrize("case,jit", [(c, True) for c in range(len(CASES))] + [(1, False)])
def test_matches_reference(case, jit):
    n, byz = CASES[case]
    u = skewed_updates(case, n, D)
    m = mask_of(n, byz)
    expect = ref.strike(u, m)
    out, res = _run(u, m, jit)
    # Honest rows bit-exact, every Byzantine row equal to the reference vector.
    np.testing.assert_array_equal(out[~m], u[~m])
    for i in np.flatnonzero(m):
        np.testing.assert_allclose(out[i], expect["vector"], rtol=2e-4, atol=2e-4)
    assert sorted(np.flatnonzero(np.asarray(res.selection.skewed_mask))) == expect["S"]
    assert not bool(res.fallback)
    assert abs(float(res.alpha) - expect["alpha"]) <= 1e-4 * (1 + expect["alpha"])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_constraint_tight_at_nu_one(case):
    n, byz = CASES[case]
    u = skewed_updates(100 + case, n, D)
    m = mask_of(n, byz)
    _, res = _run(u, m)
    S = sorted(np.flatnonzero(np.asarray(res.selection.skewed_mask)))
    u64 = u.astype(np.float64)
    diam = ref.diameter(u64[S])
    row = np.asarray(res.vector, np.float64)
    # Within the diameter of S (up to float32 rounding of the output row).
    assert max(ref.dist(row, u64[i]) for i in S) <= diam * (1 + 1e-5) + 1e-5
    # Maximal: a slightly larger alpha violates the constraint (float64 check).
    _, _, S_ref = ref.strike_selection(u64, m)
    assert S == S_ref
    centre = ref.mean(u64[S])
    mu = ref.mean(u64[~m])
    dev = np.sign(centre - mu) * ref.std(u64[S])
    alpha = float(res.alpha)
    if len(S) > 1:
        assert ref.strike_F(u64, S, centre, dev, alpha + 1e-4 * (1 + alpha)) > 0
    assert ref.strike_F(u64, S, centre, dev, alpha) <= 1e-5 * (1 + diam)


def test_selection_is_brute_force_top_k():
    u = skewed_updates(7, 10, D)
    m = mask_of(10, [2, 3, 8])
    stages = jax.jit(lambda u, h: (lambda sd: (sd, st.select_skewed(u, h, sd.direction, 7 - 3)))(
        st.search_direction(u, h)))
    search, sel = stages(jnp.asarray(u), jnp.asarray(~m))
    mu, med, S_ref = ref.strike_selection(u, m)
    np.testing.assert_allclose(np.asarray(search.mean), mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(search.median), med)
    assert sorted(np.flatnonzero(np.asarray(sel.skewed_mask))) == S_ref
    direction = med - mu
    p_ref = u.astype(np.float64) @ direction / np.linalg.norm(direction)
    np.testing.assert_allclose(np.asarray(sel.projections), p_ref, rtol=1e-4, atol=1e-3)


def test_hidden_vector_and_chunking():
    u = skewed_updates(3, 10, 203)
    m = mask_of(10, [0, 5])
    S = mask_of(10, [1, 2, 4, 6, 8, 9])
    mu = ref.mean(u[~m])
    centre = ref.mean(u[S])
    sigma = ref.std(u[S])
    dev = np.sign(centre - mu) * sigma
    for chunk in (None, 16, 64):
        fn = jax.jit(functools.partial(st.hidden_vector, chunk=chunk))
        hv = fn(jnp.asarray(u), jnp.asarray(S), jnp.asarray(mu, jnp.float32))
        np.testing.assert_allclose(np.asarray(hv.centre), centre, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(hv.sigma), sigma, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(hv.dev), dev, rtol=1e-4, atol=1e-5)
        A = [ref.dist(u[i], centre) ** 2 for i in range(10)]
        B = [float((u[i].astype(np.float64) - centre) @ dev) for i in range(10)]
        np.testing.assert_allclose(np.asarray(hv.sq_dists), A, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(hv.dots), B, rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(float(hv.dev_sq_norm), float(dev @ dev), rtol=1e-4)
        np.testing.assert_allclose(float(hv.diameter_sq), ref.diameter(u[S]) ** 2, rtol=1e-4)


def test_bisection_known_roots():
    # One row: ||a dev||^2 = a^2 C <= D^2  ->  alpha = D / sqrt(C).
    for c, d2, root in [(1.0, 4.0, 2.0), (4.0, 1.0, 0.5), (1e-6, 1.0, 1000.0), (1.0, 1e-8, 1e-4)]:
        alpha = float(st.bisect_alpha(jnp.zeros(1), jnp.zeros(1), jnp.float32(c), jnp.float32(d2),
                                      jnp.ones(1, bool)))
        assert alpha <= root * (1 + 1e-6)
        assert root - alpha <= 1e-5 + 1e-6 * root
    # Empty selection -> 0, no NaN.
    assert float(st.bisect_alpha(jnp.zeros(3), jnp.zeros(3), jnp.float32(1), jnp.float32(1),
                                 jnp.zeros(3, bool))) == 0.0


# h == f, h < f, h == 1, h == 0 (H = the Byzantine rows' own updates), one shape; the eager case
# has the shape of CASES[1] so that it reuses that case's op-by-op compilations.
FALLBACK_CASES = [(6, 40, [0, 1, 2]), (6, 40, [0, 1, 3, 5]), (6, 40, [0, 1, 2, 3, 5]), (6, 40, list(range(6)))]


@pytest.mark.parametrize("n,d,byz,jit", [c + (True,) for c in FALLBACK_CASES] + [(10, D, [0, 2, 4, 6, 8], False)])
def test_fallback_when_h_le_f(n, d, byz, jit):
    u = skewed_updates(11, n, d)
    m = mask_of(n, byz)
    expect = ref.strike(u, m)
    assert expect["fallback"]
    out, res = _run(u, m, jit, nu=1.5)
    np.testing.assert_array_equal(out[~m], u[~m])
    for i in np.flatnonzero(m):
        np.testing.assert_allclose(out[i], expect["vector"], rtol=1e-4, atol=1e-4)
    assert bool(res.fallback) and float(res.alpha) == 0.0


def test_no_byzantine_is_identity():
    u = skewed_updates(5, 10, D)
    out, _ = _run(u, np.zeros(10, bool))
    np.testing.assert_array_equal(out, u)


@pytest.mark.parametrize("byz", [[0, 1], [3, 5, 9, 10], [0, 1, 2, 3, 4, 5], list(range(10))])
def test_negation_equivariance(byz):
    # Holds exactly when the number of honest rows h is odd: for even h the lower median of -x is
    # minus the *upper* median of x. Covers h = 9, 7, 5 (fallback, h <= f) and 1 (fallback -10 mu).
    n = 11
    assert (n - len(byz)) % 2 == 1
    u = skewed_updates(21, n, D)
    m = mask_of(n, byz)
    out, _ = _run(u, m)
    neg, _ = _run(-u, m)
    np.testing.assert_allclose(neg, -out, rtol=1e-6, atol=1e-6)


def test_tie_rule_when_median_equals_mean():
    # Small-integer rows symmetric around 0 per coordinate, h = 8 (1/8 is exact) with four zero
    # rows: mean == lower median == 0 exactly, u_search = 0, all projections 0 -> S = the first
    # h - f = 6 honest rows by row order (v, -v, 0, w, 0, 0: g_S = w / 6, so sign(g_S - mu) = sign(w)).
    rng = np.random.default_rng(0)
    v = rng.integers(-5, 6, size=D).astype(np.float32)
    # w has no zero coordinate: sign(g_S - mu) must not hinge on an exact 0 (w @ X with weights 1/6
    # may use FMA, whose residuals make "v/6 - v/6" a tiny non-zero).
    w = (rng.integers(1, 6, size=D) * rng.choice([-1, 1], size=D)).astype(np.float32)
    z = np.zeros(D, np.float32)
    honest = np.stack([v, -v, z, w, z, z, -w, z])
    u = np.zeros((10, D), np.float32)
    m = mask_of(10, [1, 4])
    u[~m] = honest
    u[m] = 100.0
    _, res = _run(u, m)
    assert float(jnp.abs(res.search.direction).max()) == 0.0
    honest_rows = np.flatnonzero(~m)
    chosen = sorted(np.flatnonzero(np.asarray(res.selection.skewed_mask)))
    assert chosen == list(honest_rows[:6]) == ref.strike_selection(u, m)[2]
    assert np.all(np.isfinite(np.asarray(res.vector)))
    np.testing.assert_allclose(np.asarray(res.vector), ref.strike(u, m)["vector"], rtol=1e-4, atol=1e-4)


def test_vmap_over_nu_compiles_once_and_matches_loop():
    u = jnp.asarray(skewed_updates(2, 10, D))
    m = jnp.asarray(mask_of(10, [0, 3]))
    nus = jnp.asarray([0.25, 0.5, 1.0, 1.5, 2.0], jnp.float32)
    traces = []

    def one(nu):
        traces.append(1)
        return attacks.get("strike", nu=nu).apply(u, m, (), key=None)[0]

    batched = jax.jit(jax.vmap(one))(nus)
    assert len(traces) == 1
    for k, nu in enumerate([0.25, 0.5, 1.0, 1.5, 2.0]):
        loop, res = _run(u, m, nu=nu)  # a Python loop over concrete nu values
        np.testing.assert_allclose(np.asarray(batched[k]), loop, rtol=1e-5, atol=1e-5)
    # Byzantine rows scale linearly in nu around g_S.
    _, res = _run(u, m)
    np.testing.assert_allclose(np.asarray(batched[4, 0] - res.hidden.centre),
                               2.0 * np.asarray(res.vector - res.hidden.centre), rtol=1e-4, atol=1e-5)


def test_vmap_over_masks_with_different_f():
    n = 10
    u = jnp.asarray(skewed_updates(4, n, D))
    masks = np.stack([mask_of(n, b) for b in ([], [0], [1, 5], [0, 1, 2, 3], [2, 3, 4, 5, 6], list(range(10)))])
    apply = lambda m: attacks.get("strike").apply(u, m, (), key=None)[0]
    batched = np.asarray(jax.jit(jax.vmap(apply))(jnp.asarray(masks)))
    for k, m in enumerate(masks):
        np.testing.assert_allclose(batched[k], _run(u, m)[0], rtol=1e-5, atol=1e-5)
        expect = ref.strike(np.asarray(u), m)
        for i in np.flatnonzero(m):
            np.testing.assert_allclose(batched[k, i], expect["vector"], rtol=2e-4, atol=2e-4)
        np.testing.assert_array_equal(batched[k][~m], np.asarray(u)[~m])


def test_grad_is_finite():
    u = jnp.asarray(skewed_updates(8, 10, D))
    m = jnp.asarray(mask_of(10, [0, 1]))
    g = jax.jit(jax.grad(lambda x: attacks.get("strike").apply(x, m, (), key=None)[0].sum()))(u)
    assert g.shape == u.shape and bool(jnp.all(jnp.isfinite(g)))


def test_invalid_nu():
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1", True, [1.0]):
        with pytest.raises(ValueError, match="nu"):
            attacks.get("strike", nu=bad)
    attacks.get("strike", nu=np.float32(0.5))
    attacks.get("strike", nu=jnp.asarray(2.0))


@pytest.mark.parametrize("n,byz,grad", [(20, [0, 7], True), (12, [4], False)])
def test_fused_passes_equal_unfused(n, byz, grad):
    """`fused=True` (stage 1 in one blocked pass, the Gram matrix of S alone: |S| = 16 and 10 take
    the buckets 16 and 12 = n; the other tests' n = 10 cases take 8) equals the unfused stages and
    the float64 reference, gradients included."""
    u = jnp.asarray(skewed_updates(n + 1, n, D))
    m = jnp.asarray(mask_of(n, byz))
    a = st.strike_vector(u, m, fused=False)
    # Fused stage 1 with the compact Gram, and the unfused stage 1 with it (issue 24's mix).
    for b in (st.strike_vector(u, m, fused=True), st.strike_vector(u, m, fused=False, compact=True)):
        np.testing.assert_array_equal(np.asarray(a.selection.skewed_mask), np.asarray(b.selection.skewed_mask))
        np.testing.assert_array_equal(np.asarray(a.search.median), np.asarray(b.search.median))
        for x, y in [(a.search.mean, b.search.mean), (a.selection.projections, b.selection.projections),
                     (a.hidden.sq_dists, b.hidden.sq_dists), (a.hidden.dots, b.hidden.dots),
                     (a.hidden.diameter_sq, b.hidden.diameter_sq), (a.alpha, b.alpha), (a.vector, b.vector)]:
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-5)
    expect = ref.strike(np.asarray(u), np.asarray(m))
    np.testing.assert_allclose(np.asarray(b.vector), expect["vector"], rtol=2e-4, atol=2e-4)
    if not grad:
        return
    g = jax.grad(lambda x: st.strike_vector(x, m, fused=True).vector.sum())(u)
    g0 = jax.grad(lambda x: st.strike_vector(x, m, fused=False).vector.sum())(u)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-5, atol=1e-6)
