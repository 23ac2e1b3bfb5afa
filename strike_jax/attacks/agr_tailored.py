"""The AGR-tailored attack (Shejwalkar & Houmansadr, "Manipulating the Byzantine: optimizing model
poisoning attacks and defenses for federated learning", NDSS 2021, Sec. IV-B, Alg. 1).

    attack = strike_jax.attacks.get("agr_tailored", rule="multikrum", perturbation="std")

All Byzantine clients send `mal = mu - lam * dev` with `mu`, `sigma` the mean and biased std of
`H`, and `dev` the perturbation: "std" (`sigma`), "unit" (`mu / ||mu||`) or "sign" (`sign(mu)`),
i.e. the paper's inverse std, inverse unit vector and inverse sign perturbations `-dev`.
`lam` is searched for the defence, which the attacker knows (white box):

* Krum, Multi-Krum, Bulyan (selection rules): the largest `lam` for which the rule *selects* the
  Byzantine rows: Krum's winner is Byzantine; for Multi-Krum every Byzantine row is among the
  `n - f'` rows of lowest score (`f' = min(f, (n-3)//2)`); Bulyan is attacked like Multi-Krum (the
  paper's code: "our attacks on multi-krum and Bulyan aggregations are the same"). Search: SPEC
  §6's NDSS scheme (`baselines.ndss_search`, `lam0 = 10`, returning the last feasible `lam`).
* Every other rule: the paper's objective `||AGR(mal, H) - mu||`, maximised by the reference
  code's hill climb: `lam = lam0, step = lam0, lam_ok = 0, prev = -1`; while
  `|lam_ok - lam| > 1e-5`: if the objective at `lam` exceeds `prev`, `lam_ok = lam` and
  `lam += step / 2`, else `lam -= step / 2`; `step /= 2`; `prev` = the objective. The rule is
  called on the round's real matrix with the Byzantine rows replaced, with the round's `f` and
  the attack's `key` (a fixed key during the search) and a fresh `rule.init` state (the attacker
  does not see the server's state of a stateful rule).

Sign convention: as MinMax/MinSum in this project (SPEC §6), the formula is applied in update
space. The attack only knows the defence it was built with: the simulation will later hand
white-box attacks the round's actual chain (pre-aggregators included); until then `rule` names
the rule alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops
from strike_jax.aggregators.distance import krum_limit, krum_scores
from strike_jax.attacks import _ops
from strike_jax.attacks.base import (
    Attack,
    check_real,
    empty_init,
    make_attack,
    mean_weights,
    reference_mask,
    replace_rows,
)
from strike_jax.attacks.baselines import NDSS_MAX_ITERS, NDSS_TOL, ndss_search

Array = jax.Array

PERTURBATIONS = ("std", "unit", "sign")
SELECTION_RULES = ("krum", "multikrum", "bulyan")
#: Rules the attack cannot call: they need round inputs beyond the matrix.
UNSUPPORTED_RULES = ("fltrust", "foolsgold")


def perturbation_vector(updates: Array, byzantine_mask: Array, perturbation: str):
    """`(stats, dev, dots)`: the column statistics of `H` (`_ops.ColumnStats`, centre `mu`), the
    deviation `dev` `[d]` and `q_i = <X_i - mu, dev>` `[n]`."""
    ref = reference_mask(byzantine_mask)
    st = _ops.column_stats(updates, mean_weights(ref, updates.dtype), gram=True)
    mu = st.centre
    if perturbation == "std":
        return st, st.sigma, st.dots
    if perturbation == "unit":
        nrm = jnp.sqrt(jnp.vdot(mu, mu))
        dev = jnp.where(nrm > 0, mu / jnp.where(nrm > 0, nrm, 1.0), 0.0)
    else:
        dev = jnp.sign(mu)
    return st, dev, _ops.centred_matvec(updates, mu, dev)


def selection_feasible(st, dev: Array, dots: Array, byz: Array, lam: Array, rule: str) -> Array:
    """Whether `rule` (Krum / Multi-Krum; Bulyan as Multi-Krum) selects the Byzantine rows when they
    all send `mu - lam * dev`. Distances from the centred Gram matrix of `X` about `mu`:
    `||X_i - mal||^2 = G_ii + 2 lam q_i + lam^2 ||dev||^2`."""
    n = byz.shape[0]
    g = st.gram
    diag = jnp.diagonal(g)
    d2 = jnp.maximum(diag[:, None] + diag[None, :] - 2.0 * g, 0.0)
    to_mal = jnp.maximum(diag + 2.0 * lam * dots + lam * lam * jnp.vdot(dev, dev), 0.0)
    full = jnp.where(byz[:, None] & byz[None, :], 0.0,
                     jnp.where(byz[:, None], to_mal[None, :], jnp.where(byz[None, :], to_mal[:, None], d2)))
    full = jnp.where(jnp.eye(n, dtype=bool), 0.0, full)
    f = byz.sum()
    fp = jnp.minimum(f, krum_limit(n))
    scores = krum_scores(full, fp)
    if rule == "krum":
        return byz[jnp.argmin(scores)]
    # Multi-Krum keeps the n - f' lowest scores (ties by row index).
    chosen = ops.smallest_k_mask(scores, n - fp)
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


def agr_tailored_vector(updates: Array, byzantine_mask: Array, rule_obj, rule: str, perturbation: str,
                        lam0, key) -> tuple[Array, Array]:
    """`(vector [d], lam)` of the AGR-tailored attack against `rule_obj` (see the module docstring)."""
    byz = jnp.asarray(byzantine_mask, bool)
    dtype = updates.dtype
    st, dev, dots = perturbation_vector(updates, byz, perturbation)
    mu = st.centre
    if rule in SELECTION_RULES:
        lam = ndss_search(lambda lam: selection_feasible(st, dev, dots, byz, lam, rule), dtype,
                          lam0=lam0)
    else:
        f = byz.sum()
        state = rule_obj.init(updates)

        def objective(lam):
            crafted = replace_rows(updates, byz, mu - lam * dev)
            g, _ = rule_obj.aggregate(crafted, state, f=f, key=key)
            diff = g - mu
            return jnp.sqrt(jnp.vdot(diff, diff))

        lam = hill_climb(objective, dtype, lam0=lam0)
    return mu - lam * dev, lam


def agr_tailored(rule: str = "multikrum", perturbation: str = "std", lam0=10.0) -> Attack:
    """The AGR-tailored attack of Shejwalkar & Houmansadr (NDSS 2021) against the rule `rule`.

    Args:
      rule: the attacked aggregation rule, a name of `strike_jax.aggregators.rule_names()` built
        with its default hyper-parameters (not "fltrust" or "foolsgold", which need round inputs).
      perturbation: "std", "unit" or "sign" (see the module docstring).
      lam0: the search's start and first step (float > 0, may be traced; 10 as SPEC §6).

    Returns:
      An `Attack`; `apply` needs `key` when the rule is randomised (e.g. "dnc", "signguard").

    Raises:
      ValueError: an unknown rule or perturbation, a pre-aggregator, or a concrete `lam0 <= 0`.
    """
    from strike_jax import aggregators

    if perturbation not in PERTURBATIONS:
        raise ValueError(f"agr_tailored: perturbation={perturbation!r} is not one of {list(PERTURBATIONS)}.")
    if rule in UNSUPPORTED_RULES:
        raise ValueError(f"agr_tailored: rule={rule!r} needs round inputs (root update / client ids) the attack "
                         "does not have; allowed: " + ", ".join(r for r in aggregators.rule_names()
                                                             if r not in UNSUPPORTED_RULES) + ".")
    if not isinstance(rule, str) or rule not in aggregators.rule_names():
        raise ValueError(f"agr_tailored: rule={rule!r} is not an aggregation rule; allowed: "
                         + ", ".join(r for r in aggregators.rule_names() if r not in UNSUPPORTED_RULES) + ".")
    check_real("lam0", lam0, positive=True)
    rule_obj = aggregators.get(rule)

    def apply(updates, byzantine_mask, state, *, key=None):
        vec, _ = agr_tailored_vector(updates, byzantine_mask, rule_obj, rule, perturbation, lam0, key)
        return replace_rows(updates, byzantine_mask, vec), state

    return make_attack("agr_tailored", empty_init, apply,
                       {"rule": rule, "perturbation": perturbation, "lam0": lam0})
