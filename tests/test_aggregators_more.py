"""The rules of issue 11 against float64 references written from their papers
(tests/reference_more.py): Meamed, MoNNA, MDA, SMEA, CAF, SignGuard, ClippedClustering, FLTrust,
FoolsGold, Clipping, ARC. Plus state over rounds, the round inputs of FLTrust / FoolsGold (jit,
vmap, grad, non-finite rows; through a pipeline's RoundContext), vmap over injected
hyper-parameters, limits and errors.

The registry-driven tests of tests/test_aggregators.py (vmap over problems and over f, traced f,
grad, non-finite rows) also run every new rule that takes only `(updates, f, key)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_more as ref
from strike_jax import aggregators as A
from strike_jax import attacks, ops, stages

jax.config.update("jax_enable_x64", False)

KEY = jax.random.PRNGKey(7)


def _problem(n, d, seed, ties=False, byz_copies=0, shift=3.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if ties:
        X = np.round(X * 2) / 2
    if byz_copies:
        X[:byz_copies] = rng.normal(loc=shift, size=(1, d))
    return X.astype(np.float32)


_RUNS = {}


def _run(name, X, f, jit=True, **hp):
    """`aggregate` of a stateless rule, jitted once per (rule, hyper-parameters, shape), f traced."""
    key = (name, tuple(sorted(hp.items())), X.shape, jit)
    if key not in _RUNS:
        rule = A.get(name, **hp)
        fn = lambda x, f: rule.aggregate(x, (), f=f, key=KEY)[0]
        _RUNS[key] = jax.jit(fn) if jit else fn
    return np.asarray(_RUNS[key](jnp.asarray(X), f))


# --- stateless rules against the references ----------------------------------------------------

STATELESS = [
    ("meamed", ref.meamed, lambda n: (n - 1) // 2),
    ("monna", ref.monna, lambda n: (n - 1) // 2),
    ("mda", ref.mda, lambda n: (n - 1) // 2),
    ("smea", ref.smea, lambda n: (n - 1) // 2),
    ("caf", ref.caf, lambda n: (n - 1) // 2),
]


@pytest.mark.parametrize("name,reference,limit", STATELESS, ids=[s[0] for s in STATELESS])
@pytest.mark.parametrize("n,d,jit", [(7, 5, False), (10, 12, True)], ids=["eager", "jit"])
def test_rule_matches_reference(name, reference, limit, n, d, jit):
    cases = [(False, 0), (False, 2)] + ([(True, 0)] if name == "meamed" else [])
    for case, (ties, copies) in enumerate(cases):
        X = _problem(n, d, seed=n * 10 + d + case, ties=ties, byz_copies=copies)
        for f in sorted({0, 1, limit(n)}):
            got = _run(name, X, f, jit)
            want = reference(X.astype(np.float64), f)
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=f"{name} f={f} case={case}")


@pytest.mark.parametrize("method", ["radix", "sort"])
def test_meamed_other_sort_strategies(method):
    rule = A.get("meamed", backend=ops.Backend(sort=method))
    run = jax.jit(lambda x, f: rule.aggregate(x, (), f=f)[0])
    for ties in (False, True):
        X = _problem(11, 6, 3, ties=ties, byz_copies=2)
        for f in (0, 2, 5):
            np.testing.assert_allclose(run(jnp.asarray(X), f), ref.meamed(X.astype(np.float64), f),
                                       rtol=2e-5, atol=2e-5)


def test_monna_idx_and_untrusted_row():
    X = _problem(9, 4, 5, byz_copies=2)
    for idx in (0, 4, 8):
        got = np.asarray(A.get("monna", idx=idx).aggregate(jnp.asarray(X), (), f=2)[0])
        np.testing.assert_allclose(got, ref.monna(X.astype(np.float64), 2, idx), rtol=2e-5, atol=2e-5)
    # A non-finite trusted row: its neighbours are searched from the coordinate-wise median.
    Y = X.copy()
    Y[3] = np.nan
    got = np.asarray(A.get("monna", idx=3).aggregate(jnp.asarray(Y), (), f=2)[0])
    med = np.sort(Y, axis=0)[(9 - 1) // 2]  # the lower median, NaN sorted last
    order = sorted((i for i in range(9) if i != 3), key=lambda i: (np.sum((Y[i] - med) ** 2), i))
    np.testing.assert_allclose(got, Y[order[:7]].mean(0), rtol=2e-5, atol=2e-5)


def test_mda_and_smea_pick_the_honest_subset():
    # Two far copies and f = 2: both exact searches drop exactly them.
    X = _problem(9, 6, 11, byz_copies=2, shift=20.0)
    for name in ("mda", "smea"):
        np.testing.assert_allclose(_run(name, X, 2), X[2:].mean(0), rtol=1e-5, atol=1e-5)


def test_subset_limits_and_errors():
    assert A.get("mda").max_f(50) == 3 and A.get("mda").max_f(9) == 4
    assert A.get("mda", max_subsets=10).max_f(9) == 1
    X = jnp.asarray(_problem(9, 3, 0))
    with pytest.raises(ValueError, match=r"C\(9, 2\) = 36 exceeds max_subsets=10; its limit for n=9 is f=1"):
        A.get("mda", max_subsets=10).aggregate(X, (), f=2)
    with pytest.raises(ValueError, match="smea.*limit for n=9 is f=1"):
        A.get("smea", max_subsets=10).aggregate(X, (), f=3)
    with pytest.raises(ValueError, match="at most f=4"):
        A.get("mda").aggregate(X, (), f=5)
    # traced f beyond the combinatorial limit is clamped to it
    rule = A.get("mda", max_subsets=10)
    np.testing.assert_allclose(jax.jit(lambda x, f: rule.aggregate(x, (), f=f)[0])(X, 4),
                               rule.aggregate(X, (), f=1)[0], rtol=1e-6)


@pytest.mark.parametrize("name,n,f,limit", [("meamed", 8, 4, 3), ("monna", 7, 4, 3), ("caf", 10, 5, 4),
                                            ("arc", 5, 5, 4)])
def test_concrete_f_above_limit_raises(name, n, f, limit):
    X = jnp.asarray(_problem(n, 3, 0))
    rule = A.get(name)
    call = rule.apply if name == "arc" else rule.aggregate
    with pytest.raises(ValueError, match=f"at most f={limit}"):
        call(X, (), f=f)
    call(X, (), f=limit)


# --- SignGuard, ClippedClustering --------------------------------------------------------------


def _signguard_start(key, d, fraction=0.1):
    m = max(int(fraction * d), 1)
    return int(jax.random.randint(key, (), 0, d - m + 1))


def test_signguard_matches_reference():
    rule = A.get("signguard")
    run = jax.jit(lambda x, kk: rule.aggregate(x, (), f=2, key=kk)[0])
    n, d = 12, 40
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X = (rng.normal(size=(n, d)) + 0.3).astype(np.float32)
        X[: 2 + seed] = -3.0 * np.abs(X[: 2 + seed])  # sign-flipped, larger rows
        X[5, : d // 2] = 0.0  # a sparse row
        for k in range(2):
            key = jax.random.PRNGKey(seed * 10 + k)
            want = ref.signguard(X.astype(np.float64), _signguard_start(key, d))
            np.testing.assert_allclose(np.asarray(run(jnp.asarray(X), key)), want, rtol=2e-5, atol=2e-5)


def test_signguard_bounds_are_used_and_traceable():
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(9, 40)) + 0.3).astype(np.float32)
    X[0] *= 2.5  # inside [0.1, 3] x median, outside [0.1, 2]
    run = jax.jit(lambda x, up: A.get("signguard", upper=up).aggregate(x, (), f=0, key=KEY)[0])
    start = _signguard_start(KEY, 40)
    for up in (3.0, 2.0):
        np.testing.assert_allclose(run(jnp.asarray(X), up), ref.signguard(X.astype(np.float64), start, upper=up),
                                   rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="key"):
        A.get("signguard").aggregate(jnp.asarray(X), (), f=0)
    with pytest.raises(ValueError, match="fraction"):
        A.get("signguard", fraction=1.5)


def test_clippedclustering_matches_reference_over_rounds():
    rule = A.get("clippedclustering", capacity=64)
    step = jax.jit(rule.aggregate)
    rng = np.random.default_rng(4)
    state = rule.init(jnp.zeros((10, 20)))
    history = []
    for r in range(4):
        X = (rng.normal(size=(10, 20)) * (1 + r) + 0.5).astype(np.float32)
        X[:3] = -X[:3] * 4  # a cluster pointing the other way, with larger norms
        g, state = step(jnp.asarray(X), state, f=3)
        np.testing.assert_allclose(np.asarray(g), ref.clippedclustering(X.astype(np.float64), history),
                                   rtol=2e-5, atol=2e-5, err_msg=f"round {r}")
    assert int(state.count) == 40
    # The ring buffer keeps the last `capacity` norms.
    np.testing.assert_allclose(np.sort(np.asarray(state.norms)[:40]), np.sort(history), rtol=1e-5)


# --- FLTrust, FoolsGold (round inputs) -----------------------------------------------------------


def test_fltrust_matches_reference_jit_vmap_grad():
    rule = A.get("fltrust")
    X = _problem(10, 8, 5, byz_copies=3)
    X[:3] *= -1
    g0 = np.random.default_rng(1).normal(size=8).astype(np.float32) + X[5:].mean(0)
    run = jax.jit(lambda x, r: rule.aggregate(x, (), f=3, root_update=r)[0])
    np.testing.assert_allclose(run(jnp.asarray(X), jnp.asarray(g0)), ref.fltrust(X.astype(np.float64), g0),
                               rtol=2e-5, atol=2e-5)
    eager = rule.aggregate(jnp.asarray(X), (), f=3, root_update=g0)[0]
    np.testing.assert_allclose(eager, ref.fltrust(X.astype(np.float64), g0), rtol=2e-5, atol=2e-5)
    # vmap over problems and root updates
    Xs = np.stack([X, X[::-1].copy(), X * 2])
    R = np.stack([g0, -g0, g0 * 3])
    batched = jax.vmap(run)(jnp.asarray(Xs), jnp.asarray(R))
    for i in range(3):
        np.testing.assert_allclose(batched[i], ref.fltrust(Xs[i].astype(np.float64), R[i]), rtol=2e-5, atol=2e-5)
    # no positive trust: the zero update
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(np.abs(X)), -jnp.abs(jnp.asarray(g0)) - 1)),
                                  np.zeros(8))
    # grad in the updates and in the root update
    w = jnp.linspace(-1, 1, 8)
    gx, gr = jax.grad(lambda x, r: jnp.dot(run(x, r), w), argnums=(0, 1))(jnp.asarray(X), jnp.asarray(g0))
    assert np.all(np.isfinite(gx)) and np.any(gx != 0) and np.all(np.isfinite(gr))
    # non-finite rows get no trust
    Y = X.copy()
    Y[[0, 4]] = np.nan
    Y[7, 2] = np.inf
    got = np.asarray(run(jnp.asarray(Y), jnp.asarray(g0)))
    keep = [i for i in range(10) if i not in (0, 4, 7)]
    np.testing.assert_allclose(got, ref.fltrust(Y[keep].astype(np.float64), g0), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="root_update"):
        rule.aggregate(jnp.asarray(X), (), f=3)
    with pytest.raises(AssertionError, match=r"fltrust: ctx.root_update must be one \[d\] vector"):
        rule.aggregate(jnp.asarray(X), (), f=3, root_update=jnp.zeros(7))


def test_foolsgold_matches_reference_over_rounds():
    N, n, d = 12, 6, 10
    rule = A.get("foolsgold", num_clients=N)
    step = jax.jit(lambda x, s, c: rule.aggregate(x, s, f=0, clients=c))
    state = rule.init(jnp.zeros((n, d)))
    assert state.history.shape == (N, d)
    rng = np.random.default_rng(6)
    history = {}
    sybil = rng.normal(size=d)
    for r in range(4):
        clients = rng.choice(N, n, replace=False)
        X = rng.normal(size=(n, d)) + 0.2
        for i, c in enumerate(clients):
            if c < 3:  # sybils: the same direction every round
                X[i] = sybil + 0.05 * rng.normal(size=d)
        X = X.astype(np.float32)
        g, state = step(jnp.asarray(X), state, jnp.asarray(clients))
        want = ref.foolsgold_round(history, X.astype(np.float64), list(clients))
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-5, err_msg=f"round {r}")
        for c, h in history.items():
            np.testing.assert_allclose(np.asarray(state.history[c]), h, rtol=1e-5, atol=1e-5)


def test_foolsgold_sketch_vmap_grad_nonfinite_and_errors():
    N, n, d = 8, 5, 30
    rule = A.get("foolsgold", num_clients=N, sketch=12, seed=3)
    X = _problem(n, d, 8) + 0.5
    state = rule.init(jnp.asarray(X))
    assert state.history.shape == (N, 12) and len(np.unique(np.asarray(state.coords))) == 12
    clients = jnp.asarray([1, 5, 0, 7, 2])
    g, s1 = jax.jit(lambda x, s, c: rule.aggregate(x, s, f=0, clients=c))(jnp.asarray(X), state, clients)
    # the sketch keeps the history of the sampled coordinates only
    np.testing.assert_allclose(np.asarray(s1.history)[np.asarray(clients)], X[:, np.asarray(state.coords)], rtol=1e-6)
    w = ref.foolsgold_weights([X[i, np.asarray(state.coords)].astype(np.float64) for i in range(n)])
    np.testing.assert_allclose(np.asarray(g), sum(w[i] * X[i] for i in range(n)) / n, rtol=1e-4, atol=1e-5)
    # vmap over rounds' matrices with one state
    Xs = jnp.asarray(np.stack([X, X * 2, -X]))
    outs = jax.vmap(lambda x: rule.aggregate(x, state, f=0, clients=clients)[0])(Xs)
    for i in range(3):
        np.testing.assert_allclose(outs[i], rule.aggregate(Xs[i], state, f=0, clients=clients)[0], rtol=1e-5,
                                   atol=1e-6)
    gx = jax.grad(lambda x: rule.aggregate(x, state, f=0, clients=clients)[0].sum())(jnp.asarray(X))
    assert np.all(np.isfinite(gx)) and np.any(gx != 0)
    # a non-finite update: weight 0, not added to the history
    Y = X.copy()
    Y[2] = np.nan
    gy, sy = rule.aggregate(jnp.asarray(Y), state, f=1, clients=clients)
    assert np.all(np.isfinite(np.asarray(gy))) and np.all(np.isfinite(np.asarray(sy.history)))
    with pytest.raises(ValueError, match="num_clients"):
        A.get("foolsgold")
    with pytest.raises(ValueError, match="clients"):
        rule.aggregate(jnp.asarray(X), state, f=0)
    with pytest.raises(ValueError, match=r"\[0, num_clients=8\)"):
        rule.aggregate(jnp.asarray(X), state, f=0, clients=jnp.asarray([1, 2, 3, 4, 8]))
    with pytest.raises(ValueError, match="distinct"):
        rule.aggregate(jnp.asarray(X), state, f=0, clients=jnp.asarray([1, 1, 3, 4, 5]))


# --- Clipping, ARC ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clipping", "arc"])
def test_clipping_preaggregators(name):
    rule = A.get(name)
    run = jax.jit(lambda x, f: rule.apply(x, (), f=f))
    X = _problem(11, 7, 9, byz_copies=3, shift=4.0)
    X[5] *= 0.1
    for f in (0, 1, 3, 5):
        out, f_out, _ = run(jnp.asarray(X), f)
        want = ref.clipping(X.astype(np.float64), 2.0) if name == "clipping" else ref.arc(X.astype(np.float64), f)
        np.testing.assert_allclose(np.asarray(out), want, rtol=2e-5, atol=2e-5)
        assert int(f_out) == f
    # vmap over f, grad, non-finite rows pass through unchanged, composes with a rule
    outs = jax.vmap(lambda f: run(jnp.asarray(X), f)[0])(jnp.arange(4))
    for f in range(4):
        np.testing.assert_allclose(outs[f], run(jnp.asarray(X), f)[0], rtol=1e-6)
    g = jax.grad(lambda x: run(x, 2)[0].sum())(jnp.asarray(X))
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    Y = X.copy()
    Y[1] = np.nan
    Y[2, 0] = np.inf
    out, _, _ = run(jnp.asarray(Y), 3)
    np.testing.assert_array_equal(np.isnan(np.asarray(out[1])), True)
    assert np.isinf(np.asarray(out[2, 0])) and np.all(np.isfinite(np.asarray(out[3:])))
    ch = A.chain(rule, A.get("median"))
    assert ch.name == f"{name}+median"
    ch.aggregate(jnp.asarray(X), ch.init(jnp.asarray(X)), f=2)


def test_clipping_threshold_traceable_and_checked():
    X = _problem(6, 4, 1) * 3
    outs = jax.vmap(lambda c: A.get("clipping", c=c).apply(jnp.asarray(X), (), f=0)[0])(jnp.asarray([1.0, 3.0]))
    for i, c in enumerate((1.0, 3.0)):
        np.testing.assert_allclose(outs[i], ref.clipping(X.astype(np.float64), c), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="c=-1"):
        A.get("clipping", c=-1.0)


def test_bad_hparams_and_names():
    with pytest.raises(ValueError, match="idx"):
        A.get("monna", idx=-1)
    with pytest.raises(ValueError, match="idx=9 must be < n=9"):
        A.get("monna", idx=9).aggregate(jnp.asarray(_problem(9, 3, 0)), (), f=1)
    with pytest.raises(ValueError, match="max_subsets"):
        A.get("mda", max_subsets=0)
    with pytest.raises(ValueError, match="max_tau"):
        A.get("clippedclustering", max_tau=0.0)
    with pytest.raises(ValueError, match=r"allowed: lower=0.1, upper=3.0, fraction=0.1"):
        A.get("signguard", bandwidth=1.0)
    assert set(A.rule_names()) >= {"meamed", "monna", "mda", "smea", "caf", "signguard", "clippedclustering",
                                   "fltrust", "foolsgold"}
    assert "clipping" not in A.rule_names() and "arc" not in A.rule_names()


def test_smea_screen_is_exact(monkeypatch):
    # C(14, 4) = 1001 subsets with a screen of 16 (robust_means.smea_choice): certified on random
    # rows; with twelve identical rows many subsets tie exactly, the certificate fails and every
    # subset is solved (the fallback). Both must give the exact answer.
    from strike_jax.aggregators import robust_means

    monkeypatch.setattr(robust_means, "SMEA_SCREEN", 16)
    rule = A.get("smea")  # a fresh rule: the screen size is read when it compiles
    run = jax.jit(lambda x, f: rule.aggregate(x, (), f=f)[0])
    X = _problem(14, 6, 21, byz_copies=3)
    Y = X.copy()
    Y[2:] = Y[5]  # twelve identical rows: C(12, 2) = 66 subsets tie at lambda = 0
    Y[:2] += 5.0
    for P in (X, Y):
        np.testing.assert_allclose(run(jnp.asarray(P), 4), ref.smea(P.astype(np.float64), 4), rtol=2e-5, atol=2e-5)


# --- the stage protocol: injected hyper-parameters, pipelines, round inputs ---------------------


def _rows_of_many_norms(n, d, seed):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) + 0.3) * np.exp(rng.normal(size=(n, 1)))
    return jnp.asarray(X.astype(np.float32))


@pytest.mark.parametrize("kind,name,pname,values,fixed", [
    ("preaggregator", "clipping", "c", (0.5, 2.0, 8.0), {}),
    ("rule", "signguard", "lower", (0.1, 0.8, 0.95), {}),
    ("rule", "clippedclustering", "max_tau", (0.5, 2.0, 1e5), {}),
    ("attack", "gaussian", "sigma", (0.0, 1.0, 3.0), {}),
    ("attack", "fang", "b", (1.5, 2.0, 4.0), {}),
    ("attack", "agr_tailored", "lam0", (1.0, 5.0, 10.0), {"rule": "trmean"}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_vmap_over_injected_states_equals_separate_builds(kind, name, pname, values, fixed):
    # Three runs differing only in a traceable hyper-parameter share one compiled program: their
    # values live in the stacked states (stages.inject_hyperparams).
    n, d = 9, 24
    U = _rows_of_many_norms(n, d, 2)
    mask = jnp.asarray(np.arange(n) < 2)
    shape = jax.ShapeDtypeStruct(U.shape, U.dtype)
    st = stages.get(kind, name, inject=True, **{pname: values[0]}, **fixed)
    states = jax.tree.map(lambda *xs: jnp.stack(xs),
                          *[stages.get(kind, name, inject=True, **{pname: v}, **fixed).init(shape) for v in values])
    np.testing.assert_allclose(np.asarray(states.hparams[pname]), values, rtol=1e-6)
    ctx = stages.RoundContext(mask, 2, KEY)
    out, new_states = jax.jit(jax.vmap(lambda s: st.update(U, s, ctx)[:2]))(states)
    outs = []
    for i, v in enumerate(values):
        one = stages.get(kind, name, **{pname: v}, **fixed)
        want, want_state = jax.jit(lambda s: one.update(U, s, ctx)[:2])(one.init(shape))
        np.testing.assert_allclose(np.asarray(out[i]), np.asarray(want), rtol=1e-5, atol=1e-5, err_msg=f"{pname}={v}")
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], new_states.inner)), jax.tree.leaves(want_state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        outs.append(np.asarray(want))
    assert not np.allclose(outs[0], outs[1]) or not np.allclose(outs[1], outs[2]), "the value is not used"


def test_round_inputs_through_the_pipeline():
    # FLTrust reads ctx.root_update and FoolsGold ctx.clients; chain and server_pipeline(inject=True)
    # hand them to the rule after the attack and the pre-aggregators.
    n, d, f = 8, 12, 2
    U = _rows_of_many_norms(n, d, 3)
    mask = jnp.asarray(np.arange(n) < f)
    g0 = jnp.asarray(np.asarray(U)[f:].mean(0) + 0.1)
    pipe = stages.server_pipeline("fltrust", attack="lie", preaggregation=("clipping",), inject=True)
    assert pipe.info["needs_root_update"] and not pipe.info["needs_clients"] and not pipe.info["stateful"]
    g, _, _ = jax.jit(lambda u, s, r: pipe.update(u, s, stages.RoundContext(mask, f, KEY, root_update=r)))(
        U, pipe.init(U), g0)
    sent, _ = attacks.get("lie").apply(U, mask, (), key=jax.random.fold_in(KEY, 0))
    clipped = ref.clipping(np.asarray(sent, np.float64), 2.0)
    np.testing.assert_allclose(np.asarray(g), ref.fltrust(clipped, np.asarray(g0, np.float64)), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="fltrust needs the server's update"):
        pipe.update(U, pipe.init(U), stages.RoundContext(mask, f, KEY))

    N = 20
    pipe = stages.server_pipeline("foolsgold", attack="signflip", defence_params={"num_clients": N})
    assert pipe.info["needs_clients"] and pipe.info["stateful"] and not pipe.info["needs_root_update"]
    step = jax.jit(lambda u, s, c: pipe.update(u, s, stages.RoundContext(mask, f, KEY, clients=c))[:2])
    state = pipe.init(jax.ShapeDtypeStruct(U.shape, U.dtype))
    rule = A.get("foolsgold", num_clients=N)
    rstate = rule.init(U)
    rng = np.random.default_rng(5)
    for r in range(3):
        X = _rows_of_many_norms(n, d, 10 + r)
        clients = jnp.asarray(rng.choice(N, n, replace=False))
        g, state = step(X, state, clients)
        sent, _ = attacks.get("signflip").apply(X, mask, ())
        want, rstate = rule.aggregate(sent, rstate, f=f, clients=clients)
        np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-6, err_msg=f"round {r}")
        np.testing.assert_allclose(np.asarray(state[1].history), np.asarray(rstate.history), rtol=1e-6, atol=1e-6)
    # After bucketing the rows are mixtures of clients: fewer rows than ids.
    mixed = A.chain(A.get("bucketing"), rule)
    with pytest.raises(AssertionError, match=r"foolsgold: ctx.clients must be \[n\] client ids with n=4"):
        mixed.aggregate(U, mixed.init(U), f=f, key=KEY, clients=jnp.arange(n))


@pytest.mark.parametrize("name,rows", [("mda", 1000), ("smea", 64), ("caf", 1000), ("clippedclustering", 2000)])
def test_rules_above_their_row_limit_are_refused_before_any_work(name, rows):
    """Rules cubic in n or combinatorial refuse sizes they cannot finish, in one line, both from
    `max_f` (what `simulation.check_config` asks before data loads) and from the rule itself: before
    enumerating a subset or compiling anything (counted, not timed)."""
    import itertools

    from jax_events import counting
    from strike_jax.config import Config
    from strike_jax.simulation import check_config

    def no_enumeration(*a, **k):
        raise AssertionError("enumerated subsets before refusing")

    rule = A.get(name)
    assert rule.max_f(rows) is not None or name == "clippedclustering"
    U = jnp.zeros((rows + 1, 3))
    state, key = rule.init(U), jax.random.PRNGKey(0)
    cfg = Config(num_clients=rows + 1, clients_per_round=rows + 1, attack="none", defence=name)
    with counting() as seen, pytest.MonkeyPatch.context() as mp:
        mp.setattr(itertools, "combinations", no_enumeration)
        with pytest.raises(ValueError, match=rf"^{name}: n={rows + 1} rows is not allowed; allowed: n <= {rows} "):
            rule.max_f(rows + 1)
        with pytest.raises(ValueError, match=rf"n={rows + 1} rows is not allowed"):
            rule.aggregate(U, state, f=0, key=key)
        with pytest.raises(ValueError, match=rf"n={rows + 1} rows is not allowed"):
            check_config(cfg)
    assert seen == {"traces": [], "compiles": []}
