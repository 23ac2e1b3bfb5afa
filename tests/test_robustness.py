"""Empirical (f, kappa)-robustness (issue 10, part 2): the Mean shows no finite kappa, bounded rules
level off below their published bounds, and every number is a ratio a NumPy float64 reference
recomputes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_aggregators as ragg
import reference_attacks as ref
from strike_jax import aggregators, stages
from strike_jax.analysis import empirical_kappa, lower_kappa, matrix_attacks, theoretical_kappa
from strike_jax.stages import RoundContext

KEY = jax.random.PRNGKey(11)
H_ROWS, D, F = 12, 10, 3


def honest(seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=D) + rng.exponential(size=(H_ROWS, 1)) * rng.normal(size=D) \
        + 0.5 * rng.normal(size=(H_ROWS, D))
    return rows.astype(np.float32)


def np_ratio(agg, byz_rows, h):
    """Definition 1's ratio with S = the honest rows, Byzantine rows first (float64 loops)."""
    h = np.asarray(h, np.float64)
    u = np.concatenate([np.asarray(byz_rows, np.float64), h])
    mu = ref.mean(h)
    spread = sum(ref.dist(r, mu) ** 2 for r in h) / len(h)
    return ref.dist(agg(u), mu) ** 2 / spread


def test_mean_has_no_finite_kappa():
    h = honest()
    res = empirical_kappa(aggregators.get("mean"), h, F, key=KEY, steps=30, restarts=2, attacks=("lie",))
    assert res.unbounded and res.kappa == np.inf
    # `trace[k]` is the estimate after a budget of k + 1 steps: it keeps growing with the budget
    # (the step grows geometrically while the ratio climbs).
    assert np.all(np.diff(res.trace) >= 0) and res.trace[-1] == pytest.approx(res.kappa_found, rel=1e-6)
    assert res.trace[29] > 10 * res.trace[19] > 100 * res.trace[9]
    # The probe's ratios grow like t^2 along the ray.
    assert res.probe_ratios[1] > 1e3 * res.probe_ratios[0]
    assert theoretical_kappa("mean", H_ROWS + F, F) == np.inf


# Krum is discontinuous (its selection jumps) and the ascent ends on the edge of a selection, where
# float32 and float64 scores can order rows differently: its rows are re-checked with the (float32)
# rule itself; the continuous rules with the float64 references.
@pytest.mark.parametrize("rule,agg_ref", [("median", lambda u: ragg.median(u, F)),
                                          ("trmean", lambda u: ragg.trmean(u, F)),
                                          ("krum", None)])
def test_bounded_rules_level_off_below_their_published_bound(rule, agg_ref):
    h = honest(1)
    n = H_ROWS + F
    r = empirical_kappa(aggregators.get(rule), h, F, key=KEY, steps=60, restarts=4, attacks=("lie", "strike"))
    assert not r.unbounded and np.isfinite(r.kappa) and r.kappa == r.kappa_found
    # A lower bound on kappa: below the bound the literature proves for the rule.
    assert r.kappa <= theoretical_kappa(rule, n, F)
    # Never below its starting points (the attacks' own ratios).
    assert r.kappa >= max(r.attack_ratios.values()) * (1 - 1e-6)
    assert r.kappa >= r.initial_ratios.max() * (1 - 1e-6)
    # The reported rows reach the reported ratio.
    rule_fn = agg_ref or (lambda u: np.asarray(aggregators.get(rule).aggregate(
        jnp.asarray(u, jnp.float32), (), f=F)[0], np.float64))
    assert np_ratio(rule_fn, r.byzantine, h) == pytest.approx(r.kappa, rel=1e-3)
    # Levels off: four times the budget (60 steps instead of 15) buys (almost) nothing.
    assert r.trace[-1] <= 1.1 * r.trace[14]


def test_attack_ratios_are_the_attacks_realised_ratios():
    h = honest(2)
    res = empirical_kappa(aggregators.get("median"), h, F, key=KEY, steps=5, restarts=1)
    assert set(res.attack_ratios) == set(matrix_attacks())
    assert {"strike", "lie", "ipm", "minmax", "minsum", "mimic", "bitflip", "gradient", "opt_lie", "opt_ipm",
            "gaussian", "signflip", "fang", "agr_tailored", "strike_diverse"} == set(matrix_attacks())
    # steps < 50: the gradient attack is run as a start of its own (not read off).
    assert set(res.init_names[:-1]) == set(matrix_attacks()) and res.init_names[-1] == "random0"
    med = lambda u: ragg.median(u, F)
    u = np.concatenate([h[np.arange(F) % H_ROWS], h])  # Byzantine rows first, their own = H[i mod h]
    byz = np.arange(F + H_ROWS) < F
    same = lambda v: np.tile(v, (F, 1))  # every Byzantine row sends the vector
    expected = {"lie": same(ref.lie(u, byz)), "ipm": same(ref.ipm(u, byz)), "bitflip": ref.bitflip(u, byz)[:F],
                "strike": same(ref.strike(u, byz)["vector"]), "minmax": same(ref.minmax(u, byz)[0])}
    for name, rows in expected.items():
        assert res.attack_ratios[name] == pytest.approx(np_ratio(med, rows, h), rel=2e-3, abs=1e-6), name
    assert res.kappa >= max(res.attack_ratios.values()) * (1 - 1e-6)


def test_gradient_attack_ratio_read_off_the_strike_restart_is_the_attack_run_alone():
    h = honest(4)
    rule = aggregators.get("mean")
    res = empirical_kappa(rule, h, F, key=KEY, steps=50, restarts=0, attacks=("strike", "gradient"))
    assert res.init_names == ("strike",)  # read off, not run twice
    u = jnp.asarray(np.concatenate([h[:F], h]))
    m = jnp.arange(F + H_ROWS) < F
    stage = stages.get("attack", "gradient")
    sent = stage.update(u, stage.init(u), RoundContext(m, F, KEY, downstream=rule.stage))[0]
    assert res.attack_ratios["gradient"] == pytest.approx(np_ratio(lambda x: x.mean(axis=0), sent[:F], h), rel=1e-3)
    assert res.attack_ratios["gradient"] > 100 * res.attack_ratios["strike"]


def test_a_chain_and_a_callable_are_accepted():
    h = honest(3)
    chain = aggregators.chain(aggregators.get("nnm"), aggregators.get("median"))
    res = empirical_kappa(chain, h, F, key=KEY, steps=3, restarts=1, attacks=("lie",))
    assert np.isfinite(res.kappa) and res.byzantine.shape == (F, D)
    fn = lambda u: jnp.median(u, axis=0)
    res2 = empirical_kappa(fn, h, F, key=KEY, steps=3, restarts=1, attacks=("lie",))
    assert np.isfinite(res2.kappa)


def test_bad_input_raises():
    h = honest()
    with pytest.raises(ValueError, match="at most f=3"):  # Bulyan: f <= (n - 3) // 4 with n = 12 + 4
        empirical_kappa(aggregators.get("bulyan"), h, 4, key=KEY, steps=1, attacks=("lie",))
    bad = h.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        empirical_kappa(aggregators.get("median"), bad, F, key=KEY)
    with pytest.raises(ValueError, match="f=0"):
        empirical_kappa(aggregators.get("median"), h, 0, key=KEY)
    with pytest.raises(ValueError, match="shape"):
        empirical_kappa(aggregators.get("median"), h[0], F, key=KEY)
    with pytest.raises(ValueError, match="unknown attacks"):
        empirical_kappa(aggregators.get("median"), h, F, key=KEY, attacks=("labelflop",))
    with pytest.raises(ValueError, match="steps"):
        empirical_kappa(aggregators.get("median"), h, F, key=KEY, steps=-1)


def test_theoretical_bounds():
    n, f = 20, 4
    q = f / (n - 2 * f)
    assert lower_kappa(n, f) == pytest.approx(q)
    assert theoretical_kappa("median", n, f) == pytest.approx(4 * (1 + q) ** 2)
    assert theoretical_kappa("trmean", n, f) == pytest.approx(6 * q * (1 + q))
    assert theoretical_kappa("krum", n, f) == pytest.approx(6 * (1 + q))
    assert theoretical_kappa("nnm+median", n, f) == pytest.approx(8 * f / (n - f) * (4 * (1 + q) ** 2 + 1))
    assert theoretical_kappa("aksel", n, f) is None and theoretical_kappa("median", 8, 4) is None
    assert theoretical_kappa("multikrum", n, f) is None
