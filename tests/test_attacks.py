"""Baseline attacks, the registry and the attack interface (SPEC §6) against the brute-force NumPy
float64 references in reference_attacks.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_attacks as ref
from strike_jax import attacks
from strike_jax.attacks import baselines, base

D = 257  # not a multiple of any chunk size
KEY = jax.random.PRNGKey(3)


def updates(seed, n, d=D):
    rng = np.random.default_rng(seed)
    base_row = rng.normal(size=d)
    e = rng.exponential(size=(n, 1))
    rows = base_row + e * rng.normal(size=d) + 0.5 * rng.normal(size=(n, d))
    return rows.astype(np.float32)


def mask_of(n, rows):
    m = np.zeros(n, bool)
    m[list(rows)] = True
    return m


# Masks over n = 10 rows: first rows, interleaved, h == 1, h == 0 (H = the Byzantine rows' own
# updates), f == 0.
MASKS = {
    "first": [0, 1],
    "interleaved": [1, 4, 7],
    "h1": list(range(1, 10)),
    "h0": list(range(10)),
    "none": [],
}


def expected(name, u, m, **hp):
    """The attacked `[n, d]` matrix by the float64 reference."""
    if name == "bitflip":
        return ref.bitflip(u, m)
    if name == "lie":
        return ref.with_rows(u, m, ref.lie(u, m, **hp))
    if name == "ipm":
        return ref.with_rows(u, m, ref.ipm(u, m, **hp))
    if name == "minmax":
        return ref.with_rows(u, m, ref.minmax(u, m)[0])
    if name == "minsum":
        return ref.with_rows(u, m, ref.minsum(u, m)[0])
    raise AssertionError(name)


_JITTED = {}


def run(attack, u, m, state=None, jit=True):
    """`attack.apply` once (jitted per attack name and hyper-parameters, so tests with equal
    shapes share compilations) -> (NumPy matrix, new state)."""
    state = attack.init(jnp.asarray(u)) if state is None else state
    if jit:
        cache_key = (attack.name, tuple(sorted(attack.hparams.items())))
        if cache_key not in _JITTED:
            _JITTED[cache_key] = jax.jit(lambda u, m, s, k: attack.apply(u, m, s, key=k))
        fn = _JITTED[cache_key]
    else:
        fn = lambda u, m, s, k: attack.apply(u, m, s, key=k)
    out, new_state = fn(jnp.asarray(u), jnp.asarray(m), state, KEY)
    return np.asarray(out), new_state


STATELESS = ["bitflip", "lie", "ipm", "minmax", "minsum"]


@pytest.mark.parametrize("name", STATELESS)
@pytest.mark.parametrize("mask", list(MASKS))
def test_matches_reference(name, mask):
    u = updates(STATELESS.index(name) * 10 + list(MASKS).index(mask), 10)
    m = mask_of(10, MASKS[mask])
    out, _ = run(attacks.get(name), u, m)
    exp = expected(name, u, m)
    np.testing.assert_array_equal(out[~m], u[~m])  # honest rows bit-exact
    np.testing.assert_allclose(out, exp, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", STATELESS)
def test_matches_reference_without_jit(name):
    u = updates(5, 10)
    m = mask_of(10, MASKS["interleaved"])
    out, _ = run(attacks.get(name), u, m, jit=False)
    np.testing.assert_array_equal(out[~m], u[~m])
    np.testing.assert_allclose(out, expected(name, u, m), rtol=2e-4, atol=2e-4)


def test_hyperparameters_are_used():
    u = updates(6, 10)
    m = mask_of(10, MASKS["first"])
    out, _ = run(attacks.get("lie", z=0.7), u, m)
    np.testing.assert_allclose(out, expected("lie", u, m, z=0.7), rtol=1e-4, atol=1e-4)
    out, _ = run(attacks.get("ipm", eps=2.5), u, m)
    np.testing.assert_allclose(out, expected("ipm", u, m, eps=2.5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["minmax", "minsum"])
@pytest.mark.parametrize("mask", ["first", "interleaved", "h0"])
def test_lambda_is_last_feasible(kind, mask):
    u = updates(40 + len(mask), 10)
    m = mask_of(10, MASKS[mask])
    fn = baselines.minmax_vector if kind == "minmax" else baselines.minsum_vector
    res = jax.jit(fn)(jnp.asarray(u), jnp.asarray(m))
    lam = float(res.lam)
    H = u.astype(np.float64)[ref.reference_rows(u, m)]
    mu, sigma = ref.mean(H), ref.std(H)
    feasible = ref.minmax_feasible if kind == "minmax" else ref.minsum_feasible
    _, lam_ref = (ref.minmax if kind == "minmax" else ref.minsum)(u, m)
    assert 0 < lam < 19.9  # an interior solution, so that lam + tol can be infeasible
    assert abs(lam - lam_ref) <= 1e-4 * (1 + lam_ref)
    # Feasible (with float32 slack) and lam + 1e-4 is not.
    assert feasible(H, mu, sigma, lam * (1 - 1e-5))
    assert not feasible(H, mu, sigma, lam + 1e-4)
    np.testing.assert_allclose(np.asarray(res.vector), mu - lam * sigma, rtol=1e-4, atol=1e-4)


def test_ndss_search_semantics():
    # Boundary at 3.3: returns the last feasible lambda, within the search threshold below it.
    lam = float(baselines.ndss_search(lambda lam: lam <= 3.3))
    assert 3.3 - 2e-5 <= lam <= 3.3
    assert lam == ref.ndss_search(lambda lam: lam <= 3.3) or abs(lam - ref.ndss_search(lambda x: x <= 3.3)) < 1e-5
    # Never feasible -> 0; always feasible -> just under 20 (the scheme's ceiling).
    assert float(baselines.ndss_search(lambda lam: lam < 0)) == 0.0
    assert 19.99 < float(baselines.ndss_search(lambda lam: lam >= 0)) <= 20.0


@pytest.mark.parametrize("jit", [True, False])
def test_mimic_matches_reference_over_rounds(jit):
    n = 10
    attack = attacks.get("mimic")
    assert attack.stateful
    masks = [MASKS["first"], MASKS["interleaved"], [0, 5], MASKS["h0"]]
    state = attack.init(jnp.zeros((n, D)))
    assert int(state.t) == 0
    ref_state = None
    z0 = np.asarray(jax.random.normal(KEY, (D,), jnp.float32), np.float64)
    for r, rows in enumerate(masks):
        u = updates(70 + r, n)
        m = mask_of(n, rows)
        out, state = run(attack, u, m, state, jit=jit)
        vec, target, ref_state = ref.mimic(u, m, ref_state, z0)
        np.testing.assert_array_equal(out[~m], u[~m])
        for i in np.flatnonzero(m):
            np.testing.assert_array_equal(out[i], u[target])  # an exact copy of H_{i*}
        np.testing.assert_allclose(np.asarray(state.z), ref_state[0], rtol=1e-4, atol=1e-5)
        assert int(state.t) == ref_state[1] == r + 1


def test_mimic_needs_a_key_and_handles_h1():
    attack = attacks.get("mimic")
    u = updates(1, 10)
    with pytest.raises(ValueError, match="key"):
        attack.apply(jnp.asarray(u), jnp.asarray(mask_of(10, [0])), attack.init(jnp.asarray(u)))
    # h == 1: the weighted sum is 0; z stays at the normalised start, the output is H itself.
    m = mask_of(10, MASKS["h1"])
    out, state = run(attack, u, m)
    assert np.all(np.isfinite(np.asarray(state.z)))
    assert abs(float(jnp.linalg.norm(state.z)) - 1.0) < 1e-5
    for i in np.flatnonzero(m):
        np.testing.assert_array_equal(out[i], u[0])


@pytest.mark.parametrize("value", baselines.NONFINITE_VALUES)
def test_nonfinite(value):
    u = updates(2, 10)
    m = mask_of(10, MASKS["interleaved"])
    out, _ = run(attacks.get("nonfinite", value=value), u, m)
    np.testing.assert_array_equal(out[~m], u[~m])
    bad = out[m]
    assert not np.isfinite(bad).any()
    if value == "nan":
        assert np.isnan(bad).all()
    elif value == "inf":
        assert np.all(bad == np.inf)
    elif value == "-inf":
        assert np.all(bad == -np.inf)
    else:
        assert np.isnan(bad).any() and (bad == np.inf).any() and (bad == -np.inf).any()
        for i in np.flatnonzero(m):  # NaN, +Inf, -Inf cycling over (row + column) % 3
            kind = (i + np.arange(D)) % 3
            assert np.isnan(out[i][kind == 0]).all()
            assert np.all(out[i][kind == 1] == np.inf) and np.all(out[i][kind == 2] == -np.inf)


def test_labelflip():
    a = attacks.get("labelflip")
    assert a.data_level and a.label_map is not None
    y = np.array([0, 1, 9, 4])
    np.testing.assert_array_equal(a.label_map(y, 10), [9, 8, 0, 5])
    np.testing.assert_array_equal(np.asarray(a.label_map(jnp.asarray(y, jnp.int32), 10)), [9, 8, 0, 5])
    assert a.label_map(jnp.asarray(y, jnp.int32), 10).dtype == jnp.int32
    assert a.label_map(3, 62) == 58
    u = updates(3, 10)
    out, _ = run(a, u, mask_of(10, MASKS["first"]))
    np.testing.assert_array_equal(out, u)
    for name in attacks.names():
        assert attacks.get(name).data_level == (name == "labelflip")
    with pytest.raises(ValueError, match="num_classes"):
        a.label_map(y, 0)


@pytest.mark.parametrize("name", STATELESS + ["mimic", "nonfinite"])
def test_vmap_over_masks_with_different_f(name):
    n = 10
    u = jnp.asarray(updates(9, n))
    attack = attacks.get(name)
    state = attack.init(u)
    masks = np.stack([mask_of(n, rows) for rows in MASKS.values()])
    batched = jax.jit(jax.vmap(lambda m: attack.apply(u, m, state, key=KEY)[0]))(jnp.asarray(masks))
    for k, m in enumerate(masks):
        loop, _ = run(attack, u, m, state)
        np.testing.assert_allclose(np.asarray(batched[k]), loop, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(batched[k])[~m], np.asarray(u)[~m])


@pytest.mark.parametrize("name", STATELESS + ["mimic"])
def test_grad_is_finite(name):
    u = jnp.asarray(updates(12, 10))
    m = jnp.asarray(mask_of(10, MASKS["interleaved"]))
    attack = attacks.get(name)
    state = attack.init(u)
    g = jax.jit(jax.grad(lambda x: attack.apply(x, m, state, key=KEY)[0].sum()))(u)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_reference_mask():
    np.testing.assert_array_equal(np.asarray(base.reference_mask(jnp.asarray([True, False, False]))),
                                  [False, True, True])
    np.testing.assert_array_equal(np.asarray(base.reference_mask(jnp.asarray([True, True]))), [True, True])


def test_registry_and_errors():
    assert set(attacks.names()) == {"strike", "lie", "ipm", "minmax", "minsum", "mimic", "bitflip",
                                    "labelflip", "nonfinite", "gaussian", "signflip", "fang", "agr_tailored",
                                    "gradient", "opt_lie", "opt_ipm", "strike_diverse"}
    for name in attacks.names():
        a = attacks.get(name)
        assert a.name == name
        assert isinstance(attacks.hparam_names(name), tuple)
    assert attacks.hparam_names("strike") == ("nu",)
    assert dict(attacks.get("lie").hparams) == {"z": 1.5, "ddof": 0, "sign": "minus"}
    with pytest.raises(ValueError, match="allowed.*strike"):
        attacks.get("krum")
    with pytest.raises(ValueError, match="allowed.*nu"):
        attacks.get("strike", z=1.0)
    with pytest.raises(ValueError, match="allowed: none"):
        attacks.get("bitflip", eps=1.0)
    for name, hp in [("lie", {"z": -1.0}), ("lie", {"z": 0.0}), ("ipm", {"eps": 0.0}),
                     ("ipm", {"eps": float("nan")}), ("ipm", {"eps": "0.1"}), ("strike", {"nu": -0.5}),
                     ("nonfinite", {"value": "zero"})]:
        with pytest.raises(ValueError, match=list(hp)[0]):
            attacks.get(name, **hp)


def test_traced_hyperparameters_are_not_validated():
    u = jnp.asarray(updates(4, 10))
    m = jnp.asarray(mask_of(10, MASKS["first"]))
    f = jax.jit(lambda z: attacks.get("lie", z=z).apply(u, m, (), key=None)[0])
    np.testing.assert_allclose(np.asarray(f(0.7)), expected("lie", np.asarray(u), np.asarray(m), z=0.7),
                               rtol=1e-4, atol=1e-4)
    outs = jax.vmap(lambda e: attacks.get("ipm", eps=e).apply(u, m, (), key=None)[0])(jnp.asarray([0.1, 0.2]))
    np.testing.assert_allclose(np.asarray(outs[1, 0]), 2 * np.asarray(outs[0, 0]), rtol=1e-5)
