"""Defence-aware (white-box) attacks: gradient ascent through the aggregation, and ByzFL's
optimised LIE / IPM (issue 10, part 4).

All three are registered attack stages that read the defence from the round context, like
`agr_tailored`: in a pipeline (`stages.chain`, `stages.server_pipeline`, the simulation's round)
`ctx.downstream` is the round's real pre-aggregation and rule and `ctx.downstream_state` its
state this round (`base.downstream_defence`); without one (the adapter `attacks.get(...).apply`,
a bare `update`) they attack the builder's `rule` (default "median") from its `init` state. The
defence is called with the round's `f`, `clients`, `root_update` and the attack's own key. Each
chooses the Byzantine rows that push the aggregate furthest from the honest mean `mu`, i.e. that
maximise `||defence(U') - mu||^2`, `U'` = `U` with the Byzantine rows replaced:

* `gradient`: the Byzantine rows start at STRIKE's vector (SPEC §6) and climb that objective by
  normalised gradient ascent through the defence (`ascend`; each row may move on its own).
* `opt_lie`: `mu - z * sigma` (SPEC §6 LIE, `baselines.lie_vector`) with the factor `z` taken
  from a grid, the one giving the largest deviation; the whole grid is one vmapped program.
* `opt_ipm`: `-eps * mu` (SPEC §6 IPM, `baselines.ipm_vector`), `eps` chosen the same way.

The optimiser `ascend` is shared with `strike_jax.analysis` (empirical (f, kappa)-robustness and
the worst-nu search): a monotone normalised-gradient ascent with an adaptive step. A proposal
`x + step * scale * g / ||g||` is kept only if the objective does not decrease (strictly
increases, for the random directions tried where the gradient vanishes); a kept step grows the
step by `growth`, a rejected one shrinks it by `shrink`. The result is therefore never worse than
its starting point, and on an unbounded objective (the plain mean) the step grows geometrically.
Selection rules (Krum, Median, ...) are piecewise smooth: the gradient is that of the currently
selected rows (zero for rows the rule ignores), so a Byzantine row that the rule has discarded
gets no gradient; the random directions, the restarts of `empirical_kappa` and the best-so-far
bookkeeping deal with those plateaus.

References:
  Baruch, Baruch, Goldberg, "A Little Is Enough", NeurIPS 2019 (LIE).
  Xie, Koyejo, Gupta, "Fall of Empires", UAI 2020 (IPM).
  ByzFL (EPFL LPD), `Optimal_ALittleIsEnough`, `Optimal_InnerProductManipulation`: the factor is
    chosen by a sequential line search maximising `||agg - mu||` (20 evaluations); here a fixed
    grid is evaluated at once (no sequential dependence, one compiled program).
  Shejwalkar & Houmansadr, NDSS 2021, and Fang et al., USENIX Security 2020: optimising the
    Byzantine update against a known aggregation rule.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops, registry
from strike_jax.attacks.agr_tailored import RULE_PARAM
from strike_jax.attacks.base import attack_stage, downstream_defence, reference_mask, replace_rows
from strike_jax.attacks.baselines import ipm_vector, lie_vector
from strike_jax.attacks.strike import strike_vector
from strike_jax.registry import integer, real, register
from strike_jax.stages import Stage

Array = jax.Array
AggregateFn = Callable[[Array], Array]

#: The white-box attacks of this module (their stages also carry `info["white_box"]`).
WHITE_BOX = ("gradient", "opt_lie", "opt_ipm")

#: Default LIE factors `z` (vector `mu - z * sigma`). Signed: `z < 0` is ByzFL's
#: `mu + tau * sigma` with `tau = -z >= 0`, `z > 0` the SPEC/Baruch sign; ByzFL's line search
#: starts at 0 with steps of 10, doubling, so magnitudes up to ~100 are covered.
LIE_FACTORS: tuple[float, ...] = tuple(
    [0.0] + [s * v for v in (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0)
             for s in (1.0, -1.0)])
#: Default IPM factors `eps` (vector `-eps * mu`), as ByzFL non-negative.
IPM_FACTORS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
                                  20.0, 50.0, 100.0)


# --------------------------------------------------------------------------------------- ascent


class AscentResult(NamedTuple):
    """Output of `ascend` (leading batch axes if vmapped).

    Attributes:
      x: the best point found (same shape as `x0`).
      value: scalar objective at `x` (the maximum seen).
      initial_value: scalar objective at `x0`.
      trace: `[steps]` the best value after each step (non-decreasing).
      step: scalar, the final step length (in units of `scale`).
    """

    x: Array
    value: Array
    initial_value: Array
    trace: Array
    step: Array


def ascend(objective: Callable[[Array], Array], x0: Array, *, steps: int, lr, scale=1.0,
           free: Array | None = None, key: Array | None = None, growth: float = 1.25, shrink: float = 0.5,
           max_step: float = 1e3, project: Callable[[Array], Array] | None = None) -> AscentResult:
    """Monotone normalised-gradient ascent with an adaptive step (see module docstring).

    Each of `steps` iterations costs one `value_and_grad` of `objective`. Pure and traceable
    (`lax.scan`, static trip count): jit it, vmap it over restarts.

    Args:
      objective: scalar function of an array shaped like `x0` (maximised).
      x0: starting point.
      steps: number of iterations (static, >= 0).
      lr: initial step length in units of `scale` (may be traced).
      scale: the length unit (e.g. the honest rows' RMS spread), scalar, may be traced.
      free: optional bool mask broadcastable to `x0` (e.g. `[n, 1]` for Byzantine rows): only
        these entries move; the gradient elsewhere is ignored.
      key: PRNG key for the random directions tried where the (masked) gradient is zero; None
        uses `PRNGKey(0)`.
      growth, shrink: step multipliers after an accepted / rejected proposal.
      max_step: cap on the step length (in units of `scale`), so that an unbounded objective
        grows geometrically without overflowing.
      project: optional map applied to every proposal (e.g. a clip onto an interval).

    Returns:
      `AscentResult`.
    """
    steps = int(steps)
    key = jax.random.PRNGKey(0) if key is None else key
    freef = None if free is None else jnp.broadcast_to(jnp.asarray(free, bool), x0.shape)
    vg = jax.value_and_grad(objective)
    dtype = x0.dtype

    def masked(g):
        return g if freef is None else jnp.where(freef, g, jnp.zeros((), dtype))

    # Iteration 0 evaluates x0 itself, so the objective is traced once (half the compile time).
    def body(carry, k):
        x, v, g, step = carry
        first = k == 0
        gm = masked(g)
        gm = jnp.where(jnp.isfinite(gm), gm, jnp.zeros((), dtype))
        nrm = jnp.sqrt(jnp.sum(gm * gm))
        rnd = masked(jax.random.normal(jax.random.fold_in(key, k), x0.shape, dtype))
        rnd_n = jnp.sqrt(jnp.sum(rnd * rnd))
        use_grad = nrm > 0
        direction = jnp.where(use_grad, gm / jnp.where(use_grad, nrm, 1.0), rnd / jnp.maximum(rnd_n, 1e-30))
        prop = x + (step * scale).astype(dtype) * direction
        if project is not None:
            prop = project(prop)
        prop = jnp.where(first, x, prop)
        vp, gp = vg(prop)
        vp = jnp.where(jnp.isnan(vp), -jnp.inf, vp)
        ok = first | (jnp.isfinite(vp) & jnp.where(use_grad, vp >= v, vp > v))
        x = jnp.where(ok, prop, x)
        v = jnp.where(ok, vp, v)
        g = jnp.where(ok, gp, g)
        grown = jnp.where(ok, jnp.minimum(step * growth, max_step), step * shrink)
        step = jnp.where(first, step, grown)
        return (x, v, g, step), v

    step0 = jnp.asarray(lr, dtype)
    init = (x0, jnp.asarray(-jnp.inf, dtype), jnp.zeros_like(x0), step0)
    (x, v, _, step), trace = lax.scan(body, init, jnp.arange(steps + 1))
    v0, trace = trace[0], trace[1:]
    return AscentResult(x, v, v0, trace, step)


def honest_stats(updates: Array, byzantine_mask: Array, *, backend: ops.Backend | None = None) -> tuple[Array, Array]:
    """`(mu [d], r)`: the honest mean and RMS spread `r = sqrt(mean_i ||H_i - mu||^2)` over the
    reference rows (`base.reference_mask`: the honest rows, or all rows if none is honest); one
    `ops.column_stats` pass (`r` is the norm of the biased coordinate-wise std)."""
    ref = reference_mask(byzantine_mask)
    st = ops.column_stats(updates, ops.mean_weights(ref, updates.dtype), gram=False, backend=backend)
    return st.centre, jnp.sqrt(jnp.vdot(st.sigma, st.sigma))


def _scale(r: Array, mu: Array) -> Array:
    # Steps are measured in units of the honest spread; if the honest rows coincide, fall back to
    # the scale of the mean (or 1).
    alt = jnp.maximum(jnp.sqrt(jnp.sum(mu * mu)), 1.0)
    return jnp.where(r > 0, r, alt)


def deviation_sq(aggregate_fn: AggregateFn, updates: Array, mu: Array) -> Array:
    """`||aggregate_fn(updates) - mu||^2` (the white-box attacks' objective)."""
    g = aggregate_fn(updates)
    return jnp.sum(jnp.square(g - mu))


# ------------------------------------------------------------------------------------ gradient


class GradientAttackResult(NamedTuple):
    """Output of `gradient_attack`.

    Attributes:
      updates: `[n, d]` with the Byzantine rows optimised (honest rows untouched).
      deviation_sq: `||aggregate_fn(updates) - mu||^2` reached.
      initial_deviation_sq: the same at the STRIKE initialisation.
      trace: `[steps]` best squared deviation after each step.
    """

    updates: Array
    deviation_sq: Array
    initial_deviation_sq: Array
    trace: Array


def gradient_attack(updates: Array, byzantine_mask: Array, aggregate_fn: AggregateFn, *, steps: int = 50, lr=0.5,
                    nu=1.0, key: Array | None = None, init: Array | None = None,
                    backend: ops.Backend | None = None) -> GradientAttackResult:
    """Byzantine rows optimised by gradient ascent through `aggregate_fn` (issue 10, part 4).

    Objective: `||aggregate_fn(U') - mu||^2`, `mu` the honest mean (SPEC §6: honest rows, or the
    Byzantine rows' own updates when none is honest). Start: every Byzantine row is STRIKE's
    vector `g_S + nu * alpha * dev` (SPEC §6), unless `init` is given. Then `ascend` over the
    Byzantine rows with steps in units of the honest RMS spread. Monotone: the result's deviation
    is never below the initialisation's.

    Args:
      updates: `[n, d]` honestly computed updates.
      byzantine_mask: `[n]` bool (`f` = its sum, may be traced).
      aggregate_fn: the defence, `[n, d] -> [d]` (differentiable; `f`, state, key bound inside).
      steps: ascent iterations (static).
      lr: initial step length as a fraction of the honest RMS spread (may be traced).
      nu: STRIKE's factor for the initialisation (may be traced).
      key: PRNG key for random directions on plateaus (None: PRNGKey(0)).
      init: optional `[n, d]` starting matrix (its Byzantine rows are used instead of STRIKE's).
      backend: `ops.Backend` of the statistics and of STRIKE (None: the platform's default).

    Returns:
      `GradientAttackResult`.
    """
    mask = jnp.asarray(byzantine_mask, bool)
    mu, r = honest_stats(updates, mask, backend=backend)
    if init is None:
        start = replace_rows(updates, mask, strike_vector(updates, mask, nu, backend=backend).vector)
    else:
        start = jnp.where(mask[:, None], jnp.asarray(init, updates.dtype), updates)
    res = ascend(lambda u: deviation_sq(aggregate_fn, u, mu), start, steps=steps, lr=lr, scale=_scale(r, mu),
                 free=mask[:, None], key=key)
    out = jnp.where(mask[:, None], res.x, updates)
    return GradientAttackResult(out, res.value, res.initial_value, res.trace)



@register("attack", "gradient", steps=integer(low=0), lr=real(), nu=real(), rule=RULE_PARAM)
def gradient(steps=50, lr=0.5, nu=1.0, rule="median", *, backend: ops.Backend | None = None) -> Stage:
    """The gradient attack (white-box): see `gradient_attack` and the module docstring.

    Args:
      steps: ascent iterations (static integer >= 0; 0 gives STRIKE's rows).
      lr: initial step as a fraction of the honest RMS spread (`> 0`; traceable).
      nu: STRIKE's factor of the initialisation (`> 0`; traceable).
      rule: the rule attacked when the round context has no `downstream` (static; as
        `agr_tailored`'s `rule`). In a pipeline the attack climbs through `ctx.downstream`.
      backend: `ops.Backend` (resolved now; also for the fallback rule).

    Returns:
      An attack `Stage` (`info["white_box"]`); `update` uses `ctx.key` for the defence's
      randomness and the ascent's random directions (None: a fixed key, unless the fallback rule
      is randomised: `info["needs_key"]`).
    """
    backend = ops.resolve(backend)
    fallback = registry.build("rule", rule, backend=backend)

    def core(updates, mask, state, key, ctx):
        _, fn = downstream_defence(updates, fallback, ctx)
        res = gradient_attack(updates, mask, fn, steps=steps, lr=lr, nu=nu, key=key, backend=backend)
        return res.updates, state

    return attack_stage("gradient", core, with_ctx=True, needs_key=bool(fallback.info.get("needs_key", False)),
                        white_box=True)


# ------------------------------------------------------------------------- optimised LIE / IPM


class FactorSearchResult(NamedTuple):
    """Output of `opt_lie_vector` / `opt_ipm_vector`.

    Attributes:
      vector: `[d]` the Byzantine vector at the chosen factor.
      factor: scalar, the chosen factor.
      index: int32 scalar, its position in the grid (the first maximiser on ties).
      deviations: `[k]` `||aggregate_fn(U_k) - mu||` for every factor of the grid.
    """

    vector: Array
    factor: Array
    index: Array  # type: ignore[assignment]  # a field named like tuple.index(): mypy sees an override; the name is public API
    deviations: Array


def _factor_search(updates, mask, aggregate_fn, factors, candidate, backend):
    mask = jnp.asarray(mask, bool)
    mu, _ = honest_stats(updates, mask, backend=backend)
    factors = jnp.asarray(factors, updates.dtype)
    # vmap keeps the honest statistics inside `candidate` unbatched (computed once).
    vectors = jax.vmap(candidate)(factors)

    def deviation(v):
        return jnp.sqrt(deviation_sq(aggregate_fn, replace_rows(updates, mask, v), mu))

    devs = jax.vmap(deviation)(vectors)
    idx = jnp.argmax(jnp.where(jnp.isnan(devs), -jnp.inf, devs)).astype(jnp.int32)
    return FactorSearchResult(vectors[idx], factors[idx], idx, devs)


def opt_lie_vector(updates: Array, byzantine_mask: Array, aggregate_fn: AggregateFn,
                   factors: Sequence[float] | Array = LIE_FACTORS, *,
                   backend: ops.Backend | None = None) -> FactorSearchResult:
    """Optimised LIE: `mu - z * sigma` (`baselines.lie_vector`) with the grid's `z` maximising
    `||aggregate_fn(U_z) - mu||`.

    `mu`, `sigma`: mean and biased coordinate-wise std of the honest rows (SPEC §6 LIE). Every
    candidate matrix `U_z` (all Byzantine rows = the vector) is aggregated in one vmapped program.

    Args:
      updates: `[n, d]`; byzantine_mask: `[n]` bool (may be traced).
      aggregate_fn: the defence `[n, d] -> [d]`.
      factors: `[k]` grid of `z` (default `LIE_FACTORS`, signed).
      backend: `ops.Backend` (None: the platform's default).

    Returns:
      `FactorSearchResult`.
    """
    mask = jnp.asarray(byzantine_mask, bool)
    return _factor_search(updates, mask, aggregate_fn, factors,
                          lambda z: lie_vector(updates, mask, z, backend=backend), backend)


def opt_ipm_vector(updates: Array, byzantine_mask: Array, aggregate_fn: AggregateFn,
                   factors: Sequence[float] | Array = IPM_FACTORS, *,
                   backend: ops.Backend | None = None) -> FactorSearchResult:
    """Optimised IPM: `-eps * mu` (`baselines.ipm_vector`) with the grid's `eps` maximising
    `||aggregate_fn(U_eps) - mu||`.

    Args and returns as `opt_lie_vector` (default grid `IPM_FACTORS`).
    """
    mask = jnp.asarray(byzantine_mask, bool)
    return _factor_search(updates, mask, aggregate_fn, factors, lambda e: ipm_vector(updates, mask, e), backend)


def _grid_attack(name: str, search: Callable[..., FactorSearchResult], rule: str, backend: ops.Backend | None) -> Stage:
    backend = ops.resolve(backend)
    fallback = registry.build("rule", rule, backend=backend)

    def core(updates, mask, state, key, ctx):
        _, fn = downstream_defence(updates, fallback, ctx)
        res = search(updates, mask, fn, backend=backend)
        return replace_rows(updates, mask, res.vector), state

    return attack_stage(name, core, with_ctx=True, needs_key=bool(fallback.info.get("needs_key", False)),
                        white_box=True)


@register("attack", "opt_lie", rule=RULE_PARAM)
def opt_lie(rule="median", *, backend: ops.Backend | None = None) -> Stage:
    """Optimised LIE (white-box; ByzFL's `Optimal_ALittleIsEnough`): see `opt_lie_vector`; the grid
    is `LIE_FACTORS`.

    Args:
      rule: the rule attacked outside a pipeline (static; as `gradient`'s).
      backend: `ops.Backend` (resolved now).
    """
    return _grid_attack("opt_lie", opt_lie_vector, rule, backend)


@register("attack", "opt_ipm", rule=RULE_PARAM)
def opt_ipm(rule="median", *, backend: ops.Backend | None = None) -> Stage:
    """Optimised IPM (white-box; ByzFL's `Optimal_InnerProductManipulation`): see `opt_ipm_vector`;
    the grid is `IPM_FACTORS`.

    Args:
      rule: the rule attacked outside a pipeline (static; as `gradient`'s).
      backend: `ops.Backend` (resolved now).
    """
    return _grid_attack("opt_ipm", opt_ipm_vector, rule, backend)


__all__ = [
    "AscentResult",
    "FactorSearchResult",
    "GradientAttackResult",
    "IPM_FACTORS",
    "LIE_FACTORS",
    "WHITE_BOX",
    "ascend",
    "deviation_sq",
    "gradient",
    "gradient_attack",
    "honest_stats",
    "opt_ipm",
    "opt_ipm_vector",
    "opt_lie",
    "opt_lie_vector",
]
