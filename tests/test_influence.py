"""Per-row influence and the Byzantine share of the deviation (issue 10, part 3), against
closed forms and NumPy counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import aggregators, attacks
from strike_jax.analysis import influence

KEY = jax.random.PRNGKey(2)
N, F = 11, 3


def matrix(seed, d, n=N):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=d) + rng.exponential(size=(n, 1)) * rng.normal(size=d)
            + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_mean_weights_every_row_one_over_n_and_the_deviation_is_all_byzantine():
    u = matrix(0, 7)
    inf = influence(aggregators.get("mean"), u, f=F, key=KEY)
    assert inf.exact
    np.testing.assert_allclose(np.asarray(inf.sensitivity), np.full(N, 1.0 / N), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(inf.sensitivity_se), 0.0)
    # The honest rows' centred terms sum to zero: all of mean(U) - mu is the Byzantine rows'.
    assert float(inf.byzantine_share) == pytest.approx(1.0, abs=1e-4)
    assert float(inf.euler_residual) < 1e-4
    # Byzantine rows at the honest mean: mean(U') = mu exactly, the whole deviation disappears.
    assert float(inf.counterfactual_share) == pytest.approx(1.0, abs=1e-4)
    mu = u[F:].astype(np.float64).mean(axis=0)
    assert float(inf.deviation) == pytest.approx(np.linalg.norm(u.astype(np.float64).mean(axis=0) - mu), rel=1e-4)


def test_median_sensitivity_is_the_root_share_of_coordinates_a_row_holds():
    d = 30
    u = matrix(1, d)
    inf = influence(aggregators.get("median"), u, f=F, key=KEY)
    holder = np.argsort(u, axis=0, kind="stable")[(N - 1) // 2]  # the row at the lower median, per column
    counts = np.bincount(holder, minlength=N)
    np.testing.assert_allclose(np.asarray(inf.sensitivity), np.sqrt(counts / d), rtol=1e-5, atol=1e-6)


def test_krum_gives_all_weight_to_the_selected_row_and_none_to_byzantine_rows_it_discards():
    u = matrix(2, 9)
    u[:F] = u[F:].mean(axis=0) + 50.0  # far Byzantine rows: never selected
    rule = aggregators.get("krum")
    inf = influence(rule, u, f=F, key=KEY)
    out = np.asarray(rule.aggregate(jnp.asarray(u), (), f=F)[0])
    winner = int(np.argmin(np.abs(u - out).sum(axis=1)))
    expected = np.zeros(N)
    expected[winner] = 1.0
    np.testing.assert_allclose(np.asarray(inf.sensitivity), expected, atol=1e-6)
    assert float(inf.byzantine_share) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("rule", ["median", "trmean", "multikrum"])
def test_strike_shares_add_up_and_euler_holds_for_equivariant_rules(rule):
    u = jnp.asarray(matrix(3, 20))
    m = jnp.arange(N) < F
    sent, _ = attacks.get("strike").apply(u, m, ())
    inf = influence(aggregators.get(rule), sent, f=F, key=KEY)
    assert float(inf.euler_residual) < 1e-4
    assert float(inf.byzantine_share + inf.honest_share) == pytest.approx(1.0)
    assert np.isfinite(float(inf.byzantine_share))
    # The counterfactual share against a NumPy recomputation.
    mu = np.asarray(u[F:], np.float64).mean(axis=0)
    rule_fn = lambda x: np.asarray(aggregators.get(rule).aggregate(jnp.asarray(x), (), f=F)[0], np.float64)
    neutral = np.asarray(sent).copy()
    neutral[:F] = mu
    expect = 1 - np.sum((rule_fn(neutral) - mu) ** 2) / np.sum((rule_fn(sent) - mu) ** 2)
    assert float(inf.counterfactual_share) == pytest.approx(expect, rel=1e-3, abs=1e-4)


def test_random_projection_estimate_matches_the_exact_norms():
    d = 200
    u = matrix(4, d)
    rule = aggregators.get("median")
    exact = influence(rule, u, f=F, key=KEY)
    est = influence(rule, u, f=F, key=KEY, exact=False, probes=64)
    assert exact.exact and not est.exact
    e, s, se = (np.asarray(a) for a in (exact.sensitivity, est.sensitivity, est.sensitivity_se))
    assert np.all(se > 0) and np.all(se < 0.1 * e)  # median blocks: relative se ~ 1/sqrt(2 k probes)
    assert np.all(np.abs(s - e) <= 5 * se)
    np.testing.assert_allclose(float(est.byzantine_share), float(exact.byzantine_share), rtol=1e-6)


def test_byzantine_mask_and_bad_input():
    u = matrix(5, 6)
    m = np.zeros(N, bool)
    m[[2, 5]] = True
    inf = influence(aggregators.get("mean"), u, f=2, key=KEY, byzantine_mask=m)
    assert float(inf.byzantine_share) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="f="):
        influence(aggregators.get("mean"), u, f=N, key=KEY)
    with pytest.raises(ValueError, match="shape"):
        influence(aggregators.get("mean"), u, f=2, key=KEY, byzantine_mask=m[:-1])
    with pytest.raises(ValueError, match="probes"):
        influence(aggregators.get("mean"), u, f=2, key=KEY, exact=False, probes=1)
    with pytest.raises(ValueError, match="Aggregator"):
        influence("median", u, f=2, key=KEY)
