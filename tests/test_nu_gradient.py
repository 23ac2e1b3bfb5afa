"""STRIKE's alpha in closed form and nu by gradient (issue 10, part 5; SPEC §6.4-6.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import aggregators, attacks
from strike_jax.analysis import closed_form_alpha, nu_deviation, strike_closed_form, worst_nu
from strike_jax.attacks.strike import TOL, bisect_alpha, strike_vector
from strike_jax.sweep import NU_GRID

KEY = jax.random.PRNGKey(4)
N, D = 14, 25


def skewed(seed, n=N, d=D, dtype=np.float32):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=d) + rng.exponential(size=(n, 1)) * rng.normal(size=d) + 0.4 * rng.normal(size=(n, d))
    return rows.astype(dtype)


def rule_fn(name, f):
    rule = aggregators.get(name)
    return lambda u: rule.aggregate(u, rule.init(u), f=f, key=KEY)[0]


@pytest.mark.parametrize("seed", range(6))
def test_closed_form_alpha_equals_the_bisection_to_its_tolerance(seed):
    f = 1 + seed % 4
    u = jnp.asarray(skewed(seed))
    m = jnp.arange(N) < f
    res = strike_vector(u, m)
    hv, s = res.hidden, res.selection.skewed_mask
    closed = float(closed_form_alpha(hv.sq_dists, hv.dots, hv.dev_sq_norm, hv.diameter_sq, s))
    bis = float(bisect_alpha(hv.sq_dists, hv.dots, hv.dev_sq_norm, hv.diameter_sq, s))
    assert bis == pytest.approx(float(res.alpha))
    # The bisection keeps the feasible lower end within TOL of the root (float32 rounding aside).
    assert closed - TOL - 1e-5 * closed <= bis <= closed * (1 + 1e-5)
    # The whole vector agrees to the same tolerance.
    cf = strike_closed_form(u, m)
    np.testing.assert_allclose(np.asarray(cf.vector), np.asarray(res.vector),
                               atol=2 * TOL * float(jnp.max(jnp.abs(hv.dev))) + 1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(cf.selection.skewed_mask), np.asarray(s))


def test_closed_form_alpha_edge_cases():
    a = jnp.asarray([1.0, 2.0, 0.5])
    b = jnp.asarray([0.3, -0.4, 0.0])
    none = jnp.zeros(3, bool)
    assert float(closed_form_alpha(a, b, jnp.asarray(2.0), jnp.asarray(4.0), none)) == 0.0
    # dev == 0 (C = 0): no row constrains alpha; the bisection's cap is returned.
    assert float(closed_form_alpha(a, b * 0, jnp.asarray(0.0), jnp.asarray(4.0), ~none)) == 2.0 ** 60
    # Each root solves C a^2 - 2 B a + A - D^2 = 0, and the minimum is taken.
    c, d2 = 2.0, 4.0
    roots = [(bi + np.sqrt(bi * bi + c * (d2 - ai))) / c for ai, bi in zip(np.asarray(a), np.asarray(b))]
    assert float(closed_form_alpha(a, b, jnp.asarray(c), jnp.asarray(d2), ~none)) == pytest.approx(min(roots))


def test_closed_form_gradient_matches_finite_differences_while_the_bisection_has_none(x64):
    u = jnp.asarray(skewed(7, dtype=np.float64))
    m = jnp.arange(N) < 3
    w = jnp.asarray(np.random.default_rng(0).normal(size=D))
    obj_cf = lambda x: jnp.dot(strike_closed_form(x, m).vector, w)
    alpha_bis = lambda x: strike_vector(x, m).alpha
    g_bis = np.asarray(jax.jit(jax.grad(alpha_bis))(u))
    assert np.all(g_bis == 0)  # piecewise constant: autodiff sees no dependence
    g = np.asarray(jax.jit(jax.grad(obj_cf))(u))
    assert np.abs(jax.jit(jax.grad(lambda x: strike_closed_form(x, m).alpha))(u)).max() > 0
    rng = np.random.default_rng(1)
    h = 1e-6
    f_cf = jax.jit(obj_cf)
    for _ in range(4):
        v = rng.normal(size=(N, D))
        fd = (float(f_cf(u + h * v)) - float(f_cf(u - h * v))) / (2 * h)
        assert float(np.sum(g * v)) == pytest.approx(fd, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("rule", ["median", "trmean", "multikrum"])
def test_nu_derivative_matches_finite_differences_through_strike_and_the_rule(rule, x64):
    u = jnp.asarray(skewed(8, dtype=np.float64))
    f = 3
    m = jnp.arange(N) < f
    fn = rule_fn(rule, f)
    vg = jax.jit(lambda nu: nu_deviation(fn, u, m, nu))
    h = 1e-6
    for nu in (0.6, 1.3, 1.9):
        val, der = (float(a) for a in vg(nu))
        fd = (float(vg(nu + h)[0]) - float(vg(nu - h)[0])) / (2 * h)
        assert der == pytest.approx(fd, rel=1e-6, abs=1e-9), nu
        # The value is the deviation under the registry's STRIKE (bisection alpha) to its tolerance.
        sent, _ = attacks.get("strike", nu=nu).apply(u, m, ())
        mu = u[f:].mean(axis=0)
        assert val == pytest.approx(float(jnp.sum(jnp.square(fn(sent) - mu))), rel=1e-3)


def test_worst_nu_never_below_the_grid_and_climbs_from_nu_one():
    u = jnp.asarray(skewed(9))
    f = 3
    m = jnp.arange(N) < f
    fn = rule_fn("trmean", f)
    res = jax.jit(lambda u: worst_nu(fn, u, m, steps=20))(u)
    phi = jax.jit(jax.vmap(lambda nu: nu_deviation(fn, u, m, nu)[0]))
    np.testing.assert_allclose(np.asarray(res.grid_deviation_sq), np.asarray(phi(jnp.asarray(NU_GRID))), rtol=1e-5)
    assert float(res.deviation_sq) >= float(res.grid_best_deviation_sq) * (1 - 1e-6)
    assert float(res.from_default_deviation_sq) >= float(phi(jnp.ones(1))[0]) * (1 - 1e-6)
    assert 0.05 <= float(res.nu) <= 4.0
    assert float(phi(jnp.asarray([res.nu]))[0]) == pytest.approx(float(res.deviation_sq), rel=1e-5)
    with pytest.raises(ValueError, match="bounds"):
        worst_nu(fn, u, m, bounds=(2.0, 1.0))
