"""The AGR-tailored attack (Shejwalkar & Houmansadr, "Manipulating the Byzantine: optimizing model
poisoning attacks and defenses for federated learning", NDSS 2021, Sec. IV-B, Alg. 1).

    attack = strike_jax.attacks.get("agr_tailored", rule="multikrum", perturbation="std")
    pipe = strike_jax.stages.server_pipeline("median", attack="agr_tailored", preaggregation=("nnm",))

All Byzantine clients send `mal = mu - lam * dev` with `mu`, `sigma` the mean and biased std of
`H`, and `dev` the perturbation: "std" (`sigma`), "unit" (`mu / ||mu||`) or "sign" (`sign(mu)`),
i.e. the paper's inverse std, inverse unit vector and inverse sign perturbations `-dev`.
`lam` is searched for the defence, which the attacker knows (white box).

The defence attacked: in a pipeline (`stages.chain`, `stages.server_pipeline`, the simulation's
round) the attack receives the round's real downstream chain, pre-aggregators included, as
`ctx.downstream` (a Stage) and attacks that. Without one (the adapter `attacks.get(...).apply`,
or a bare `update` call) it attacks the builder's `rule`, built by name with its default
hyper-parameters.

* Krum, Multi-Krum, Bulyan alone (selection rules): the largest `lam` for which the rule
  *selects* the Byzantine rows: Krum's winner is Byzantine; for Multi-Krum every Byzantine row is
  among the `n - f'` rows of lowest score (`f' = min(f, (n-3)//2)`); Bulyan is attacked like
  Multi-Krum (the paper's code: "our attacks on multi-krum and Bulyan aggregations are the
  same"). Search: SPEC §6's NDSS scheme (`baselines.ndss_search`, `lam0 = 10`, returning the last
  feasible `lam`).
* Every other defence (other rules, and any chain with pre-aggregators): the paper's objective
  `||AGR(mal, H) - mu||`, maximised by the reference code's hill climb: `lam = lam0, step = lam0,
  lam_ok = 0, prev = -1`; while `|lam_ok - lam| > 1e-5`: if the objective at `lam` exceeds
  `prev`, `lam_ok = lam` and `lam += step / 2`, else `lam -= step / 2`; `step /= 2`; `prev` =
  the objective. The defence is called on the round's real matrix with the Byzantine rows
  replaced, with the round's `ctx.f`, `ctx.clients` and `ctx.root_update`, the attack's own
  `key` (fixed during the search: the attacker does not know the server's randomness) and a
  fresh `init` state (the attacker does not see the server's state of a stateful defence).

Sign convention: as MinMax/MinSum in this project (SPEC §6), the formula is applied in update
space.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops, registry
from strike_jax.aggregators.distance import krum_limit
from strike_jax.attacks.base import (
    attack_stage,
    downstream_defence,
    krum_scores_with_rows_replaced,
    reference_mask,
    replace_rows,
)
from strike_jax.attacks.baselines import NDSS_MAX_ITERS, NDSS_TOL, ndss_search
from strike_jax.registry import choice, real, register
from strike_jax.stages import Stage

Array = jax.Array

PERTURBATIONS = ("std", "unit", "sign")
SELECTION_RULES = ("krum", "multikrum", "bulyan")
#: Rules the builder's `rule` cannot name: they need round inputs or builder arguments of their
#: own. In a pipeline they are attacked through `ctx.downstream` (which carries them).
UNSUPPORTED_RULES = ("fltrust", "foolsgold")
#: The rules the builder's `rule` may name (every rule registered when this module loads, but those).
AGR_RULES = tuple(r for r in registry.names("rule") if r not in UNSUPPORTED_RULES)
RULE_PARAM = choice(*AGR_RULES)
RULE_PARAM = RULE_PARAM._replace(
    allowed=RULE_PARAM.allowed + " (not 'fltrust' or 'foolsgold': they need round inputs, root update or "
    "client ids, so attack them through the pipeline's ctx.downstream)")


def perturbation_vector(updates: Array, byzantine_mask: Array, perturbation: str, backend: ops.Backend):
    """`(stats, dev, dots)`: the column statistics of `H` (`ops.ColumnStats`, centre `mu`, Gram
    matrix of the rows centred at `mu`), the deviation `dev` `[d]` and `q_i = <X_i - mu, dev>` `[n]`."""
    ref = reference_mask(byzantine_mask)
    st = ops.column_stats(updates, ops.mean_weights(ref, updates.dtype), gram=True, backend=backend)
    mu = st.centre
    if perturbation == "std":
        return st, st.sigma, st.dots
    if perturbation == "unit":
        nrm = jnp.sqrt(jnp.vdot(mu, mu))
        dev = jnp.where(nrm > 0, mu / jnp.where(nrm > 0, nrm, 1.0), 0.0)
    else:
        dev = jnp.sign(mu)
    return st, dev, ops.centred_matvec(updates, mu, dev, backend=backend)


def selection_feasible(st, dev: Array, dots: Array, byz: Array, lam: Array, rule: str) -> Array:
    """Whether `rule` (Krum / Multi-Krum; Bulyan as Multi-Krum) selects the Byzantine rows when they
    all send `mu - lam * dev`. Distances from the centred Gram matrix of `X` about `mu`:
    `||X_i - mal||^2 = G_ii + 2 lam q_i + lam^2 ||dev||^2`."""
    n = byz.shape[0]
    d2, _ = ops.sq_dists_from_gram(st.gram)
    to_mal = jnp.diagonal(st.gram) + 2.0 * lam * dots + lam * lam * jnp.vdot(dev, dev)
    scores = krum_scores_with_rows_replaced(d2, byz, to_mal)
    if rule == "krum":
        return byz[jnp.argmin(scores)]
    # Multi-Krum keeps the n - f' lowest scores (ties by row index).
    chosen = ops.smallest_k_mask(scores, n - jnp.minimum(byz.sum(), krum_limit(n)))
    return jnp.all(chosen | ~byz)


def hill_climb(objective, dtype, *, lam0: float, tol: float = NDSS_TOL, max_iters: int = NDSS_MAX_ITERS) -> Array:
    """The reference code's search for objective-maximising rules (see the module docstring):
    returns the last `lam` whose objective beat the previous step's."""

    def body(_, carry):
        lam, step, lam_ok, prev = carry
        active = jnp.abs(lam_ok - lam) > tol
        loss = objective(lam)
        up = prev < loss
        lam_ok = jnp.where(active & up, lam, lam_ok)
        new_lam = jnp.where(up, lam + 0.5 * step, lam - 0.5 * step)
        return (jnp.where(active, new_lam, lam), jnp.where(active, 0.5 * step, step), lam_ok,
                jnp.where(active, loss, prev))

    init = (jnp.asarray(lam0, dtype), jnp.asarray(lam0, dtype), jnp.zeros((), dtype), jnp.asarray(-1.0, dtype))
    return lax.fori_loop(0, max_iters, body, init)[2]


@functools.partial(jax.jit, static_argnames=("rule", "perturbation", "backend"))
def _selection_attack(updates: Array, byz: Array, lam0: Array, *, rule: str, perturbation: str,
                      backend: ops.Backend) -> tuple[Array, Array]:
    st, dev, dots = perturbation_vector(updates, byz, perturbation, backend)
    lam = ndss_search(lambda lam: selection_feasible(st, dev, dots, byz, lam, rule), updates.dtype, lam0=lam0)
    return st.centre - lam * dev, lam


def agr_tailored_vector(updates: Array, byzantine_mask: Array, defence: Stage, perturbation: str, lam0, ctx,
                        backend: ops.Backend) -> tuple[Array, Array]:
    """`(vector [d], lam)` of the AGR-tailored attack against the stage `defence` (a rule or a
    chain of pre-aggregators and a rule; see the module docstring). `ctx` is the attack's round
    context: its `f`, `key`, `clients` and `root_update` are handed to `defence`."""
    byz = jnp.asarray(byzantine_mask, bool)
    dtype = updates.dtype
    lam0 = jnp.asarray(lam0, dtype)
    if defence.name in SELECTION_RULES:
        return _selection_attack(updates, byz, lam0, rule=defence.name, perturbation=perturbation, backend=backend)
    st, dev, _ = perturbation_vector(updates, byz, perturbation, backend)
    mu = st.centre
    if ctx.downstream is not defence:  # a defence other than the round's: from its init state
        ctx = ctx._replace(downstream=defence, downstream_state=None)
    _, aggregate = downstream_defence(updates, defence, ctx)

    def objective(lam):
        diff = aggregate(replace_rows(updates, byz, mu - lam * dev)) - mu
        return jnp.sqrt(jnp.vdot(diff, diff))

    lam = hill_climb(objective, dtype, lam0=lam0)
    return mu - lam * dev, lam


@register("attack", "agr_tailored", rule=RULE_PARAM, perturbation=choice(*PERTURBATIONS), lam0=real())
def agr_tailored(rule="multikrum", perturbation="std", lam0=10.0, *, backend: ops.Backend | None = None) -> Stage:
    """The AGR-tailored attack of Shejwalkar & Houmansadr (NDSS 2021) (see the module docstring).

    Args:
      rule: the rule attacked when the round context has no `downstream` (outside a pipeline): a
        name of `strike_jax.aggregators.names()` other than "fltrust" and "foolsgold", built with
        its default hyper-parameters (static). In a pipeline the attack targets `ctx.downstream`.
      perturbation: "std", "unit" or "sign" (static; see the module docstring).
      lam0: the search's start and first step (`> 0`; traceable; 10 as SPEC §6).
      backend: `ops.Backend` (resolved now; also for the fallback rule).

    Returns:
      An attack `Stage`; `update` needs `ctx.key` when the defence is randomised (e.g. "dnc",
      "signguard", bucketing): `info["needs_key"]` is the fallback rule's.
    """
    backend = ops.resolve(backend)
    fallback = registry.build("rule", rule, backend=backend)

    def core(updates, mask, state, key, ctx):
        defence = fallback if ctx.downstream is None else ctx.downstream
        vec, _ = agr_tailored_vector(updates, mask, defence, perturbation, lam0, ctx, backend)
        return replace_rows(updates, mask, vec), state

    return attack_stage("agr_tailored", core, with_ctx=True, needs_key=bool(fallback.info.get("needs_key", False)),
                        white_box=True)


__all__ = ["AGR_RULES", "PERTURBATIONS", "RULE_PARAM", "agr_tailored", "agr_tailored_vector", "hill_climb",
           "perturbation_vector", "selection_feasible"]
