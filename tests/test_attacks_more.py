"""The attacks of issue 11 (gaussian, signflip, fang, agr_tailored) against float64 references
written from their papers (tests/reference_more.py): honest rows bit-exact, traced f, h == 0,
jit / vmap over masks, errors; the AGR-tailored attack against a pipeline's downstream chain."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_aggregators as ragg
import reference_more as ref
from strike_jax import attacks, stages
from strike_jax.attacks.agr_tailored import hill_climb
from strike_jax.stages import RoundContext

jax.config.update("jax_enable_x64", False)

D = 33
KEY = jax.random.PRNGKey(5)


def updates(seed, n, d=D):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d) * 0.5
    return (base + rng.normal(size=(n, d))).astype(np.float32)


def mask_of(n, rows):
    m = np.zeros(n, bool)
    m[list(rows)] = True
    return m


MASKS = {"first": [0, 1], "interleaved": [1, 4, 7], "h0": list(range(10)), "none": []}

_JIT = {}


def run(attack, u, m, key=KEY):
    ck = (attack.name, tuple(sorted(attack.hparams.items())), u.shape)
    if ck not in _JIT:
        _JIT[ck] = jax.jit(lambda u, m, k: attack.apply(u, m, (), key=k)[0])
    return np.asarray(_JIT[ck](jnp.asarray(u), jnp.asarray(m), key))


def check_honest(out, u, m):
    np.testing.assert_array_equal(out[~m], u[~m])


@pytest.mark.parametrize("mask", list(MASKS))
def test_signflip_and_gaussian(mask):
    u = updates(1, 10)
    m = mask_of(10, MASKS[mask])
    out = run(attacks.get("signflip"), u, m)
    check_honest(out, u, m)
    for i in np.flatnonzero(m):
        np.testing.assert_allclose(out[i], ref.signflip(u, m), rtol=1e-5, atol=1e-6)
    out = run(attacks.get("gaussian", mu=0.5, sigma=2.0), u, m)
    check_honest(out, u, m)
    z = np.asarray(jax.random.normal(KEY, (D,), jnp.float32), np.float64)
    for i in np.flatnonzero(m):
        np.testing.assert_allclose(out[i], 0.5 + 2.0 * z, rtol=1e-5, atol=1e-5)


def test_gaussian_statistics_traced_params_and_errors():
    u = np.zeros((4, 200_000), np.float32)
    m = mask_of(4, [0, 2])
    f = jax.jit(lambda mu, s: attacks.get("gaussian", mu=mu, sigma=s).apply(jnp.asarray(u), jnp.asarray(m), (),
                                                                             key=KEY)[0])
    out = np.asarray(f(1.0, 3.0))
    assert abs(out[0].mean() - 1.0) < 0.03 and abs(out[0].std() - 3.0) < 0.03
    np.testing.assert_array_equal(out[0], out[2])  # one vector for every Byzantine client
    with pytest.raises(ValueError, match="sigma"):
        attacks.get("gaussian", sigma=-1.0)
    with pytest.raises(ValueError, match="key"):
        attacks.get("gaussian").apply(jnp.asarray(u), jnp.asarray(m), ())


@pytest.mark.parametrize("mask", ["first", "interleaved", "h0"])
def test_fang_trim_matches_reference(mask):
    u = updates(2, 10)
    u[:, 3] = 0.0  # a coordinate whose mean is 0
    m = mask_of(10, MASKS[mask])
    draws = np.asarray(jax.random.uniform(KEY, u.shape, jnp.float32))
    for target in ("trmean", "median"):
        out = run(attacks.get("fang", target=target), u, m)
        check_honest(out, u, m)
        np.testing.assert_allclose(out, ref.fang_trim(u, m, draws), rtol=1e-5, atol=1e-6)
    # the Byzantine values lie beyond the honest extreme opposite to the mean's sign
    H = u[ref.honest_rows(m)]
    s = np.sign(H.mean(0))
    byz = out[m]
    assert np.all(byz[:, s > 0] <= H.min(0)[s > 0] + 1e-6) and np.all(byz[:, s < 0] >= H.max(0)[s < 0] - 1e-6)
    out_b = run(attacks.get("fang", target="trmean", b=3.0), u, m)
    np.testing.assert_allclose(out_b, ref.fang_trim(u, m, draws, b=3.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask", ["first", "interleaved", "h0"])
def test_fang_krum_matches_reference(mask):
    n = 11
    u = updates(3, n) + 1.0
    m = mask_of(n, MASKS[mask] if mask != "h0" else range(n))
    out = run(attacks.get("fang", target="krum"), u, m)
    check_honest(out, u, m)
    vec, lam = ref.fang_krum(u, m)
    for i in np.flatnonzero(m):
        np.testing.assert_allclose(out[i], vec, rtol=1e-5, atol=1e-6)
    assert lam > 0


@pytest.mark.parametrize("rule,perturbation", [("krum", "unit"), ("multikrum", "std"), ("bulyan", "sign"),
                                               ("trmean", "std"), ("median", "unit")])
def test_agr_tailored_matches_reference(rule, perturbation):
    n = 11
    u = updates(4, n) + 0.5
    m = mask_of(n, [0, 3, 6] if rule != "bulyan" else [2, 5])
    out = run(attacks.get("agr_tailored", rule=rule, perturbation=perturbation), u, m)
    check_honest(out, u, m)
    fns = {"trmean": ragg.trmean, "median": ragg.median}
    vec, lam = ref.agr_tailored(u, m, rule, perturbation, fns.get(rule))
    for i in np.flatnonzero(m):
        np.testing.assert_allclose(out[i], vec, rtol=1e-4, atol=1e-4)
    assert 0 < lam < 20


def test_agr_tailored_search_and_registry():
    # the hill climb follows the reference code's scheme exactly on a known objective
    obj = lambda lam: -(lam - 3.3) ** 2
    got = float(hill_climb(obj, jnp.float32, lam0=10.0))
    assert abs(got - ref.hill_climb(obj)) < 1e-4
    with pytest.raises(ValueError, match="perturbation"):
        attacks.get("agr_tailored", perturbation="gauss")
    with pytest.raises(ValueError, match="round inputs"):
        attacks.get("agr_tailored", rule="fltrust")
    with pytest.raises(ValueError, match="rule='nnm' is not allowed; allowed: one of 'mean'"):
        attacks.get("agr_tailored", rule="nnm")
    with pytest.raises(ValueError, match="target"):
        attacks.get("fang", target="bulyan")
    with pytest.raises(ValueError, match="b=1"):
        attacks.get("fang", b=1.0)
    assert attacks.hparam_names("agr_tailored") == ("rule", "perturbation", "lam0")


@pytest.mark.parametrize("name,hp", [("signflip", {}), ("gaussian", {}), ("fang", {"target": "median"}),
                                     ("fang", {"target": "krum"}), ("agr_tailored", {"rule": "trmean"})])
def test_vmap_over_masks_with_different_f(name, hp):
    n = 10
    u = jnp.asarray(updates(9, n))
    attack = attacks.get(name, **hp)
    masks = np.stack([mask_of(n, rows) for rows in MASKS.values()])
    batched = jax.jit(jax.vmap(lambda mm: attack.apply(u, mm, (), key=KEY)[0]))(jnp.asarray(masks))
    for k, m in enumerate(masks):
        loop = run(attack, np.asarray(u), m)
        np.testing.assert_allclose(np.asarray(batched[k]), loop, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(batched[k])[~m], np.asarray(u)[~m])


def test_agr_tailored_attacks_the_downstream_chain():
    # In a pipeline the white-box attack targets ctx.downstream, the round's real chain (here NNM
    # then Median), not the builder's fallback rule (multikrum).
    n, f = 11, 3
    u = updates(6, n) + 0.5
    m = mask_of(n, [0, 4, 8])
    down = stages.chain(stages.get("preaggregator", "nnm"), stages.get("rule", "median"))
    atk = stages.get("attack", "agr_tailored")
    k_att = jax.random.fold_in(KEY, 0)
    sent = jax.jit(lambda x: atk.update(x, (), RoundContext(jnp.asarray(m), f, k_att, downstream=down))[0])(
        jnp.asarray(u))
    sent = np.asarray(sent)
    check_honest(sent, u, m)
    vec, lam = ref.agr_tailored(u, m, "nnm+median", "std", lambda X, ff: ragg.median(ragg.nnm(X, ff), ff))
    for i in np.flatnonzero(m):
        np.testing.assert_allclose(sent[i], vec, rtol=1e-4, atol=1e-4)
    assert 0 < lam < 20
    fallback = run(attacks.get("agr_tailored"), u, m, key=k_att)
    assert not np.allclose(fallback[m], sent[m])
    # The whole pipeline: the chain hands the attack fold_in(key, 0) and its downstream.
    pipe = stages.chain(atk, down)
    g, _, _ = pipe.update(jnp.asarray(u), pipe.init(jnp.asarray(u)), RoundContext(jnp.asarray(m), f, KEY))
    want, _, _ = down.update(jnp.asarray(sent), down.init(jnp.asarray(u)),
                             RoundContext(None, f, jax.random.fold_in(KEY, 1)))
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-6)
    # A selection rule alone downstream is attacked by the selection search (as rule="krum").
    sent_k, _, _ = atk.update(jnp.asarray(u), (), RoundContext(jnp.asarray(m), f, k_att,
                                                                downstream=stages.get("rule", "krum")))
    np.testing.assert_allclose(np.asarray(sent_k), run(attacks.get("agr_tailored", rule="krum"), u, m), rtol=1e-5,
                               atol=1e-6)
