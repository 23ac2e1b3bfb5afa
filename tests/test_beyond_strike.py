"""Issue 23's stages against float64 loop references (tests/reference_more.py): GAS (gradient
splitting over Krum / Bulyan), the uniformity pre-aggregator and the diverse STRIKE; plus jit,
vmap (over problems, f, masks and the traceable hyper-parameters), traced f, non-finite rows,
chains with an attack in front, and errors.

The registry-driven tests of tests/test_aggregators.py (vmap over f, traced f clamped, grad,
non-finite rows) and tests/test_gradients.py (finite differences) also run `gas`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_more as ref

from strike_jax import aggregators as A
from strike_jax import attacks, stages
from strike_jax.stages import RoundContext

jax.config.update("jax_enable_x64", False)

KEY = jax.random.PRNGKey(11)


def _problem(n, d, seed, byz_copies=0, jitter=0.0, shift=2.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if byz_copies:
        X[:byz_copies] = rng.normal(loc=shift, size=(1, d)) + jitter * rng.normal(size=(byz_copies, d))
    return X.astype(np.float32)


def _skewed(seed, n, d):
    """Honest-looking rows with a skewed (exponential) component (as tests/test_strike.py)."""
    rng = np.random.default_rng(seed)
    base, direction, other = rng.normal(size=(3, d))
    rows = (base + rng.exponential(size=(n, 1)) * direction + 0.5 * rng.normal(size=(n, 1)) * other
            + 0.3 * rng.normal(size=(n, d)))
    return rows.astype(np.float32)


# ------------------------------------------------------------------------------------------ GAS

_GAS = {}


def _gas(X, f, p, base):
    k = (p, base, X.shape)
    if k not in _GAS:
        rule = A.get("gas", p=p, base=base)
        _GAS[k] = jax.jit(lambda x, f: rule.aggregate(x, (), f=f, key=KEY)[0])
    return np.asarray(_GAS[k](jnp.asarray(X), f))


@pytest.mark.parametrize("base,limit", [("krum", lambda n: (n - 3) // 2), ("bulyan", lambda n: (n - 3) // 4)])
@pytest.mark.parametrize("n,d,p", [(11, 12, 3), (11, 10, 4), (13, 7, 50)], ids=["even", "short-last", "p>d"])
def test_gas_matches_reference(base, limit, n, d, p):
    perm = np.asarray(jax.random.permutation(KEY, d))
    for case, copies in enumerate((0, 2)):
        X = _problem(n, d, seed=n + d + p + case, byz_copies=copies)
        for f in sorted({0, 1, limit(n)}):
            want = ref.gas(X, f, perm, p, base)
            np.testing.assert_allclose(_gas(X, f, p, base), want, rtol=2e-5, atol=2e-5,
                                       err_msg=f"gas base={base} f={f} case={case}")


def test_gas_groups_follow_torch_chunk():
    from strike_jax.aggregators.gas import gas_groups

    assert gas_groups(12, 3) == (4, 3)
    assert gas_groups(10, 4) == (3, 4)  # 3 + 3 + 3 + 1
    assert gas_groups(10, 6) == (2, 5)  # fewer groups than asked, as torch.chunk
    assert gas_groups(7, 50) == (1, 7)


def test_gas_drops_a_shifted_minority_and_other_keys_change_the_split():
    from strike_jax.aggregators.gas import gas_scores

    # Two identical far rows and f = 2: the groups' base aggregates sit among the honest rows.
    X = _problem(11, 12, 5, byz_copies=2, shift=6.0)
    for base in ("krum", "bulyan"):
        np.testing.assert_allclose(_gas(X, 2, 3, base), X[2:].mean(0), rtol=1e-5, atol=1e-5)
    scores = jax.jit(jax.vmap(lambda k: gas_scores(jnp.asarray(X), 2, k, p=3, base="krum")))(
        jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)]))
    assert not np.allclose(scores[0], scores[1])
    assert A.get("gas").max_f(12) == 4 and A.get("gas", base="bulyan").max_f(12) == 2


def test_gas_bulyan_traced_f_and_nonfinite_rows():
    # (tests/test_aggregators.py runs the default GAS through vmap over problems and f, grad and
    # non-finite rows; here the Bulyan base, with the compilation of test_gas_matches_reference.)
    n, d = 11, 12
    X = _problem(n, d, 30, byz_copies=2)
    over_f = jax.jit(jax.vmap(lambda f: A.get("gas", p=3, base="bulyan").aggregate(
        jnp.asarray(X), (), f=f, key=KEY)[0]))(jnp.arange(3))
    for f in range(3):
        np.testing.assert_allclose(over_f[f], _gas(X, f, 3, "bulyan"), rtol=1e-5, atol=1e-6)
    # traced f beyond the base rule's limit is clamped to it; a concrete one raises
    np.testing.assert_allclose(_gas(X, 9, 3, "bulyan"), _gas(X, 2, 3, "bulyan"), rtol=1e-6)
    with pytest.raises(ValueError, match="at most f=2"):
        A.get("gas", p=3, base="bulyan").aggregate(jnp.asarray(X), (), f=3, key=KEY)
    # NaN / Inf rows, also non-finite in one coordinate only: never averaged
    X = _problem(n, d, 40)
    X[1] = np.nan
    X[6, 3] = np.inf
    g = _gas(X, 2, 3, "bulyan")
    good = np.delete(X, [1, 6], axis=0)
    assert np.all(np.isfinite(g))
    assert np.all(g >= good.min(0) - 1e-6) and np.all(g <= good.max(0) + 1e-6)


def test_gas_errors():
    X = jnp.asarray(_problem(9, 4, 0))
    with pytest.raises(ValueError, match="key"):
        A.get("gas").aggregate(X, (), f=1, key=None)
    with pytest.raises(ValueError, match=r"base='median' is not allowed; allowed: one of 'krum', 'bulyan'"):
        A.get("gas", base="median")
    with pytest.raises(ValueError, match=r"p=0 is not allowed"):
        A.get("gas", p=0)
    with pytest.raises(ValueError, match="p is static"):
        jax.jit(lambda p: A.get("gas", p=p))(3)


# ----------------------------------------------------------------------------------- uniformity


@jax.jit
def _uniform_jit(x, f, tau):
    return A.get("uniformity", tau=tau).apply(x, (), f=f)[:2]


def _uniform(X, f, tau=0.1):
    out, f2 = _uniform_jit(jnp.asarray(X), f, tau)
    return np.asarray(out), f2


@pytest.mark.parametrize("copies,jitter", [(0, 0.0), (3, 0.0), (3, 1e-3), (5, 1e-3)],
                         ids=["none", "identical", "near-identical", "many"])
def test_uniformity_matches_reference(copies, jitter):
    n, d = 13, 8
    X = _problem(n, d, 50 + copies, byz_copies=copies, jitter=jitter)
    for f in sorted({0, 1, copies, (n - 1) // 2}):
        want, flagged = ref.uniformity(X, f)
        got, f2 = _uniform(X, f)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=f"f={f}")
        assert int(f2) == f
        if f >= copies:
            assert sorted(flagged) == list(range(copies))  # exactly the near-twins, never an honest row


def test_uniformity_alone_is_the_mean_of_the_kept_rows_and_chains():
    n, d, f = 13, 8, 4
    X = _problem(n, d, 60, byz_copies=4)
    rule = A.chain(A.get("uniformity"), A.get("mean"))
    g = jax.jit(lambda x, f: rule.aggregate(x, rule.init(x), f=f)[0])(jnp.asarray(X), f)
    np.testing.assert_allclose(g, X[4:].mean(0), rtol=1e-5, atol=1e-6)
    # in front of Median / DnC: the rule sees the reference's matrix
    want, _ = ref.uniformity(X, f)
    med = A.chain(A.get("uniformity"), A.get("median")).aggregate(jnp.asarray(X), ((), ()), f=f, key=KEY)[0]
    np.testing.assert_allclose(med, A.get("median").aggregate(jnp.asarray(want, jnp.float32), (), f=f)[0],
                               rtol=1e-5, atol=1e-6)
    dnc = A.chain(A.get("uniformity"), A.get("dnc"))
    assert dnc.max_f(13) == 6 and np.all(np.isfinite(dnc.aggregate(jnp.asarray(X), dnc.init(X), f=f, key=KEY)[0]))


def test_uniformity_traced_f_tau_and_vmap():
    n, d = 13, 8
    pre = A.get("uniformity")
    X = jnp.asarray(_problem(n, d, 70, byz_copies=3))
    fn = jax.jit(lambda x, f: pre.apply(x, (), f=f)[0])
    over_f = jax.jit(jax.vmap(lambda f: pre.apply(X, (), f=f)[0]))(jnp.arange(7))
    for f in range(7):
        np.testing.assert_allclose(over_f[f], fn(X, f), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(over_f[f], ref.uniformity(np.asarray(X), f)[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(fn(X, 20), fn(X, 6), rtol=1e-6)  # traced f clamped to (n-1)//2
    with pytest.raises(ValueError, match="at most f=6"):
        pre.apply(X, (), f=7)
    # tau traced (injected): a huge tau flags the f closest rows whatever they are
    inj = stages.get("preaggregator", "uniformity", inject=True)
    states = jax.vmap(lambda t: inj.init(X)._replace(hparams={"tau": t}))(jnp.asarray([0.1, 100.0]))
    outs = jax.vmap(lambda s: inj.update(X, s, RoundContext(None, 3, None))[0])(states)
    np.testing.assert_allclose(outs[0], ref.uniformity(np.asarray(X), 3, 0.1)[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(outs[1], ref.uniformity(np.asarray(X), 3, 100.0)[0], rtol=2e-5, atol=2e-5)


def test_uniformity_nonfinite_rows_are_replaced_first():
    n, d, f = 13, 8, 3
    X = _problem(n, d, 80)
    X[[2, 9]] = np.nan
    X[9, 0] = np.inf
    out, _ = _uniform(X, f)
    assert np.all(np.isfinite(out))
    good = [i for i in range(n) if i not in (2, 9)]
    np.testing.assert_allclose(out[2], X[good].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[good], X[good])
    for name in ("median", "dnc", "mean"):
        rule = A.chain(A.get("uniformity"), A.get(name))
        g = jax.jit(lambda x, r=rule: r.aggregate(x, r.init(x), f=f, key=KEY)[0])(jnp.asarray(X))
        assert np.all(np.isfinite(g)), name


def test_attack_uniformity_rule_chain_neutralises_identical_rows():
    # chain(attack, uniformity, rule): STRIKE's f identical rows are replaced by the honest mean
    n, d = 12, 20
    U = jnp.asarray(_skewed(3, n, d))
    mask = jnp.asarray(np.arange(n) < 3)
    pipe = stages.chain(stages.get("attack", "strike"), stages.get("preaggregator", "uniformity"),
                        stages.get("rule", "mean"))
    g, _, _ = jax.jit(lambda u, m: pipe.update(u, pipe.init(u), RoundContext(m, m.sum(), KEY)))(U, mask)
    np.testing.assert_allclose(g, np.asarray(U)[3:].mean(0), rtol=1e-5, atol=1e-5)


def test_uniformity_grad_is_finite():
    X = jnp.asarray(_problem(13, 8, 90, byz_copies=2))
    rule = A.chain(A.get("uniformity"), A.get("median"))
    w = jnp.linspace(-1.0, 1.0, 8)
    g = jax.jit(jax.grad(lambda x: jnp.dot(rule.aggregate(x, ((), ()), f=2)[0], w)))(X)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


# ---------------------------------------------------------------------------------- diverse STRIKE


@jax.jit
def _diverse_jit(u, m, nu, spread):
    return attacks.get("strike_diverse", nu=nu, spread=spread).apply(u, m, ())[0]


def _diverse(U, m, nu=1.0, spread=0.5):
    """One compilation per shape: `nu`, `spread` and the mask are traced."""
    return np.asarray(_diverse_jit(jnp.asarray(U), jnp.asarray(m), nu, spread))


DIVERSE_CASES = [(10, [1, 4, 7]), (10, [0, 1]), (11, [3, 5, 9, 10]), (12, [0, 2, 4, 6])]  # last: f > |S|


@pytest.mark.parametrize("n,byz", DIVERSE_CASES)
@pytest.mark.parametrize("nu,spread", [(1.0, 0.5), (0.5, 1.0), (1.5, 0.25)])
def test_strike_diverse_matches_reference(n, byz, nu, spread):
    U = _skewed(n + len(byz), n, 33)
    m = np.zeros(n, bool)
    m[byz] = True
    got = _diverse(U, m, nu, spread)
    want, _, _ = ref.strike_diverse(U, m, nu, spread)
    np.testing.assert_array_equal(got[~m], U[~m])  # honest rows bit-exact
    for r, v in want.items():
        np.testing.assert_allclose(got[r], v, rtol=1e-4, atol=1e-4, err_msg=f"row {r}")


@pytest.mark.parametrize("n,byz", DIVERSE_CASES)
def test_strike_diverse_rows_are_distinct_and_satisfy_the_constraint(n, byz):
    U = _skewed(7 * n, n, 33)
    m = np.zeros(n, bool)
    m[byz] = True
    for nu, spread in ((1.0, 0.5), (1.0, 1.0), (0.7, 0.1)):
        got = _diverse(U, m, nu, spread).astype(np.float64)
        _, S, D = ref.strike_diverse(U, m, nu, spread)
        rows = got[m]
        for a in range(len(rows)):
            far = max(np.linalg.norm(rows[a] - U[i].astype(np.float64)) for i in S)
            assert far <= D * (1 + 1e-4) + 1e-5, (nu, spread, a, far, D)
            for b in range(a):
                assert np.linalg.norm(rows[a] - rows[b]) > 1e-3 * D, (nu, spread, a, b)


def test_strike_diverse_spread_zero_is_strike_and_fallback():
    n = 10
    U = jnp.asarray(_skewed(5, n, 33))
    for byz in ([1, 4, 7], list(range(1, 10)), list(range(6))):  # h > f, h == 1, h <= f
        m = jnp.asarray(np.isin(np.arange(n), byz))
        want = attacks.get("strike").apply(U, m, ())[0]
        np.testing.assert_allclose(_diverse(U, m, 1.0, 0.0), want, rtol=1e-6, atol=1e-6)
        if len(byz) >= n - len(byz):  # the fallback: STRIKE's vector whatever the spread
            np.testing.assert_allclose(_diverse(U, m, 1.0, 0.8), want, rtol=1e-6, atol=1e-6)


def test_strike_diverse_vmap_over_masks_nu_and_spread_and_grad():
    n = 10
    U = jnp.asarray(_skewed(6, n, 33))
    masks = jnp.asarray(np.stack([np.isin(np.arange(n), b) for b in ([0, 1], [1, 4, 7], [9], [0, 2, 4, 6])]))
    a = attacks.get("strike_diverse")
    batched = jax.jit(jax.vmap(lambda m: a.apply(U, m, ())[0]))(masks)
    for k in range(len(masks)):
        np.testing.assert_allclose(batched[k], _diverse(U, masks[k]), rtol=1e-5, atol=1e-5)
    hp = jnp.asarray([[0.5, 0.0], [1.0, 0.5], [2.0, 1.0]])
    over = jax.jit(jax.vmap(
        lambda h: attacks.get("strike_diverse", nu=h[0], spread=h[1]).apply(U, masks[1], ())[0]))(hp)
    for k, (nu, spread) in enumerate(np.asarray(hp)):
        np.testing.assert_allclose(over[k], _diverse(U, masks[1], float(nu), float(spread)), rtol=1e-5, atol=1e-5)
    g = jax.jit(jax.grad(lambda x: a.apply(x, masks[1], ())[0].sum()))(U)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_strike_diverse_evades_uniformity_where_strike_does_not():
    n, d = 12, 33
    U = jnp.asarray(_skewed(9, n, d))
    mask = jnp.asarray(np.arange(n) < 3)
    pre = A.get("uniformity")
    for name, caught in (("strike", True), ("strike_diverse", False)):
        crafted = attacks.get(name).apply(U, mask, ())[0]
        out = np.asarray(pre.apply(crafted, (), f=3)[0])
        assert np.array_equal(out[:3], np.asarray(crafted)[:3]) != caught, name


def test_strike_diverse_errors():
    with pytest.raises(ValueError, match=r"spread=1.5 is not allowed; allowed: a finite real number >= 0 and <= 1"):
        attacks.get("strike_diverse", spread=1.5)
    with pytest.raises(ValueError, match=r"nu=0.0 is not allowed"):
        attacks.get("strike_diverse", nu=0.0)
    assert attacks.hparam_names("strike_diverse") == ("nu", "spread")


# ------------------------------------------------------------------------- the study's bookkeeping


def test_beyond_strike_configs_and_cells():
    """experiments/beyond_strike.py: the grid it runs and how a cell is chosen (no run)."""
    import math

    from experiments import beyond_strike as bs
    from strike_jax.config import preset

    base = preset("digits")
    labelled = bs.configs_for(base, ("strike_diverse", "lie"), ("gas_bulyan", "median"), (0, 1), (0.5, 2.0),
                              spread=0.3, gas_p=7, tau=0.2)
    assert len(labelled) == 2 * (1 + 2 + 1) * 2
    by = {(d, c.attack, c.attack_params.get("nu"), c.seed): c for d, c in labelled}
    c = by[("gas_bulyan", "strike_diverse", 2.0, 1)]
    assert c.defence == "gas" and dict(c.defence_params) == {"base": "bulyan", "p": 7}
    assert dict(c.attack_params) == {"nu": 2.0, "spread": 0.3} and c.preaggregation == ()
    assert by[("median", "none", None, 0)].attack_params == {}
    # a nu attack's cell: the lowest mean over nu, with that nu and every nu's cell
    results = [{"best_accuracy": 0.5 if c.attack_params.get("nu") == 2.0 else 0.8} for _, c in labelled]
    got = bs.cells_of(labelled, results)
    assert math.isclose(got["strike_diverse"]["median"]["mean"], 0.5)
    cell = got["strike_diverse"]["median"]
    assert cell["nu"] == 2.0 and set(cell["per_nu"]) == {"0.5", "2"}
    assert "nu" not in got["lie"]["gas_bulyan"]
    text = bs.findings(got, ("strike_diverse", "lie"), ("gas_bulyan", "median"))
    assert "GAS (Bulyan): 80.0% without attack; the strongest attack is STRIKE (diverse) (50.0%" in text
