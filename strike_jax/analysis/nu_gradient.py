"""STRIKE's `nu` by gradient (issue 10, part 5), with STRIKE's `alpha` in closed form (SPEC §6.4).

STRIKE sends `g_S + nu * alpha * dev` (SPEC §6.5). `alpha` is the largest `a` with
`max_{i in S} ||g_S + a dev - H_i|| <= D`. Each row's constraint is a quadratic in `a`,
`C a^2 - 2 B_i a + (A_i - D^2) <= 0` (`A_i = ||H_i - g_S||^2`, `B_i = <H_i - g_S, dev>`,
`C = ||dev||^2`, `D^2` the squared diameter of S: `strike.HiddenVector`), whose feasible set is
`[r_i^-, r_i^+]` with `r_i^- <= 0 <= r_i^+` (since `A_i <= D^2` for a row of S: `g_S` lies in the
convex hull of S). So

    alpha = min_{i in S} r_i^+,   r_i^+ = (B_i + sqrt(B_i^2 + C (D^2 - A_i))) / C,

the value the bisection (`strike.bisect_alpha`) approaches from below to its tolerance, but with a
correct gradient almost everywhere (the bisection's output is piecewise constant in its inputs:
autodiff gives it a zero gradient). `r_i^+` is evaluated in the cancellation-free form
`(D^2 - A_i) / (sqrt(.) - B_i)` when `B_i < 0`.

`alpha` does not depend on `nu`, so `d/dnu` of the Byzantine vector is `alpha * dev`, and the
derivative of the aggregate's squared deviation from the honest mean,
`phi(nu) = ||F(U_nu) - mu||^2`, is `2 <F(U_nu) - mu, J_B (alpha dev)>` with `J_B` the rule's
Jacobian summed over the Byzantine rows (exact almost everywhere: `F` is piecewise smooth in `nu`).
`worst_nu` climbs `phi` by `attacks.gradient.ascend` from every point of the paper's grid
(Figure 7: `nu in {0.25, ..., 2.0}`) and from `nu = 1`, and reports it beside the grid's best.

References: SPEC.md §6 STRIKE items 4-5; paper Eq. 12-13, Appendix C (Algorithm 2), Figure 7.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.attacks.base import reference_mask
from strike_jax.attacks.gradient import ascend, deviation_sq, honest_stats
from strike_jax.attacks.strike import (
    MAX_DOUBLINGS,
    StrikeResult,
    fallback_vector,
    hidden_vector,
    search_direction,
    select_skewed,
)
from strike_jax.sweep import NU_GRID

Array = jax.Array
AggregateFn = Callable[[Array], Array]

#: The value returned when no row constrains `alpha` (`dev = 0`): the bisection's bracket cap.
ALPHA_CAP = 2.0 ** MAX_DOUBLINGS


def closed_form_alpha(sq_dists: Array, dots: Array, dev_sq_norm: Array, diameter_sq: Array, mask: Array) -> Array:
    """STRIKE's `alpha` in closed form: `min_{i in mask}` of each row's larger root (module doc).

    Same arguments as `strike.bisect_alpha`. Differentiable almost everywhere (through the row
    attaining the minimum).

    Args:
      sq_dists: `[n]` `A_i`.
      dots: `[n]` `B_i`.
      dev_sq_norm: scalar `C`.
      diameter_sq: scalar `D^2`.
      mask: `[n]` bool, the set S (empty -> 0).

    Returns:
      scalar alpha (`ALPHA_CAP` when `C == 0`, as the bisection's cap; 0 for an empty S).
    """
    mask = jnp.asarray(mask, bool)
    a, b, c, d2 = sq_dists, dots, dev_sq_norm, diameter_sq
    slack = jnp.maximum(d2 - a, 0.0)
    s = ops.safe_sqrt(b * b + c * slack)
    c_ok = c > 0
    plus = (b + s) / jnp.where(c_ok, c, 1.0)
    den = s - b
    stable = slack / jnp.where(den > 0, den, 1.0)
    root = jnp.where(b >= 0, plus, jnp.where(den > 0, stable, 0.0))
    root = jnp.where(c_ok, root, ALPHA_CAP)
    alpha = jnp.min(jnp.where(mask, root, jnp.inf))
    return jnp.where(mask.any(), alpha, jnp.zeros((), sq_dists.dtype)).astype(sq_dists.dtype)


@jax.jit
def strike_closed_form(updates: Array, byzantine_mask: Array, nu=1.0) -> StrikeResult:
    """STRIKE's Byzantine vector with `closed_form_alpha` instead of the bisection.

    The stages are those of `strike.strike_vector` (SPEC §6 items 1-7); only `alpha` differs (by
    less than the bisection's tolerance, from above). Differentiable almost everywhere in
    `updates` and in `nu` (the selection of S is piecewise constant). `[n, d]`, `[n]` -> result.
    """
    mask = jnp.asarray(byzantine_mask, bool)
    num_byz = mask.sum()
    num_honest = (~mask).sum()
    ref = reference_mask(mask)
    search = search_direction(updates, ref)
    selection = select_skewed(updates, ref, search.direction, num_honest - num_byz)
    hidden = hidden_vector(updates, selection.skewed_mask, search.mean)
    fallback = num_honest <= num_byz
    alpha = closed_form_alpha(hidden.sq_dists, hidden.dots, hidden.dev_sq_norm, hidden.diameter_sq,
                              selection.skewed_mask)
    alpha = jnp.where(fallback, jnp.zeros_like(alpha), alpha)
    nu = jnp.asarray(nu, updates.dtype)
    main = hidden.centre + (nu * alpha) * hidden.dev
    vector = jnp.where(fallback, fallback_vector(search.mean, search.median, num_honest), main)
    return StrikeResult(vector, alpha, fallback, search, selection, hidden)


def nu_objective(aggregate_fn: AggregateFn, updates: Array, byzantine_mask: Array) -> Callable[[Array], Array]:
    """`phi(nu) = ||aggregate_fn(U_nu) - mu||^2`, `U_nu` = `updates` with every Byzantine row set to
    STRIKE's vector at `nu` (closed-form `alpha`). STRIKE's stages run once; `phi` is then a cheap
    function of `nu` (the vector is affine in `nu`)."""
    mask = jnp.asarray(byzantine_mask, bool)
    res = strike_closed_form(updates, mask, 1.0)
    mu, _ = honest_stats(updates, mask)
    step = jnp.where(res.fallback, jnp.zeros_like(res.hidden.dev), res.alpha * res.hidden.dev)
    base = jnp.where(res.fallback, res.vector, res.hidden.centre)

    def phi(nu):
        v = base + jnp.asarray(nu, updates.dtype) * step
        return deviation_sq(aggregate_fn, jnp.where(mask[:, None], v[None, :], updates), mu)

    return phi


def nu_deviation(aggregate_fn: AggregateFn, updates: Array, byzantine_mask: Array, nu=1.0) -> tuple[Array, Array]:
    """`(phi(nu), phi'(nu))`: the aggregate's squared deviation from the honest mean under STRIKE
    at `nu`, and its derivative with respect to `nu` through STRIKE and the rule.

    Args:
      aggregate_fn: the defence `[n, d] -> [d]`.
      updates: `[n, d]`; byzantine_mask: `[n]` bool.
      nu: scalar (may be traced; vmap over it for many values).
    """
    return jax.value_and_grad(nu_objective(aggregate_fn, updates, byzantine_mask))(
        jnp.asarray(nu, updates.dtype))


class WorstNuResult(NamedTuple):
    """Output of `worst_nu`.

    Attributes:
      nu: the `nu` of largest `phi` found by the gradient search (over all starts).
      deviation_sq: `phi(nu)`.
      from_default_nu, from_default_deviation_sq: the search started at `nu = 1` alone.
      grid: `[k]` the grid; grid_deviation_sq: `[k]` `phi` on it.
      grid_nu, grid_best_deviation_sq: the grid's maximiser and maximum.
      start_nu: `[k + 1]` the final `nu` of each start (the grid's, then `nu = 1`).
    """

    nu: Array
    deviation_sq: Array
    from_default_nu: Array
    from_default_deviation_sq: Array
    grid: Array
    grid_deviation_sq: Array
    grid_nu: Array
    grid_best_deviation_sq: Array
    start_nu: Array


def worst_nu(aggregate_fn: AggregateFn, updates: Array, byzantine_mask: Array, *,
             grid: Sequence[float] = NU_GRID, steps: int = 30, lr: float = 0.25,
             bounds: tuple[float, float] = (0.05, 4.0)) -> WorstNuResult:
    """The `nu` maximising `phi(nu) = ||F(U_nu) - mu||^2` by gradient, beside the paper's grid.

    `ascend` (monotone normalised-gradient ascent, i.e. sign steps in 1-D with an adaptive step,
    projected on `bounds`) from every grid point and from `nu = 1`, all starts in one vmapped
    program. Monotone, so every start ends at least as high as it began: the multi-start result
    is never below the grid's best; the single start at `nu = 1` shows what gradient alone finds
    at the cost of `steps` evaluations.

    Args:
      aggregate_fn: the defence `[n, d] -> [d]`.
      updates: `[n, d]`; byzantine_mask: `[n]` bool.
      grid: the `nu` grid (default `sweep.NU_GRID`, Figure 7).
      steps: ascent iterations per start; lr: initial step in `nu` units.
      bounds: `(lo, hi)`, `0 < lo < hi`: the search interval.

    Returns:
      `WorstNuResult`.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0 < lo < hi:
        raise ValueError(f"worst_nu: bounds={bounds!r} must satisfy 0 < lo < hi.")
    if int(steps) < 0:
        raise ValueError(f"worst_nu: steps={steps!r} must be >= 0.")
    phi = nu_objective(aggregate_fn, updates, byzantine_mask)
    dtype = updates.dtype
    g = jnp.asarray(grid, dtype)
    starts = jnp.concatenate([g, jnp.ones((1,), dtype)])

    def one(nu0):
        return ascend(phi, nu0, steps=steps, lr=lr, project=lambda v: jnp.clip(v, lo, hi))

    res = jax.vmap(one)(starts)
    k = g.shape[0]
    grid_vals = res.initial_value[:k]
    i_best = jnp.argmax(res.value)
    i_grid = jnp.argmax(grid_vals)
    return WorstNuResult(res.x[i_best], res.value[i_best], res.x[k], res.value[k], g, grid_vals, g[i_grid],
                         grid_vals[i_grid], res.x)


__all__ = [
    "ALPHA_CAP",
    "WorstNuResult",
    "closed_form_alpha",
    "nu_deviation",
    "nu_objective",
    "strike_closed_form",
    "worst_nu",
]
