"""The defence-aware attacks (`gradient`, `opt_lie`, `opt_ipm`) and the shared optimiser `ascend`
(issue 10, part 4), against NumPy float64 loops over the factor grids and the attacks' own
guarantees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_aggregators as ragg
import reference_attacks as ref
from strike_jax import aggregators, attacks, stages
from strike_jax.attacks.gradient import (
    IPM_FACTORS,
    LIE_FACTORS,
    ascend,
    gradient_attack,
    opt_ipm_vector,
    opt_lie_vector,
)
from strike_jax.stages import RoundContext

KEY = jax.random.PRNGKey(5)
N, D = 12, 40


def skewed(seed, n=N, d=D):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=d) + rng.exponential(size=(n, 1)) * rng.normal(size=d) + 0.3 * rng.normal(size=(n, d))
    return rows.astype(np.float32)


def mask_first(n, f):
    return np.arange(n) < f


def rule_fn(name, f, **hp):
    rule = aggregators.get(name, **hp)
    return lambda u: rule.aggregate(u, rule.init(u), f=f, key=KEY)[0]


def against(name, u, m, defence, key=KEY, **hp):
    """The attack stage `name` with `defence` (a Stage) handed over as `ctx.downstream`, as `chain` does."""
    stage = stages.get("attack", name, **hp)
    m = jnp.asarray(m)
    ctx = RoundContext(m, int(m.sum()), key, downstream=defence, downstream_state=defence.init(jnp.asarray(u)))
    return np.asarray(stage.update(jnp.asarray(u), stage.init(jnp.asarray(u)), ctx)[0])


def dev(fn, u, mask):
    mu = np.asarray(u, np.float64)[~mask].mean(axis=0)
    return float(np.linalg.norm(np.asarray(fn(jnp.asarray(u)), np.float64) - mu))


# ------------------------------------------------------------------------------------ ascend


def test_ascend_is_monotone_and_climbs_a_concave_quadratic():
    target = jnp.arange(6.0).reshape(2, 3)
    obj = lambda x: -jnp.sum(jnp.square(x - target))
    res = jax.jit(lambda x0: ascend(obj, x0, steps=60, lr=1.0))(jnp.zeros((2, 3)))
    trace = np.asarray(res.trace)
    assert np.all(np.diff(trace) >= 0) and trace[-1] == res.value
    assert float(res.initial_value) == pytest.approx(-55.0)
    assert float(res.value) > -1e-3
    # `free` rows only: the other row stays where it started.
    res2 = ascend(obj, jnp.zeros((2, 3)), steps=60, lr=1.0, free=jnp.asarray([[True], [False]]))
    np.testing.assert_array_equal(np.asarray(res2.x[1]), 0.0)
    np.testing.assert_allclose(np.asarray(res2.x[0]), target[0], atol=0.05)


def test_ascend_on_an_unbounded_objective_grows_with_the_budget():
    obj = lambda x: jnp.sum(x)  # unbounded: the step grows geometrically (capped)
    vals = [float(ascend(obj, jnp.zeros(3), steps=s, lr=1.0).value) for s in (10, 20, 40)]
    assert vals[0] < vals[1] < vals[2] and vals[2] > 10 * vals[0]


# ---------------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("rule,f", [("median", 3), ("multikrum", 3), ("cclip", 3)])
def test_gradient_attack_never_does_worse_than_its_strike_start(rule, f):
    u = skewed(1)
    m = mask_first(N, f)
    hp = {"tau": 0.5} if rule == "cclip" else {}
    fn = rule_fn(rule, f, **hp)
    res = jax.jit(lambda u, m: gradient_attack(u, m, fn, steps=25, lr=0.5, key=KEY))(jnp.asarray(u), jnp.asarray(m))
    out = np.asarray(res.updates)
    np.testing.assert_array_equal(out[~m], u[~m])  # honest rows untouched, bit-exact
    strike_rows, _ = attacks.get("strike").apply(jnp.asarray(u), jnp.asarray(m), ())
    d_strike = dev(fn, np.asarray(strike_rows), m)
    d_grad = dev(fn, out, m)
    assert d_grad >= d_strike * (1 - 1e-6)
    assert float(res.initial_deviation_sq) == pytest.approx(d_strike ** 2, rel=1e-4)
    assert float(res.deviation_sq) == pytest.approx(d_grad ** 2, rel=1e-4)
    assert np.all(np.diff(np.asarray(res.trace)) >= 0)


def test_gradient_attack_improves_strictly_where_the_rule_averages_byzantine_rows():
    # The Mean averages every Byzantine row: each step moves them outwards (the step growing).
    u, f = skewed(2), 2
    m = mask_first(N, f)
    fn = rule_fn("mean", f)
    res = gradient_attack(jnp.asarray(u), jnp.asarray(m), fn, steps=10, lr=0.5)
    assert float(res.deviation_sq) > 4 * float(res.initial_deviation_sq)


def test_gradient_attack_with_zero_steps_is_strike_and_default_rule_is_the_median():
    u, m = jnp.asarray(skewed(3)), jnp.asarray(mask_first(N, 3))
    zero, _ = attacks.get("gradient", steps=0).apply(u, m, ())
    strike_rows, _ = attacks.get("strike").apply(u, m, ())
    np.testing.assert_allclose(np.asarray(zero), np.asarray(strike_rows), rtol=1e-6, atol=1e-6)
    default, _ = attacks.get("gradient", steps=8).apply(u, m, (), key=KEY)
    explicit = against("gradient", u, m, aggregators.get("median").stage, steps=8)
    np.testing.assert_allclose(np.asarray(default), explicit, rtol=1e-6, atol=1e-6)


def test_white_box_attacks_in_a_chain_optimise_against_the_real_downstream():
    # chain(gradient, nnm, median): the attack climbs through nnm+median (not its fallback rule),
    # with the attack's key (fold_in(key, 0)); the server then aggregates with fold_in(key, 1).
    u, m = jnp.asarray(skewed(6)), jnp.asarray(mask_first(N, 3))
    defence = stages.chain(stages.get("preaggregator", "nnm"), stages.get("rule", "median"))
    pipe = stages.chain(stages.get("attack", "gradient", steps=4), defence)
    k = jax.random.PRNGKey(3)
    g, _, _ = pipe.update(u, pipe.init(u), RoundContext(m, 3, k))
    rows = against("gradient", u, m, defence, key=jax.random.fold_in(k, 0), steps=4)
    g_hand = defence.update(jnp.asarray(rows), defence.init(u), RoundContext(m, 3, jax.random.fold_in(k, 1)))[0]
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_hand), rtol=1e-6, atol=1e-6)
    alone = against("gradient", u, m, stages.get("rule", "median"), key=jax.random.fold_in(k, 0), steps=4)
    assert not np.allclose(rows, alone)


def test_downstream_defence_runs_the_round_state_and_falls_back_to_a_fresh_rule():
    from strike_jax.attacks.base import downstream_defence

    u, m = jnp.asarray(skewed(7)), jnp.asarray(mask_first(N, 3))
    cclip = stages.get("rule", "cclip", tau=0.5)
    centre = jnp.full((D,), 3.0, jnp.float32)
    ctx = RoundContext(m, 3, KEY, downstream=cclip, downstream_state=centre)
    defence, agg = downstream_defence(u, stages.get("rule", "median"), ctx)
    assert defence is cclip
    np.testing.assert_allclose(np.asarray(agg(u)), np.asarray(cclip.update(u, centre, ctx._replace(downstream=None))[0]))
    assert not np.allclose(np.asarray(agg(u)), np.asarray(cclip.update(u, cclip.init(u), ctx)[0]))
    median = stages.get("rule", "median")
    defence, agg = downstream_defence(u, median, RoundContext(m, 3, KEY))
    assert defence is median
    np.testing.assert_allclose(np.asarray(agg(u)), ragg.median(np.asarray(u, np.float64), 3), rtol=1e-6)


# ------------------------------------------------------------------------------- opt_lie / opt_ipm


def numpy_grid_choice(u, byz, candidate, factors, agg):
    """Brute force: for every factor, all Byzantine rows = candidate(factor); the factor with the
    largest ||agg(U) - mu|| (the first on ties)."""
    u = np.asarray(u, np.float64)
    H = u[ref.reference_rows(u, byz)]
    mu, sigma = ref.mean(H), ref.std(H)
    best, best_i, devs = -1.0, -1, []
    for i, c in enumerate(factors):
        v = candidate(mu, sigma, c)
        d = ref.dist(agg(ref.with_rows(u, byz, v)), mu)
        devs.append(d)
        if d > best:
            best, best_i = d, i
    return best_i, candidate(mu, sigma, factors[best_i]), np.array(devs)


@pytest.mark.parametrize("rule,f,kind", [("median", 3, "lie"), ("trmean", 3, "ipm"), ("multikrum", 2, "lie"),
                                         ("multikrum", 2, "ipm")])
def test_opt_factor_is_the_grid_argmax_of_a_numpy_loop(rule, f, kind):
    u = skewed(4 + f)
    m = mask_first(N, f)
    agg_ref = {"median": lambda x: ragg.median(x, f), "trmean": lambda x: ragg.trmean(x, f),
               "multikrum": lambda x: ragg.multikrum(x, f)}[rule]
    if kind == "lie":
        factors, cand = LIE_FACTORS, (lambda mu, s, z: mu - z * s)
        search = opt_lie_vector
    else:
        factors, cand = IPM_FACTORS, (lambda mu, s, e: -e * mu)
        search = opt_ipm_vector
    i_ref, v_ref, devs_ref = numpy_grid_choice(u, m, cand, factors, agg_ref)
    res = jax.jit(lambda u, m: search(u, m, rule_fn(rule, f), factors))(jnp.asarray(u), jnp.asarray(m))
    np.testing.assert_allclose(np.asarray(res.deviations), devs_ref, rtol=2e-4, atol=1e-5)
    # The argmax: the NumPy loop's (first) maximiser; where the rule saturates (e.g. the median
    # once every Byzantine row lies beyond the honest ones) several factors tie at the maximum,
    # and the choice must be the first of them.
    near = np.flatnonzero(devs_ref >= devs_ref.max() * (1 - 1e-5))
    assert int(res.index) == near[0] and i_ref == near[0]
    assert float(res.factor) == pytest.approx(factors[i_ref])
    np.testing.assert_allclose(np.asarray(res.vector), v_ref, rtol=1e-4, atol=1e-5)
    # Through the registry: every Byzantine row is the vector, honest rows untouched.
    out = against(f"opt_{kind}", u, m, aggregators.get(rule).stage)
    np.testing.assert_array_equal(out[~m], u[~m])
    np.testing.assert_allclose(out[m], np.tile(v_ref, (f, 1)), rtol=1e-4, atol=1e-5)


def test_opt_lie_vmaps_over_masks_with_different_f():
    u = jnp.asarray(skewed(9))
    masks = jnp.asarray(np.stack([mask_first(N, f) for f in (1, 2, 4)]))
    attack = attacks.get("opt_lie")
    batched = jax.jit(jax.vmap(lambda m: attack.apply(u, m, ())[0]))(masks)
    for k in range(3):
        loop, _ = attack.apply(u, masks[k], ())
        np.testing.assert_allclose(np.asarray(batched[k]), np.asarray(loop), rtol=1e-5, atol=1e-6)


def test_bad_hyper_parameters_raise():
    for name, hp, word in [("gradient", {"steps": -1}, "steps"), ("gradient", {"steps": 2.5}, "steps"),
                           ("gradient", {"lr": 0.0}, "lr"), ("gradient", {"nu": -1.0}, "nu"),
                           ("opt_lie", {"rule": "fltrust"}, "rule"), ("opt_ipm", {"rule": "nope"}, "rule"),
                           ("opt_lie", {"z": 1.0}, "allowed")]:
        with pytest.raises(ValueError, match=word):
            attacks.get(name, **hp)
    assert {"gradient", "opt_lie", "opt_ipm"} <= set(attacks.names())
    assert attacks.hparam_names("gradient") == ("steps", "lr", "nu", "rule")
    spec = attacks.hparam_spec("gradient")
    assert spec["lr"].traceable and spec["nu"].traceable and not spec["steps"].traceable


def test_gradient_lr_and_nu_are_injected_and_batched_in_one_program():
    # simulate_many keeps traceable hyper-parameters in the state (stages.inject_hyperparams): one
    # vmapped update over stacked states equals each setting built alone.
    u, m = jnp.asarray(skewed(8)), jnp.asarray(mask_first(N, 3))
    settings = [dict(lr=0.5, nu=1.0), dict(lr=0.25, nu=2.0)]
    injected = [stages.get("attack", "gradient", inject=True, steps=3, **hp) for hp in settings]
    assert set(injected[0].info["injected"]) == {"lr", "nu"}
    states = jax.tree.map(lambda *a: jnp.stack(a), *[s.init(u) for s in injected])
    ctx = RoundContext(m, 3, KEY)
    batched = jax.jit(jax.vmap(lambda st: injected[0].update(u, st, ctx)[0]))(states)
    for k, hp in enumerate(settings):
        alone = against("gradient", u, m, stages.get("rule", "median"), steps=3, **hp)
        np.testing.assert_allclose(np.asarray(batched[k]), alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(batched[0]), np.asarray(batched[1]))
