"""The stage protocol (`strike_jax.stages`), the registry (`strike_jax.registry`), injected
hyper-parameters, composed limits and the chain's keys."""

from __future__ import annotations

import inspect
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import aggregators as A
from strike_jax import attacks, registry, stages
from strike_jax.stages import RoundContext

KEY = jax.random.PRNGKey(7)


def _updates(n, d, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=d) + rng.exponential(size=(n, 1)) * rng.normal(size=d) + 0.3 * rng.normal(size=(n, d))
    return jnp.asarray(rows.astype(np.float32))


def _mask(n, f):
    return jnp.asarray(np.arange(n) < f)


# --- the chain: keys, composition, downstream -------------------------------------------------------


def test_chain_keys_reproduce_the_round():
    # strike_jax.training.round: the attack gets fold_in(key, 0); the aggregator (a rule, or a
    # chain that splits its key among its stages) gets fold_in(key, 1).
    n, d, f = 12, 40, 3
    U, mask = _updates(n, d), _mask(n, f)
    atk = attacks.get("mimic")
    sent, _ = atk.apply(U, mask, atk.init(U), key=jax.random.fold_in(KEY, 0))
    for pre in ([], ["nnm", "bucketing"]):
        agg = A.chain(*[A.get(p) for p in pre], A.get("dnc", b=20)) if pre else A.get("dnc", b=20)
        want, _ = agg.aggregate(sent, agg.init(sent), f=f, key=jax.random.fold_in(KEY, 1))
        pipe = stages.server_pipeline("dnc", attack="mimic", preaggregation=tuple(pre), defence_params={"b": 20})
        assert pipe.name == "+".join(["mimic", *pre, "dnc"])
        g, state, ctx = pipe.update(U, pipe.init(jax.ShapeDtypeStruct(U.shape, U.dtype)), RoundContext(mask, f, KEY))
        np.testing.assert_array_equal(np.asarray(g), np.asarray(want))
        assert int(state[0].t) == 1 and ctx.f == pipe.output_f(f) == (f if not pre else 2)  # rescaled f
    # Without an attack the pipeline keeps the same layout (the identity attack "none").
    pipe = stages.server_pipeline("dnc", defence_params={"b": 20})
    g, _, _ = pipe.update(U, pipe.init(U), RoundContext(mask, f, KEY))
    want, _ = A.get("dnc", b=20).aggregate(U, (), f=f, key=jax.random.fold_in(KEY, 1))
    np.testing.assert_array_equal(np.asarray(g), np.asarray(want))


def test_chain_order_and_flattening():
    nnm, buck, med = stages.get("preaggregator", "nnm"), stages.get("preaggregator", "bucketing"), stages.get(
        "rule", "median")
    strike = stages.get("attack", "strike")
    inner = stages.chain(nnm, buck, med)
    outer = stages.chain(strike, inner)
    assert outer.name == "strike+nnm+bucketing+median" and len(outer.parts) == 4 and outer.kind == "rule"
    with pytest.raises(ValueError, match="NNM before bucketing"):
        stages.chain(buck, nnm, med)
    with pytest.raises(ValueError, match="attack .*first"):
        stages.chain(nnm, strike, med)
    with pytest.raises(ValueError, match="at most one, last"):
        stages.chain(med, nnm)
    with pytest.raises(ValueError, match="not a stage"):
        stages.chain("median")


def test_white_box_attack_sees_the_downstream_chain():
    seen = {}

    def update(x, state, ctx):
        seen["down"] = ctx.downstream
        return x, state, ctx

    spy = stages.make_stage("spy", "attack", stages.empty_init, update)
    pipe = stages.chain(spy, stages.get("preaggregator", "nnm"), stages.get("rule", "trmean"))
    U, mask = _updates(9, 20), _mask(9, 2)
    g, _, ctx = pipe.update(U, pipe.init(U), RoundContext(mask, 2, KEY))
    down = seen["down"]
    assert down.name == "nnm+trmean" and ctx.downstream is None and ctx.f == 2
    g_down, _, _ = down.update(U, down.init(U), RoundContext(None, 2, jax.random.fold_in(KEY, 1)))
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_down))


# --- limits ---------------------------------------------------------------------------------------


def _accepts(stage, n, f, d=3):
    """Whether the stage's update accepts a concrete `f` (traced abstractly: the checks of a
    concrete f run while tracing, so nothing is compiled)."""
    U = jax.ShapeDtypeStruct((n, d), jnp.float32)
    try:
        jax.eval_shape(lambda u: stage.update(u, stage.init(U), RoundContext(_mask(n, f), f, KEY))[0], U)
    except ValueError as e:
        assert "tolerates at most" in str(e) or "can go" in str(e), e
        return False
    return True


@pytest.mark.parametrize("names,n", [
    (("krum",), 20), (("median",), 20), (("mean",), 7), (("cclip",), 7), (("dnc",), 8),
    (("bucketing", "multikrum"), 12), (("nnm", "bucketing", "krum"), 13), (("nnm", "bulyan"), 15),
    (("bucketing", "trmean"), 11), (("nnm", "mean"), 6),
])
def test_chain_max_f_is_the_composed_limit(names, n):
    kinds = {s: registry.find(s, ("preaggregator", "rule")).kind for s in names}
    pipe = stages.chain(stages.get("attack", "lie"), *[stages.get(kinds[s], s) for s in names])
    limit = pipe.max_f(n)
    accepted = [f for f in range(n + 1) if _accepts(pipe, n, f)]
    assert accepted == list(range(n + 1 if limit is None else limit + 1)), (names, n, limit)
    legacy = A.chain(*[A.get(s) for s in names]) if len(names) > 1 else A.get(names[0])
    assert legacy.max_f(n) == limit


def test_check_f_before_any_work():
    krum = stages.get("rule", "krum")
    assert stages.check_f(krum, 20, 8) == stages.check_f(krum, 20, np.int64(8)) == 8
    with pytest.raises(ValueError) as e:
        stages.check_f(krum, 20, 9)
    msg = str(e.value)
    assert msg == ("krum tolerates at most f=8 Byzantine rows among n=20; got f=9 (pass "
                   "allow_beyond_breakdown=True to run beyond the rule's breakdown point).")
    assert stages.check_f(krum, 20, 9, allow_beyond_breakdown=True) == 8
    # Issue 12's cases: median with f = 12 of 20; the whole pipeline's limit with bucketing.
    with pytest.raises(ValueError, match="median tolerates at most f=9"):
        stages.check_f(stages.server_pipeline("median", attack="strike"), 20, 12)
    pipe = stages.server_pipeline("krum", attack="lie", preaggregation=("bucketing",))
    assert stages.check_f(pipe, 20, 6) == 6  # krum on 10 buckets tolerates 3 = ceil(6 / 2)
    with pytest.raises(ValueError, match="lie\\+bucketing\\+krum tolerates at most f=6"):
        stages.check_f(pipe, 20, 7)
    assert stages.check_f(A.get("mean"), 20, 15) is None  # adapters work too; no limit claimed
    for bad in (-1, 21, 2.5, True):
        with pytest.raises(ValueError, match="allowed: an integer in"):
            stages.check_f(krum, 20, bad)


# --- injected hyper-parameters ---------------------------------------------------------------------


def test_inject_vmap_over_runs_equals_separate_builds_and_traces_once():
    n, d = 10, 64
    U, mask = _updates(n, d, seed=3), _mask(n, 3)
    shape = jax.ShapeDtypeStruct((n, d), jnp.float32)
    values = [(0.25, 0.5), (0.5, 1.0), (1.0, 5.0), (2.0, 10.0)]  # (STRIKE nu, CClip tau)
    pipes = [stages.server_pipeline("cclip", attack="strike", attack_params={"nu": nu}, defence_params={"tau": tau},
                                    inject=True) for nu, tau in values]
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[p.init(shape) for p in pipes])
    assert isinstance(states[0], stages.InjectState)
    np.testing.assert_array_equal(np.asarray(states[0].hparams["nu"]), [v[0] for v in values])
    assert states[0].hparams["nu"].dtype == jnp.float32
    traces = []

    def step(state):
        traces.append(1)
        g, state, _ = pipes[0].update(U, state, RoundContext(mask, mask.sum(), KEY))
        return g, state

    run = jax.jit(jax.vmap(step))
    g, new_states = run(states)
    g2, _ = run(new_states)  # a second round: same program
    assert len(traces) == 1
    for i, (nu, tau) in enumerate(values):
        sep = stages.server_pipeline("cclip", attack="strike", attack_params={"nu": nu}, defence_params={"tau": tau})
        gi, si, _ = jax.jit(lambda u, m, s: sep.update(u, s, RoundContext(m, m.sum(), KEY)))(U, mask, sep.init(shape))
        np.testing.assert_allclose(np.asarray(g[i]), np.asarray(gi), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(new_states[1].inner[i]), np.asarray(si[1]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(g[0]), np.asarray(g[3]))


@pytest.mark.parametrize("kind,name,hp", [
    ("attack", "lie", {"z": (0.5, 2.0)}), ("attack", "ipm", {"eps": (0.1, 3.0)}),
    ("rule", "rfa", {"eps": (1e-7, 1.0)}), ("rule", "dnc", {"c": (0.5, 2.0)}),
])
def test_every_traceable_hparam_accepts_traced_values(kind, name, hp):
    n, d = 8, 16
    U, mask = _updates(n, d, seed=4), _mask(n, 2)
    (pname, (a, b)), = hp.items()
    st = stages.get(kind, name, inject=True, **{pname: a})
    states = jax.tree.map(lambda *xs: jnp.stack(xs), st.init(U), stages.get(kind, name, inject=True,
                                                                             **{pname: b}).init(U))
    out, _ = jax.jit(jax.vmap(lambda s: st.update(U, s, RoundContext(mask, 2, KEY))[:2]))(states)
    for i, v in enumerate((a, b)):
        one = stages.get(kind, name, **{pname: v})
        np.testing.assert_allclose(np.asarray(out[i]), np.asarray(one.update(U, one.init(U),
                                                                             RoundContext(mask, 2, KEY))[0]),
                                   rtol=1e-5, atol=1e-6)


# --- the registry ---------------------------------------------------------------------------------

TRACEABLE = {
    ("attack", "strike"): {"nu": True}, ("attack", "lie"): {"z": True, "ddof": False, "sign": False},
    ("attack", "ipm"): {"eps": True},
    ("attack", "nonfinite"): {"value": False}, ("rule", "cclip"): {"tau": True, "iters": False},
    ("rule", "rfa"): {"iters": False, "eps": True, "start": False}, ("rule", "dnc"): {"c": True, "niters": False, "b": False},
    ("rule", "median"): {"midpoint": False}, ("preaggregator", "bucketing"): {"s": False, "rescale_f": False},
    ("preaggregator", "nnm"): {"include_self": False},
    # issue 11
    ("rule", "monna"): {"idx": False}, ("rule", "mda"): {"max_subsets": False}, ("rule", "smea"): {"max_subsets": False},
    ("rule", "signguard"): {"lower": True, "upper": True, "fraction": False},
    ("rule", "clippedclustering"): {"max_tau": True, "capacity": False},
    ("rule", "foolsgold"): {"num_clients": False, "sketch": False, "seed": False},
    ("preaggregator", "clipping"): {"c": True}, ("attack", "gaussian"): {"mu": True, "sigma": True},
    ("attack", "fang"): {"target": False, "b": True},
    ("attack", "agr_tailored"): {"rule": False, "perturbation": False, "lam0": True},
    ("attack", "gradient"): {"steps": False, "lr": True, "nu": True, "rule": False},
    ("attack", "opt_lie"): {"rule": False},
    ("attack", "opt_ipm"): {"rule": False},
    # issue 22: ByzFL's conventions as options
    ("rule", "krum"): {"neighbours": False}, ("rule", "multikrum"): {"neighbours": False},
    ("attack", "mimic"): {"target": False}, ("attack", "labelflip"): {"mode": False},
    # issue 23
    ("rule", "gas"): {"p": False, "base": False}, ("preaggregator", "uniformity"): {"tau": True},
    ("attack", "strike_diverse"): {"nu": True, "spread": True},
}
#: Hyper-parameters without a usable default (FoolsGold's history has one row per client).
REQUIRED = {("rule", "foolsgold"): {"num_clients": 4}}

#: Every registered stage's default hyper-parameters, written out (not read back from the code): the
#: paper's settings from SPEC §6-§7 (LIE z = 1.5, IPM eps = 0.1, STRIKE nu = 1, CClip tau = 10 with
#: one iteration, DnC c = 1, one iteration, b = 1000 coordinates, bucketing s = 2), the others from
#: their papers / reference code as the registry documents them. A changed default changes every
#: table: it must change here too.
DEFAULTS = {
    ("attack", "strike"): {"nu": 1.0}, ("attack", "bitflip"): {}, ("attack", "lie"): {"z": 1.5, "ddof": 0, "sign": "minus"},
    ("attack", "ipm"): {"eps": 0.1}, ("attack", "minmax"): {}, ("attack", "minsum"): {}, ("attack", "mimic"): {"target": None},
    ("attack", "nonfinite"): {"value": "nan"}, ("attack", "labelflip"): {"mode": "own"},
    ("attack", "gaussian"): {"mu": 0.0, "sigma": 1.0}, ("attack", "signflip"): {},
    ("attack", "fang"): {"target": "trmean", "b": 2.0},
    ("attack", "agr_tailored"): {"rule": "multikrum", "perturbation": "std", "lam0": 10.0},
    ("attack", "gradient"): {"steps": 50, "lr": 0.5, "nu": 1.0, "rule": "median"},
    ("attack", "opt_lie"): {"rule": "median"}, ("attack", "opt_ipm"): {"rule": "median"},
    ("preaggregator", "nnm"): {"include_self": True}, ("preaggregator", "bucketing"): {"s": 2, "rescale_f": True},
    ("preaggregator", "clipping"): {"c": 2.0}, ("preaggregator", "arc"): {},
    ("rule", "mean"): {}, ("rule", "median"): {"midpoint": False}, ("rule", "trmean"): {}, ("rule", "rbtm"): {},
    ("rule", "krum"): {"neighbours": "n-f-2"}, ("rule", "multikrum"): {"neighbours": "n-f-2"},
    ("rule", "rfa"): {"iters": 8, "eps": 1e-07, "start": "mean"},
    ("rule", "aksel"): {}, ("rule", "cclip"): {"tau": 10.0, "iters": 1},
    ("rule", "dnc"): {"c": 1.0, "niters": 1, "b": 1000},
    ("rule", "bulyan"): {}, ("rule", "meamed"): {}, ("rule", "monna"): {"idx": 0},
    ("rule", "mda"): {"max_subsets": 100000}, ("rule", "smea"): {"max_subsets": 20000}, ("rule", "caf"): {},
    ("rule", "signguard"): {"lower": 0.1, "upper": 3.0, "fraction": 0.1},
    ("rule", "clippedclustering"): {"max_tau": 100000.0, "capacity": 100000}, ("rule", "fltrust"): {},
    ("rule", "foolsgold"): {"num_clients": None, "sketch": None, "seed": 0},
    # issue 22: ByzFL's conventions are options (ours stay the defaults above); issue 23's stages
    ("attack", "strike_diverse"): {"nu": 1.0, "spread": 0.5}, ("preaggregator", "uniformity"): {"tau": 0.1},
    ("rule", "gas"): {"p": 1000, "base": "krum"},
}


def test_hparam_spec_traceability_and_defaults():
    """The registry's defaults are the documented ones (an explicit table, so a changed default fails
    here), every registered stage is in the table, and a stage built without arguments records
    exactly them."""
    registered = {(kind, name) for kind in registry.KINDS for name in registry.names(kind)}
    assert registered == set(DEFAULTS)
    for (kind, name), want in DEFAULTS.items():
        required = REQUIRED.get((kind, name), {})
        spec = registry.hparam_spec(kind, name)
        assert {k: p.traceable for k, p in spec.items()} == TRACEABLE.get((kind, name), {}), (kind, name)
        assert {k: p.default for k, p in spec.items()} == want, (kind, name)
        assert registry.validate(kind, name, required) == {**want, **required}
        stage = registry.build(kind, name, **required)
        assert stage.kind == kind and stage.name == name
        assert dict(stage.hparams) == {**want, **required}, (kind, name)
    assert A.get("cclip").hparams == {"tau": 10.0, "iters": 1}


def test_register_refuses_an_undeclared_or_defaultless_hyperparameter():
    def no_default(tau, *, backend=None):
        raise AssertionError("not called")

    def undeclared(tau=1.0, extra=2, *, backend=None):
        raise AssertionError("not called")

    for builder in (no_default, undeclared):
        with pytest.raises(TypeError, match="declare every hyper-parameter"):
            registry.register("rule", "test_only_never_registered", tau=registry.real())(builder)
    assert "test_only_never_registered" not in registry.names("rule")


def test_validation_errors_are_one_line():
    cases = [
        (("rule", "cclip", {"tau": -1}), "cclip: tau=-1 is not allowed; allowed: a finite real number > 0."),
        (("rule", "rfa", {"iters": 2.5}), "rfa: iters=2.5 is not allowed; allowed: an integer >= 1."),
        (("attack", "nonfinite", {"value": "zero"}),
         "nonfinite: value='zero' is not allowed; allowed: one of 'nan', 'inf', '-inf', 'mixed'."),
        (("rule", "median", {"midpoint": 1}), "median: midpoint=1 is not allowed; allowed: True or False."),
        (("rule", "rfa", {"iterations": 3}), "rfa: unknown hyper-parameter(s) ['iterations']; allowed: iters=8, "
                                             "eps=1e-07, start='mean'."),
        (("attack", "krum", {}), "Unknown attack 'krum'; allowed: " + ", ".join(attacks.names()) + "."),
    ]
    for (kind, name, hp), msg in cases:
        with pytest.raises(ValueError) as e:
            stages.get(kind, name, **hp)
        assert str(e.value) == msg and "\n" not in msg
    # A static hyper-parameter cannot be traced; the direct builder validates too.
    with pytest.raises(ValueError, match="bucketing: s is static"):
        jax.jit(lambda s: stages.get("preaggregator", "bucketing", s=s).name)(2)
    with pytest.raises(ValueError, match="tau=0.0 is not allowed"):
        A.cclip(tau=0.0)
    assert registry.validate("rule", "rfa", {"iters": 4.0}) == {"iters": 4, "eps": 1e-7, "start": "mean"}


def test_attack_stage_shapes_and_adapter():
    U = _updates(6, 5)
    a = attacks.get("strike")
    assert a.stage.kind == "attack" and a.stage.output_rows(6) == 6
    with pytest.raises(AssertionError, match="byzantine_mask must be"):
        a.apply(U, jnp.zeros(5, bool), ())
    with pytest.raises(AssertionError, match="strike: the updates must be"):
        a.apply(U[0], jnp.zeros(5, bool), ())
    with pytest.raises(ValueError, match="no byzantine_mask"):
        a.stage.update(U, (), RoundContext(None, 0, None))
    lf = stages.get("attack", "labelflip")
    assert lf.info["data_level"] and lf.info["label_map"](3, 10) == 6
    assert stages.get("attack", "mimic").info["stateful"]


# --- packaging ------------------------------------------------------------------------------------


def test_module_names_and_lazy_top_level():
    import strike_jax
    import strike_jax.attacks.strike as strike_module

    assert inspect.ismodule(strike_module) and strike_module.strike_vector is attacks.strike_vector
    assert attacks.strike is strike_module and attacks.strike_stages is strike_module
    for name in ("aggregators", "attacks", "ops", "stages", "registry", "simulate", "training", "Config"):
        assert name in dir(strike_jax)
    code = ("import sys, strike_jax, strike_jax.aggregators, strike_jax.attacks; "
            "print(any(m.startswith(('strike_jax.training', 'strike_jax.data', 'strike_jax.models')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
