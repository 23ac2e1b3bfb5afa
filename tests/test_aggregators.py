"""Aggregators against float64 brute-force references (tests/reference_aggregators.py), plus jit,
vmap (over problems and over f), grad, hostile input and error tests."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_aggregators as ref
from strike_jax import aggregators as A
from strike_jax import ops

jax.config.update("jax_enable_x64", False)

KEY = jax.random.PRNGKey(42)
# Rules that need round inputs beyond the matrix (root update, client ids): see tests/test_aggregators_more.py.
ROUND_INPUTS = ("fltrust", "foolsgold")
ROBUST = [n for n in A.rule_names() if n not in ("mean",) + ROUND_INPUTS]

# (name, reference, limit(n) or None)
RULES = [
    ("mean", ref.mean, None),
    ("median", ref.median, None),
    ("trmean", ref.trmean, lambda n: (n - 1) // 2),
    ("rbtm", ref.trmean, lambda n: (n - 1) // 2),
    ("krum", ref.krum, lambda n: (n - 3) // 2),
    ("multikrum", ref.multikrum, lambda n: (n - 3) // 2),
    ("rfa", ref.rfa, None),
    ("aksel", ref.aksel, None),
    ("bulyan", ref.bulyan, lambda n: (n - 3) // 4),
]

SHAPES = [(7, 5), (8, 1), (12, 16)]


def _problem(n, d, seed, ties=False, byz_copies=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if ties:
        X = np.round(X * 2) / 2  # many exact ties per coordinate
    if byz_copies:
        X[:byz_copies] = rng.normal(loc=3.0, size=(1, d))  # several identical Byzantine rows
    return X.astype(np.float32)


_JITTED = {}
_RULES = {}


def _aggregate(name, X, f, jit, key=KEY, **hp):
    """One rule on one problem; rules and jitted functions are cached per (rule, shape), `f` traced
    under jit (a rule object compiles its array code once per shape, also when called eagerly)."""
    rk = (name, tuple(sorted(hp.items())))
    if rk not in _RULES:
        _RULES[rk] = A.get(name, **hp)
    rule = _RULES[rk]
    state = rule.init(jnp.asarray(X))
    if not jit:
        return np.asarray(rule.aggregate(jnp.asarray(X), state, f=f, key=key)[0])
    ck = (name, tuple(sorted(hp.items())), X.shape)
    if ck not in _JITTED:
        _JITTED[ck] = jax.jit(lambda x, ff, s: rule.aggregate(x, s, f=ff, key=key)[0])
    return np.asarray(_JITTED[ck](jnp.asarray(X), f, state))


def _f_values(n, limit):
    hi = (n - 1) // 2 if limit is None else limit(n)
    return sorted({0, min(1, hi), hi})


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name,reference,limit", RULES, ids=[r[0] for r in RULES])
@pytest.mark.parametrize("n,d", SHAPES)
def test_rule_matches_reference(name, reference, limit, n, d, jit):
    for case, (ties, copies) in enumerate([(False, 0), (True, 0), (False, 2)]):
        X = _problem(n, d, seed=n * 100 + d + case, ties=ties, byz_copies=copies)
        for f in _f_values(n, limit):
            got = _aggregate(name, X, f, jit)
            want = reference(X.astype(np.float64), f)
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=f"{name} f={f} case={case}")


@pytest.mark.parametrize("method", ["radix", "sort"])
def test_other_sort_strategies_match_reference(method):
    # The default on CPU with few rows is the sorting network; the radix selection (CPU, many
    # rows) and jnp.sort (accelerators) must give the same rules. The strategy is a static
    # `ops.Backend` fixed when the rule is built.
    for name, reference, limit in RULES:
        if name not in ("median", "trmean", "aksel", "bulyan"):
            continue
        rule = A.get(name, backend=ops.Backend(sort=method))
        run = jax.jit(lambda x, f: rule.aggregate(x, (), f=f)[0])
        for case, ties in enumerate([False, True]):
            X = _problem(11, 6, 60 + case, ties=ties, byz_copies=2)
            for f in _f_values(11, limit):
                np.testing.assert_allclose(run(jnp.asarray(X), f), reference(X.astype(np.float64), f),
                                           rtol=2e-5, atol=2e-5, err_msg=f"{name} f={f} ties={ties}")


def test_median_midpoint_option():
    X = _problem(8, 6, 0)
    np.testing.assert_allclose(_aggregate("median", X, 0, True, midpoint=True),
                               ref.median(X.astype(np.float64), 0, midpoint=True), rtol=1e-6)
    np.testing.assert_allclose(_aggregate("median", X, 0, True, midpoint=True),
                               np.median(X, axis=0), rtol=1e-6)
    # the default is the lower median, which differs from jnp.median for even n
    assert not np.allclose(_aggregate("median", X, 0, True), np.median(X, axis=0))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_cclip_matches_reference_and_carries_state(jit):
    X1, X2 = _problem(9, 6, 1) * 5, _problem(9, 6, 2) * 5
    rule = A.get("cclip", tau=3.0, iters=2)
    agg = jax.jit(rule.aggregate, static_argnames=()) if jit else rule.aggregate
    s0 = rule.init(jnp.asarray(X1))
    np.testing.assert_array_equal(np.asarray(s0), np.zeros(6))
    g1, s1 = agg(jnp.asarray(X1), s0, f=2, key=None)
    v1 = ref.cclip(X1.astype(np.float64), 2, np.zeros(6), tau=3.0, iters=2)
    np.testing.assert_allclose(g1, v1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1, v1, rtol=1e-4, atol=1e-5)
    g2, _ = agg(jnp.asarray(X2), s1, f=2, key=None)
    np.testing.assert_allclose(g2, ref.cclip(X2.astype(np.float64), 2, v1, tau=3.0, iters=2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("n,d,niters", [(10, 50, 1), (13, 200, 2), (60, 100, 1)])  # n > b: the [b, b] side
def test_dnc_matches_reference(n, d, niters, jit):
    X = _problem(n, d, 3, byz_copies=3)
    b = 40
    for f in (0, 1, 3):
        got = _aggregate("dnc", X, f, jit, niters=niters, b=b)
        keys = jax.random.split(KEY, niters)
        cols = [np.asarray(jax.random.randint(k, (b,), 0, d)) for k in keys]
        np.testing.assert_allclose(got, ref.dnc(X.astype(np.float64), f, cols), rtol=2e-5, atol=2e-5)


def test_krum_scores_above_sort_rows_match_reference():
    """Above `KRUM_SORT_ROWS` the scores come from the radix band sum (no sort): same selection."""
    from strike_jax.aggregators import distance

    n = distance.KRUM_SORT_ROWS + 88
    X = _problem(n, 3, 7, byz_copies=5)
    for f in (0, 40):
        got = _aggregate("multikrum", X, f, True)
        np.testing.assert_allclose(got, ref.multikrum(X.astype(np.float64), f), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("n,d", [(7, 4), (10, 9)])
def test_nnm_matches_reference(include_self, n, d, jit):
    X = _problem(n, d, 4, byz_copies=2)
    pre = A.get("nnm", include_self=include_self)
    run = lambda x, ff: pre.apply(x, (), f=ff)
    run = jax.jit(run) if jit else run
    for f in (0, 1, 3):
        out, fo, _ = run(jnp.asarray(X), f)
        np.testing.assert_allclose(out, ref.nnm(X.astype(np.float64), f, include_self), rtol=2e-5, atol=2e-5)
        assert int(fo) == f


def test_bucketing_matches_reference():
    X = _problem(9, 5, 5)
    pre = A.get("bucketing", s=2)
    out, fo, _ = pre.apply(jnp.asarray(X), (), f=3, key=KEY)
    perm = np.asarray(jax.random.permutation(KEY, 9))
    np.testing.assert_allclose(out, ref.bucketing(X.astype(np.float64), perm, 2), rtol=1e-6, atol=1e-6)
    assert out.shape == (5, 5) and fo == 2  # ceil(3/2)
    _, fo_traced, _ = jax.jit(lambda x, f: pre.apply(x, (), f=f, key=KEY))(jnp.asarray(X), 3)
    assert int(fo_traced) == 2


def test_chain_equals_steps_by_hand():
    X = jnp.asarray(_problem(12, 7, 6, byz_copies=3))
    nnm, buck, med = A.get("nnm"), A.get("bucketing", s=2), A.get("median")
    ch = A.chain(nnm, buck, med)
    g, state = jax.jit(lambda x, f: ch.aggregate(x, ch.init(x), f=f, key=KEY))(X, 3)
    k1, k2, k3 = jax.random.split(KEY, 3)
    y, f1, _ = nnm.apply(X, (), f=3, key=k1)
    z, f2, _ = buck.apply(y, (), f=f1, key=k2)
    want, _ = med.aggregate(z, (), f=f2, key=k3)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)
    assert ch.name == "nnm+bucketing+median"
    with pytest.raises(ValueError, match="NNM before bucketing"):
        A.chain(buck, nnm, med)
    with pytest.raises(ValueError, match="last stage"):
        A.chain(nnm, buck)
    # The chain rescales f before the rule's limit check: multikrum on 6 buckets tolerates 1.
    mk = A.chain(A.get("bucketing", s=2), A.get("multikrum"))
    mk.aggregate(X, mk.init(X), f=2, key=KEY)
    with pytest.raises(ValueError, match="at most f=1"):
        mk.aggregate(X, mk.init(X), f=3, key=KEY)


# --- vmap, traced f, grad -------------------------------------------------------------------------

ALL_RULES = [n for n in A.rule_names() if n not in ROUND_INPUTS]


def _limit(name, n):
    return {"trmean": (n - 1) // 2, "rbtm": (n - 1) // 2, "krum": (n - 3) // 2, "multikrum": (n - 3) // 2,
            "bulyan": (n - 3) // 4, "dnc": n - 1,
            # trmean on ceil(n/2) buckets tolerates (ceil(n/2) - 1) // 2 = ceil(f/2)
            "nnm+bucketing+trmean": 2 * (((n + 1) // 2 - 1) // 2)}.get(name, (n - 1) // 2)


@pytest.mark.parametrize("name", ALL_RULES + ["nnm+bucketing+trmean"])
def test_vmap_over_problems_and_over_f_equals_loop(name):
    n, d, batch = 9, 6, 3
    stages = name.split("+")
    rule = A.chain(*[A.get(s) for s in stages]) if len(stages) > 1 else A.get(name)
    Xs = jnp.asarray(np.stack([_problem(n, d, 10 + i, byz_copies=2) for i in range(batch)]))
    state = rule.init(Xs[0])
    fn = lambda x, f: rule.aggregate(x, state, f=f, key=KEY)[0]
    one = jax.jit(fn)  # the loop's reference: one problem, one f at a time
    f = min(2, _limit(name, n))
    batched = jax.jit(jax.vmap(fn, in_axes=(0, None)))(Xs, f)
    for i in range(batch):
        np.testing.assert_allclose(batched[i], one(Xs[i], f), rtol=1e-5, atol=1e-6)
    fs = jnp.arange(0, _limit(name, n) + 1)
    over_f = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(Xs[0], fs)
    for i, fi in enumerate(fs.tolist()):
        np.testing.assert_allclose(over_f[i], one(Xs[0], fi), rtol=1e-5, atol=1e-6, err_msg=f"f={fi}")


@pytest.mark.parametrize("name", ALL_RULES)
def test_traced_f_is_clamped_to_the_limit(name):
    n = 9
    rule = A.get(name)
    X = jnp.asarray(_problem(n, 4, 20))
    state = rule.init(X)
    lim = _limit(name, n)
    traced = jax.jit(lambda x, f: rule.aggregate(x, state, f=f, key=KEY)[0])(X, n + 5)
    if name in ("trmean", "rbtm", "krum", "multikrum", "bulyan", "dnc"):
        np.testing.assert_allclose(traced, rule.aggregate(X, state, f=lim, key=KEY)[0], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(traced))


@pytest.mark.parametrize("name", ALL_RULES + ["nnm+bucketing+median"])
def test_grad_is_finite(name):
    X = jnp.asarray(_problem(10, 5, 30))
    rule = A.chain(A.get("nnm"), A.get("bucketing"), A.get("median")) if "+" in name else A.get(name)
    state = rule.init(X)
    w = jnp.linspace(-1.0, 1.0, 5)
    f = 1 if name == "bulyan" else 2
    g = jax.jit(jax.grad(lambda x: jnp.dot(rule.aggregate(x, state, f=f, key=KEY)[0], w)))(X)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


# --- hostile input --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROBUST + ["nnm+median", "bucketing+median", "nnm+bucketing+multikrum",
                                            "nnm+bucketing+trmean", "bucketing+krum"])
def test_nonfinite_rows_do_not_leak(name):
    n, d, f = 15, 6, 3
    stages = name.split("+")
    rule = A.chain(*[A.get(s) for s in stages]) if len(stages) > 1 else A.get(name)
    run = jax.jit(lambda x: rule.aggregate(x, rule.init(x), f=f, key=KEY)[0])
    for kind in ["nan", "inf", "-inf", "mixed", "partial"]:
        X = _problem(n, d, 40)
        bad = np.full((f, d), {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}.get(kind, np.nan))
        if kind == "mixed":
            bad[1], bad[2] = np.inf, -np.inf
        if kind == "partial":
            bad = np.tile(X[:1], (f, 1))
            bad[:, 2] = np.nan
            bad[1, 4] = np.inf
        X[[1, 6, 11]] = bad
        g = np.asarray(run(jnp.asarray(X)))
        assert np.all(np.isfinite(g)), (name, kind, g)
        if name in ("krum", "multikrum", "rfa", "aksel", "dnc", "bulyan"):
            # The bad rows get no weight: the result stays among the honest values.
            good = np.delete(X, [1, 6, 11], axis=0)
            assert np.all(g >= good.min(0) - 1e-6) and np.all(g <= good.max(0) + 1e-6), (name, kind)


def test_cclip_nonfinite_rows_contribute_zero():
    # A non-finite row is infinitely far: clipped to nothing, still counted in the mean's n.
    X = _problem(8, 5, 41) * 4
    X[[2, 5]] = np.nan
    X[5, 0] = np.inf
    rule = A.get("cclip", tau=2.0)
    v, _ = jax.jit(lambda x: rule.aggregate(x, rule.init(x), f=2))(jnp.asarray(X))
    good = np.delete(X, [2, 5], axis=0).astype(np.float64)
    want = ref.cclip(good, 2, np.zeros(5), tau=2.0) * (len(good) / len(X))
    np.testing.assert_allclose(np.asarray(v), want, rtol=1e-5, atol=1e-6)


def test_mean_may_be_nonfinite():
    X = _problem(6, 3, 0)
    X[0, 0] = np.nan
    assert np.isnan(_aggregate("mean", X, 1, True)[0])


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_name_and_hparam():
    with pytest.raises(ValueError, match="allowed: .*multikrum"):
        A.get("krumm")
    with pytest.raises(ValueError, match=r"allowed: iters=8, eps=1e-07"):
        A.get("rfa", iterations=3)
    with pytest.raises(ValueError, match="allowed: none"):
        A.get("mean", foo=1)


@pytest.mark.parametrize("name,kw", [("cclip", {"tau": 0.0}), ("cclip", {"iters": 0}), ("rfa", {"iters": 0}),
                                     ("rfa", {"eps": -1.0}), ("bucketing", {"s": 0}), ("dnc", {"b": 0}),
                                     ("dnc", {"c": -1.0}), ("median", {"midpoint": "yes"})])
def test_bad_hparam_values(name, kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        A.get(name, **kw)


@pytest.mark.parametrize("name,n,f,limit", [("krum", 10, 4, 3), ("multikrum", 10, 4, 3), ("trmean", 10, 5, 4),
                                            ("rbtm", 7, 4, 3), ("bulyan", 10, 2, 1)])
def test_concrete_f_above_limit_raises(name, n, f, limit):
    X = jnp.asarray(_problem(n, 3, 0))
    rule = A.get(name)
    with pytest.raises(ValueError, match=f"at most f={limit}"):
        rule.aggregate(X, rule.init(X), f=f, key=KEY)
    rule.aggregate(X, rule.init(X), f=limit, key=KEY)


def test_other_f_and_key_errors():
    X = jnp.asarray(_problem(6, 3, 0))
    with pytest.raises(ValueError, match="n-1=5"):
        A.get("dnc").aggregate(X, (), f=6, key=KEY)
    with pytest.raises(ValueError, match="key"):
        A.get("dnc").aggregate(X, (), f=1, key=None)
    with pytest.raises(ValueError, match="key"):
        A.get("bucketing").apply(X, (), f=1, key=None)
    with pytest.raises(ValueError, match="negative"):
        A.get("trmean").aggregate(X, (), f=-1)
    with pytest.raises(ValueError, match="nnm"):
        A.get("nnm").apply(X, (), f=6)


def test_names():
    # names() lists the rules only (what `strike-jax list` shows as defences); the pre-aggregators
    # are preaggregator_names(). Issue 11's names come after the earlier ones.
    assert A.names() == ("mean", "median", "trmean", "rbtm", "krum", "multikrum", "rfa", "aksel", "cclip", "dnc",
                         "bulyan", "meamed", "monna", "mda", "smea", "caf", "signguard", "clippedclustering",
                         "fltrust", "foolsgold", "gas")
    assert A.preaggregator_names() == ("nnm", "bucketing", "clipping", "arc", "uniformity")
    assert math.isclose(A.get("rfa").hparams["eps"], 1e-7)


def test_aksel_identical_rows_straddling_the_cut():
    # Issue 12: three identical rows sit at sorted score positions 3..5 of 9, the cut is position
    # 4, so the definition (SPEC §7: keep every row with s_i <= lower median of s) keeps all three.
    # Their scores must be bit-identical; a matrix-vector product rounded the last row of the
    # block differently on XLA:CPU and dropped one copy.
    rule = A.get("aksel")
    run = jax.jit(lambda x: rule.aggregate(x, (), f=0)[0])
    for seed in range(8):
        rng = np.random.default_rng(seed)
        m = rng.normal(size=1003)
        X = np.empty((9, 1003))
        X[[0, 3, 5]] = m + 0.1 * rng.normal(size=(3, 1003))   # nearest the median
        X[[1, 6, 8]] = m + rng.normal(size=1003)              # identical copies, at the cut
        X[[2, 4, 7]] = m + 5.0 * rng.normal(size=(3, 1003))   # far
        X = X.astype(np.float32)
        np.testing.assert_allclose(run(jnp.asarray(X)), ref.aksel(X.astype(np.float64), 0), rtol=2e-5, atol=2e-5,
                                   err_msg=f"seed={seed}")
        s = np.asarray(ops.sq_dists_to(jnp.asarray(X), ops.lower_median(jnp.asarray(X)), row_exact=True))
        assert s[1] == s[6] == s[8]


def test_shape_checks_at_the_boundary():
    with pytest.raises(AssertionError, match=r"median: the updates must be an \[n, d\] matrix"):
        A.get("median").aggregate(jnp.ones(5), (), f=0)
    with pytest.raises(AssertionError, match="nnm"):
        A.get("nnm").apply(jnp.ones((2, 3, 4)), (), f=0)
    rule = A.get("cclip")
    with pytest.raises(AssertionError, match="cclip: the state"):
        rule.aggregate(jnp.ones((4, 3)), jnp.zeros(2), f=0)


def test_f_is_required_everywhere():
    X = jnp.asarray(_problem(5, 3, 0))
    for name in A.names():
        rule = A.get(name, **({"num_clients": 5} if name == "foolsgold" else {}))
        with pytest.raises(ValueError, match=f"{name}: f .* is required"):
            rule.aggregate(X, rule.init(X), key=KEY)
    for name in A.preaggregator_names():
        with pytest.raises(ValueError, match="is required"):
            A.get(name).apply(X, (), key=KEY)


def test_init_takes_shapes():
    shape = jax.ShapeDtypeStruct((9, 6), jnp.float32)
    ch = A.chain(A.get("bucketing"), A.get("cclip"))
    state = ch.init(shape)
    assert state[1].shape == (6,)  # cclip's v, on the bucketed [5, 6] matrix
    X = jnp.asarray(_problem(9, 6, 1))
    g, _ = ch.aggregate(X, state, f=2, key=KEY)
    want, _ = ch.aggregate(X, ch.init(X), f=2, key=KEY)
    np.testing.assert_array_equal(g, want)
