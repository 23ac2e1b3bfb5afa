"""ByzFL 0.0.11's conventions as options of our rules and attacks (issue 22, item 3), each against
ByzFL's formula in a float64 loop (tests/reference_more.py), under jit with a traced `f`, and vmap.
Our conventions stay the defaults."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_more as ref

from strike_jax import aggregators as A
from strike_jax import attacks, registry
from strike_jax.stages import RoundContext

KEY = jax.random.PRNGKey(11)


def _rows(n, d, seed, byz=0, shift=4.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.exponential(size=(n, 1))
    if byz:
        X[:byz] = rng.normal(loc=shift, size=(1, d))
    return X.astype(np.float32)


def _agg(name, **hp):
    rule = A.get(name, **hp)
    return jax.jit(lambda x, f: rule.aggregate(x, (), f=f, key=KEY)[0])


# ------------------------------------------------------------------------------------ Krum


@pytest.mark.parametrize("name,reference", [("multikrum", ref.byzfl_multikrum), ("krum", ref.byzfl_krum)])
@pytest.mark.parametrize("n,d", [(7, 5), (12, 9)])
def test_krum_byzfl_neighbours(name, reference, n, d):
    fn = _agg(name, neighbours="n-f-1")
    for case in range(3):
        X = _rows(n, d, seed=100 * n + case, byz=case)
        for f in range((n - 1) // 2 + 1):  # ByzFL accepts every f with 2f < n
            np.testing.assert_allclose(np.asarray(fn(jnp.asarray(X), f)), reference(X.astype(np.float64), f),
                                       rtol=2e-5, atol=2e-5, err_msg=f"{name} n={n} f={f} case={case}")


def test_krum_neighbours_differ_and_limits():
    # A case where the two conventions select differently: n = 6, f = 1 scores over 3 vs 4 neighbours.
    X = np.array([[1.0], [-3.0], [-7.0], [-7.0], [3.0], [5.0]], np.float32)  # no near-ties
    ours = np.asarray(A.get("krum").aggregate(jnp.asarray(X), (), f=1)[0])
    byz = np.asarray(A.get("krum", neighbours="n-f-1").aggregate(jnp.asarray(X), (), f=1)[0])
    np.testing.assert_allclose(byz, ref.byzfl_krum(X.astype(np.float64), 1))
    assert not np.allclose(ours, byz)
    # Limits: ours (n-3)//2, ByzFL's (n-1)//2.
    X = _rows(7, 3, 0)
    A.get("multikrum", neighbours="n-f-1").aggregate(jnp.asarray(X), (), f=3)
    with pytest.raises(ValueError, match="at most f=2"):
        A.get("multikrum").aggregate(jnp.asarray(X), (), f=3)
    with pytest.raises(ValueError, match=r"neighbours='n-f' is not allowed; allowed: one of 'n-f-2', 'n-f-1'"):
        A.get("multikrum", neighbours="n-f")
    assert registry.hparam_spec("rule", "krum")["neighbours"].default == "n-f-2"


# ------------------------------------------------------------------------- geometric median


@pytest.mark.parametrize("n,d", [(9, 6), (140, 4)], ids=["gram-path", "direct-path"])
@pytest.mark.parametrize("nu,T", [(0.1, 3), (1e-3, 1), (2.0, 5)])
def test_geometric_median_from_zero(n, d, nu, T):
    fn = _agg("rfa", iters=T, eps=nu, start="zero")
    X = _rows(n, d, seed=n + T, byz=2)
    X[3] = X[4]  # a duplicated row: the iterate may sit on it
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(X), 1)), ref.byzfl_geometric_median(X.astype(np.float64), nu, T),
                               rtol=3e-5, atol=3e-5)


def test_geometric_median_nu_traced_under_vmap():
    X = _rows(8, 5, seed=3, byz=2)
    nus = jnp.asarray([0.05, 0.5, 3.0])

    def one(nu):
        st = registry.build("rule", "rfa", iters=3, eps=nu, start="zero")
        out, _, _ = st.update(jnp.asarray(X), st.init(jnp.asarray(X)), RoundContext(None, 2, KEY))
        return out

    got = jax.jit(jax.vmap(one))(nus)
    for i, nu in enumerate(np.asarray(nus)):
        np.testing.assert_allclose(np.asarray(got[i]), ref.byzfl_geometric_median(X.astype(np.float64), float(nu), 3),
                                   rtol=3e-5, atol=3e-5)


def test_geometric_median_ignores_nonfinite_rows_and_default_unchanged():
    X = _rows(6, 4, seed=8)
    Xbad = X.copy()
    Xbad[0] = np.inf
    got = np.asarray(_agg("rfa", iters=3, eps=0.1, start="zero")(jnp.asarray(Xbad), 1))
    np.testing.assert_allclose(got, ref.byzfl_geometric_median(X[1:].astype(np.float64), 0.1, 3), rtol=3e-5, atol=3e-5)
    assert registry.hparam_spec("rule", "rfa")["start"].default == "mean"


# ------------------------------------------------------------------------------------- ALIE


MASKS = {"first": [0, 1], "interleaved": [1, 4, 7], "none": []}


def _mask(n, rows):
    m = np.zeros(n, bool)
    m[rows] = True
    return m


def _attack(name, **hp):
    att = attacks.get(name, **hp)

    def fn(u, m):
        return att.apply(u, m, att.init(u), key=KEY)[0]

    return jax.jit(fn)


@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_alie_byzfl(mask):
    n = 10
    U = _rows(n, 33, seed=5)
    m = _mask(n, MASKS[mask])
    H = U[~m].astype(np.float64)
    got = np.asarray(_attack("lie", z=1.5, ddof=1, sign="plus")(jnp.asarray(U), jnp.asarray(m)))
    want = ref.byzfl_alie(H, 1.5)
    np.testing.assert_allclose(got[m], np.broadcast_to(want, (m.sum(), 33)), rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(got[~m], U[~m])
    # sign="minus" with ddof=1: mu - tau * std(ddof=1) (ByzFL's attack on update-space rows).
    got = np.asarray(_attack("lie", z=1.5, ddof=1)(jnp.asarray(U), jnp.asarray(m)))
    want = 2 * H.mean(0) - ref.byzfl_alie(H, 1.5)
    np.testing.assert_allclose(got[m], np.broadcast_to(want, (m.sum(), 33)), rtol=2e-5, atol=2e-5)


def test_alie_z_vmapped_and_single_honest_row():
    U = _rows(6, 7, seed=9)
    m = _mask(6, [0, 1])
    H = U[~m].astype(np.float64)

    def one(z):
        st = registry.build("attack", "lie", z=z, ddof=1, sign="plus")
        return st.update(jnp.asarray(U), (), RoundContext(jnp.asarray(m), 2, KEY))[0][0]

    zs = jnp.asarray([0.5, 1.5, 4.0])
    got = jax.jit(jax.vmap(one))(zs)
    for i, z in enumerate([0.5, 1.5, 4.0]):
        np.testing.assert_allclose(np.asarray(got[i]), ref.byzfl_alie(H, z), rtol=2e-5, atol=2e-5)
    # One honest row: the ddof=1 std is undefined (ByzFL: NaN); the rows are the mean, never NaN.
    m1 = np.ones(6, bool)
    m1[3] = False
    got = np.asarray(_attack("lie", ddof=1, sign="plus")(jnp.asarray(U), jnp.asarray(m1)))
    np.testing.assert_allclose(got[m1], np.broadcast_to(U[3], (5, 7)), rtol=1e-6)
    with pytest.raises(ValueError, match="sign='up' is not allowed"):
        attacks.get("lie", sign="up")


# ------------------------------------------------------------------------------------ Mimic


@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
@pytest.mark.parametrize("target", [0, 3])
def test_mimic_fixed_target(mask, target):
    n = 10
    U = _rows(n, 17, seed=6)
    m = _mask(n, MASKS[mask])
    H = U[~m]
    got = np.asarray(_attack("mimic", target=target)(jnp.asarray(U), jnp.asarray(m)))
    np.testing.assert_array_equal(got[m], np.broadcast_to(H[target], (m.sum(), 17)))
    np.testing.assert_array_equal(got[~m], H)


def test_mimic_target_beyond_honest_rows_copies_the_last():
    U = _rows(5, 4, seed=1)
    m = _mask(5, [0, 1, 2])
    got = np.asarray(_attack("mimic", target=7)(jnp.asarray(U), jnp.asarray(m)))
    np.testing.assert_array_equal(got[0], U[4])
    st = registry.build("attack", "mimic", target=0)
    assert not st.info.get("stateful", False) and not st.info.get("needs_key", False)
    assert registry.build("attack", "mimic").info["stateful"]


# ---------------------------------------------------------------------------- LabelFlipping


class _FlipCtx(NamedTuple):
    byzantine_mask: Any
    f: Any
    key: Any
    flipped: Any


@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_labelflip_honest_mean(mask):
    n = 8
    U = _rows(n, 12, seed=2)
    F = _rows(n, 12, seed=3)
    m = _mask(n, [r for r in MASKS[mask] if r < n])
    st = registry.build("attack", "labelflip", mode="honest_mean")
    assert st.info["needs_flipped_rows"] and not st.info.get("data_level", False)
    assert int(st.info["label_map"](jnp.asarray(2), 10)) == 7
    fn = jax.jit(lambda u, mm, fl: st.update(u, (), _FlipCtx(mm, mm.sum(), KEY, fl))[0])
    got = np.asarray(fn(jnp.asarray(U), jnp.asarray(m), jnp.asarray(F)))
    want = F[~m].astype(np.float64).mean(0)  # ByzFL: mean of the honest clients' flipped-label gradients
    np.testing.assert_allclose(got[m], np.broadcast_to(want, (m.sum(), 12)), rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(got[~m], U[~m])


def test_labelflip_honest_mean_needs_flipped_rows_and_default_unchanged():
    st = registry.build("attack", "labelflip", mode="honest_mean")
    U = jnp.asarray(_rows(4, 3, 0))
    with pytest.raises(ValueError, match="needs the round context's `flipped` rows"):
        st.update(U, (), RoundContext(jnp.asarray(_mask(4, [0])), 1, KEY))
    own = registry.build("attack", "labelflip")
    assert own.info["data_level"] and own.hparams["mode"] == "own"


# -------------------------------------------------------------------- pre-aggregators


def test_bucketing_keeps_f_as_byzfl():
    X = jnp.asarray(_rows(10, 3, 0))
    for rescale, want in [(True, 2), (False, 3)]:
        st = registry.build("preaggregator", "bucketing", s=2, rescale_f=rescale)
        out, _, ctx = st.update(X, (), RoundContext(None, 3, KEY))
        assert out.shape == (5, 3) and ctx.f == want
        traced = jax.jit(lambda x, f, st=st: st.update(x, (), RoundContext(None, f, KEY))[2].f)(X, 3)
        assert int(traced) == want


@pytest.mark.parametrize("n,f", [(10, 2), (12, 5), (9, 3), (7, 0)])
def test_arc_matches_byzfl(n, f):
    # Our ARC's count floor(2 f (n - f) / n) equals ByzFL's int((2 f / n) (n - f)) for every n < 121.
    X = _rows(n, 6, seed=n + f)
    st = registry.build("preaggregator", "arc")
    got = jax.jit(lambda x, f: st.update(x, (), RoundContext(None, f, KEY))[0])(jnp.asarray(X), f)
    np.testing.assert_allclose(np.asarray(got), ref.byzfl_arc(X.astype(np.float64), f), rtol=2e-6, atol=2e-6)
