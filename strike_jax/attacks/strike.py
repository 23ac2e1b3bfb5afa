"""STRIKE: the two-stage attack exploiting gradient skew (Liu et al., AAAI 2025; SPEC §6).

Stage 1 (`search_direction`, `select_skewed`): search from the honest mean towards the honest
coordinate-wise lower median, `u = med - mu`, and select the `h - f` honest rows with the largest
projection `p_i = <H_i, u / ||u||>` (the "skewed" rows S; paper Eq. 6-8, with Algorithm 1's
"n - f" typo fixed to `n - 2f` in the paper's notation, i.e. `h - f`).

Stage 2 (`hidden_vector`, `bisect_alpha`): hide the Byzantine update inside S:
`g_b = g_S + nu * alpha * dev`, `dev = sign(g_S - mu) * sigma_S` (Eq. 12; Eq. 13/14 drop the `- mu`,
a typo), with `alpha` the largest value such that `max_{i in S} ||g_S + alpha dev - H_i|| <= D`,
`D = max_{i,j in S} ||H_i - H_j||` (Eq. 13), found by bisection (Appendix C, Algorithm 2).

`strike_vector` chains the stages (plus the `h <= f` fallback) into the Byzantine row;
`strike_attack` builds the registry attack (`attacks.get("strike", nu=...)`). Everything is a pure
function of arrays: `f` (the mask's count) and `nu` may be traced, so `jax.vmap` over masks or over
`nu` compiles once.

How the distances are computed: one blocked pass over `U` (`ops.column_stats`) yields `g_S`,
`sigma_S`, `dev`, the Gram matrix of the rows centred at `g_S`, and `q_i = <H_i - g_S, dev>`. Then
`D^2 = max_{i,j in S} (G_ii + G_jj - 2 G_ij)` and
`||g_S + a dev - H_i||^2 = G_ii - 2 a q_i + a^2 ||dev||^2` come from the same centred Gram
quantities (the same method for both sides of the constraint, SPEC §6.4), and each bisection
step is O(n).

References:
  Liu, Y., Chen, C., Lyu, L., Jin, Y., Chen, G. "Exploit Gradient Skewness to Circumvent Byzantine
  Defenses for Federated Learning", AAAI 2025 (`paper/strike_aaai2025.md`: Section 5, Algorithm 1,
  Appendix C Algorithm 2). SPEC.md §6 "STRIKE" (items 1-7).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops
from strike_jax.attacks.base import reference_mask, row_attack
from strike_jax.registry import real, register
from strike_jax.stages import Stage

Array = jax.Array

#: Bisection defaults (SPEC §6.4): absolute tolerance on alpha, bounded doublings of the bracket.
TOL = 1e-5
MAX_DOUBLINGS = 60
#: Enough halvings to shrink the widest bracket (2^(MAX_DOUBLINGS-1)) below TOL: 59 + 17 <= 80.
MAX_HALVINGS = 80


class SearchDirection(NamedTuple):
    """Stage 1a (paper Eq. 6).

    Attributes:
      mean: `[d]` honest mean `mu`.
      median: `[d]` honest coordinate-wise lower median `med` (SPEC §1).
      direction: `[d]` `u_search = med - mu`.
    """

    mean: Array
    median: Array
    direction: Array


class Selection(NamedTuple):
    """Stage 1b (paper Eq. 7-8).

    Attributes:
      projections: `[n]` `p_i = <U_i, u / ||u||>` for every row (0 for all rows if `u == 0`).
      skewed_mask: `[n]` bool, the set S: the `k` rows of the honest mask with the largest `p_i`,
        ties broken by row order (the earlier row wins; SPEC §6.7).
    """

    projections: Array
    skewed_mask: Array


class HiddenVector(NamedTuple):
    """Stage 2 ingredients (paper Eq. 12-13), all from one pass over `U`.

    Attributes:
      centre: `[d]` `g_S`, the mean of the rows in S.
      sigma: `[d]` `sigma_S`, their coordinate-wise biased std.
      dev: `[d]` `sign(g_S - mu) * sigma_S`.
      sq_dists: `[n]` `||U_i - g_S||^2` (`A_i`).
      dots: `[n]` `<U_i - g_S, dev>` (`B_i`).
      dev_sq_norm: scalar `||dev||^2` (`C`).
      diameter_sq: scalar `D^2 = max_{i,j in S} ||U_i - U_j||^2` (0 for |S| <= 1).

    For `i in S`, `||g_S + a dev - U_i||^2 = A_i - 2 a B_i + a^2 C`.
    """

    centre: Array
    sigma: Array
    dev: Array
    sq_dists: Array
    dots: Array
    dev_sq_norm: Array
    diameter_sq: Array


class StrikeResult(NamedTuple):
    """Everything `strike_vector` computed.

    Attributes:
      vector: `[d]` the update every Byzantine client sends.
      alpha: scalar, the bisection's feasible alpha (before the `nu` factor); 0 in the fallback.
      fallback: scalar bool, True when `h <= f` and the fallback rule produced `vector`.
      search: `SearchDirection`.
      selection: `Selection`.
      hidden: `HiddenVector`.
    """

    vector: Array
    alpha: Array
    fallback: Array
    search: SearchDirection
    selection: Selection
    hidden: HiddenVector


def search_direction(updates: Array, honest_mask: Array, *, backend: ops.Backend | None = None) -> SearchDirection:
    """Stage 1a: the honest mean, lower median and `u_search = med - mu` (paper Eq. 6).

    Args:
      updates: `[n, d]`.
      honest_mask: `[n]` bool, the rows of H (may be traced).
      backend: `ops.Backend` for the median (static; default the platform's).

    Returns:
      `SearchDirection` of `[d]` vectors.
    """
    honest_mask = jnp.asarray(honest_mask, bool)
    mean = ops.masked_mean(updates, honest_mask)
    median = ops.masked_lower_median(updates, honest_mask, backend=backend)
    return SearchDirection(mean, median, median - mean)


def select_skewed(updates: Array, honest_mask: Array, direction: Array, num_selected) -> Selection:
    """Stage 1b: S = the `num_selected` honest rows with the largest projection on `direction`.

    Ranks by the unnormalised `<U_i, u>` (dividing by `||u|| > 0` does not change the order, and
    rounding it could only create ties); with `u == 0` all scores are 0 and the earliest rows win.

    Args:
      updates: `[n, d]`.
      honest_mask: `[n]` bool.
      direction: `[d]` `u_search`.
      num_selected: int, possibly traced (`h - f`); `<= 0` selects nothing.

    Returns:
      `Selection`.
    """
    honest_mask = jnp.asarray(honest_mask, bool)
    raw = updates @ direction
    norm = jnp.sqrt(jnp.vdot(direction, direction))
    projections = jnp.where(norm > 0, raw / jnp.where(norm > 0, norm, 1.0), 0.0)
    scores = jnp.where(honest_mask, raw, -jnp.inf)
    skewed = ops.largest_k_mask(scores, num_selected) & honest_mask
    return Selection(projections, skewed)


def hidden_vector(updates: Array, skewed_mask: Array, mean: Array, *, chunk: int | None = None,
                  backend: ops.Backend | None = None) -> HiddenVector:
    """Stage 2a: `g_S`, `sigma_S`, `dev = sign(g_S - mu) * sigma_S` and the constraint's coefficients.

    Args:
      updates: `[n, d]`.
      skewed_mask: `[n]` bool, the set S (may be traced; empty gives zeros).
      mean: `[d]` the honest mean `mu`.
      chunk: columns per pass block (static; default per `backend`).
      backend: `ops.Backend` (static; default the platform's).

    Returns:
      `HiddenVector`.
    """
    skewed_mask = jnp.asarray(skewed_mask, bool)
    st = ops.column_stats(updates, ops.mean_weights(skewed_mask, updates.dtype), mean, gram=True, chunk=chunk,
                          backend=backend)
    d2, _ = ops.sq_dists_from_gram(st.gram)
    diameter_sq = ops.masked_max_pairwise(d2, skewed_mask)
    return HiddenVector(
        centre=st.centre,
        sigma=st.sigma,
        dev=st.dev,
        sq_dists=jnp.diagonal(st.gram),
        dots=st.dots,
        dev_sq_norm=st.dev_sq_norm,
        diameter_sq=diameter_sq,
    )


@functools.partial(jax.jit, static_argnames=("tol", "max_doublings", "max_halvings"))
def bisect_alpha(
    sq_dists: Array,
    dots: Array,
    dev_sq_norm: Array,
    diameter_sq: Array,
    mask: Array,
    *,
    tol: float = TOL,
    max_doublings: int = MAX_DOUBLINGS,
    max_halvings: int = MAX_HALVINGS,
) -> Array:
    """Stage 2b: the largest feasible `alpha` of paper Eq. 13 by bisection (Appendix C, SPEC §6.4).

    `F(a) = max_{i in mask} sqrt(A_i - 2 a B_i + a^2 C) - D`; `F(0) <= 0` and `F` is convex, so the
    feasible set `{F <= 0}` is an interval `[0, alpha*]`. Bracket `[0, 1]`; while `F(hi) < 0` (at
    most `max_doublings` times) move `lo` to `hi` (feasible) and double `hi`; then halve the bracket
    while `hi - lo > tol` (at most `max_halvings` times), keeping `lo` feasible (`F(mid) <= 0`).
    Returns `lo`, so `F(alpha) <= 0` always holds (the reference also returns the lower end).
    Comparisons use squared distances (`F <= 0` iff `max_i A_i - 2aB_i + a^2C <= D^2`).

    Both loops have static trip counts (`fori_loop`, finished iterations are no-ops), so this is
    jit-, vmap- and reverse-mode friendly and costs O(n) per step.

    Args:
      sq_dists: `[n]` `A_i = ||U_i - g_S||^2`.
      dots: `[n]` `B_i = <U_i - g_S, dev>`.
      dev_sq_norm: scalar `C = ||dev||^2`.
      diameter_sq: scalar `D^2`.
      mask: `[n]` bool, the set S (empty -> 0).
      tol: absolute tolerance on alpha (1e-5).
      max_doublings: bound on the bracket doublings (60).
      max_halvings: bound on the halvings (80: enough for the widest bracket).

    Returns:
      scalar alpha (dtype of `sq_dists`).
    """
    dtype = sq_dists.dtype
    mask = jnp.asarray(mask, bool)

    def excess(a):
        vals = sq_dists - 2.0 * a * dots + (a * a) * dev_sq_norm
        return jnp.max(jnp.where(mask, vals, -jnp.inf)) - diameter_sq

    def double(_, carry):
        lo, hi = carry
        grow = excess(hi) < 0
        return jnp.where(grow, hi, lo), jnp.where(grow, 2.0 * hi, hi)

    lo, hi = lax.fori_loop(0, max_doublings, double, (jnp.zeros((), dtype), jnp.ones((), dtype)))

    def halve(_, carry):
        lo, hi = carry
        mid = 0.5 * (lo + hi)
        active = hi - lo > tol
        ok = excess(mid) <= 0
        return jnp.where(active & ok, mid, lo), jnp.where(active & ~ok, mid, hi)

    lo, _ = lax.fori_loop(0, max_halvings, halve, (lo, hi))
    return jnp.where(mask.any(), lo, jnp.zeros((), dtype))


def fallback_vector(mean: Array, median: Array, num_honest) -> Array:
    """SPEC §6.6, used when `h <= f`: `-10 * mu` if `h == 1`, else `mu + 10 * (med - mu)`."""
    return jnp.where(num_honest == 1, -10.0 * mean, mean + 10.0 * (median - mean))


@functools.partial(jax.jit, static_argnames=("tol", "chunk", "backend"))
def strike_vector(updates: Array, byzantine_mask: Array, nu=1.0, *, tol: float = TOL,
                  chunk: int | None = None, backend: ops.Backend | None = None) -> StrikeResult:
    """The STRIKE Byzantine update for one round (SPEC §6 items 1-7; Algorithm 1).

    One jitted function of `(updates, byzantine_mask, nu)` (SPEC §6): `f` and `nu` are traced, so
    new masks or `nu` values never recompile and `jax.vmap` over either compiles once.

    Args:
      updates: `[n, d]` honestly computed updates of all sampled clients.
      byzantine_mask: `[n]` bool (`f = sum`, `h = n - f`; may be traced).
      nu: attack strength factor (> 0; may be traced).
      tol: bisection tolerance on alpha (static).
      chunk: columns per pass block (static; default per `backend`).
      backend: `ops.Backend` (static; default the platform's).

    Returns:
      `StrikeResult`; `vector` is `g_S + nu * alpha * dev` when `h > f`, else the fallback.
      With `h == 0`, the Byzantine rows' own updates play the role of H (SPEC §6).
    """
    byzantine_mask = jnp.asarray(byzantine_mask, bool)
    num_byz = byzantine_mask.sum()
    num_honest = (~byzantine_mask).sum()
    ref = reference_mask(byzantine_mask)
    search = search_direction(updates, ref, backend=backend)
    selection = select_skewed(updates, ref, search.direction, num_honest - num_byz)
    hidden = hidden_vector(updates, selection.skewed_mask, search.mean, chunk=chunk, backend=backend)
    fallback = num_honest <= num_byz
    alpha = bisect_alpha(hidden.sq_dists, hidden.dots, hidden.dev_sq_norm, hidden.diameter_sq,
                         selection.skewed_mask, tol=tol)
    alpha = jnp.where(fallback, jnp.zeros_like(alpha), alpha)
    nu = jnp.asarray(nu, updates.dtype)
    main = hidden.centre + (nu * alpha) * hidden.dev
    vector = jnp.where(fallback, fallback_vector(search.mean, search.median, num_honest), main)
    return StrikeResult(vector, alpha, fallback, search, selection, hidden)


@register("attack", "strike", nu=real())
def strike_attack(nu=1.0, *, backend: ops.Backend | None = None) -> Stage:
    """STRIKE (SPEC §6): every Byzantine client sends `g_S + nu * alpha * dev`.

    Args:
      nu: attack strength factor, `> 0` (default 1; the paper sweeps `{0.25, 0.5, ..., 2.0}`;
        traceable: `jax.vmap(lambda nu: attacks.get("strike", nu=nu).apply(...))` compiles once).
      backend: `ops.Backend` (resolved now).

    Returns:
      An attack `Stage` (stateless).

    Raises:
      ValueError: a concrete `nu` that is not a finite number > 0.
    """
    backend = ops.resolve(backend)
    return row_attack("strike", lambda u, m: strike_vector(u, m, nu, backend=backend).vector)


__all__ = [
    "HiddenVector",
    "SearchDirection",
    "Selection",
    "StrikeResult",
    "bisect_alpha",
    "fallback_vector",
    "hidden_vector",
    "search_direction",
    "select_skewed",
    "strike_attack",
    "strike_vector",
]
