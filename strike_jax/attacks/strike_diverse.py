"""A diverse STRIKE: `f` distinct Byzantine vectors, each hidden in the skewed set like STRIKE's one.

The paper's STRIKE (`strike_jax.attacks.strike`, SPEC §6; Liu et al., AAAI 2025, §4-5) sends one
vector `g_S + nu * alpha * dev` from every Byzantine client, `alpha` the largest value with
`max_{i in S} ||g_S + alpha dev - H_i|| <= D` (`D` the diameter of the skewed set S, Eq. 13). `f`
identical rows are easy to spot for a server that looks at the diversity of the updates
(`aggregators.uniformity`). This attack keeps the paper's stage 1 (S, `g_S`, `dev`, `D`) and
gives Byzantine client `k` (its rank among the Byzantine rows, in row order) its own start point
inside S and its own `alpha`:

    c_k = g_S + s_k (H_{m_k} - g_S),   v_k = c_k + nu * alpha_k * dev,
    alpha_k = the largest a with max_{i in S} ||c_k + a dev - H_i|| <= D   (Algorithm 2 bisection)

* `m_k` is the row of S with the `(k mod |S|)`-th largest projection on the search direction (the
  most skewed rows first; ties by row index), and `s_k = spread / (1 + k // |S|)`, so the start
  points differ even when `f > |S|`.
* `c_k` is a convex combination of points of S, so `||c_k - H_i|| <= D` for every `i in S`: the
  constraint holds at `a = 0` and, being convex in `a`, on `[0, alpha_k]`. So with `nu <= 1` every
  Byzantine vector satisfies the paper's constraint (with `nu > 1`, as STRIKE, it is pushed
  further along `dev` by design).
* `spread = 0` is the paper's STRIKE (every `c_k = g_S`); `spread = 1` starts from members of S.
  `nu` and `spread` are traceable.
* When `h <= f` (no skewed set) every Byzantine client sends STRIKE's fallback (SPEC §6.6).

The constraint's coefficients come from the quantities STRIKE already has, centred at `g_S`
(`y_i = H_i - g_S`): `||c_k + a dev - H_i||^2 = A_i - 2 s_k <y_i, y_m> + s_k^2 A_m
- 2 a (B_i - s_k B_m) + a^2 C` (A, B, C as in `strike.HiddenVector`), the same method for both
sides of the constraint as STRIKE (SPEC §6.4); one extra product `y @ y[m]^T` (`[n, n]`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.attacks.base import attack_stage
from strike_jax.attacks.strike import TOL, bisect_alpha, strike_vector
from strike_jax.registry import real, register
from strike_jax.stages import Stage

Array = jax.Array


class DiverseResult(NamedTuple):
    """What `diverse_vectors` computed.

    Attributes:
      vectors: `[n, d]`, row `r` the vector Byzantine row `r` sends (rows of honest clients are
        computed too and unused).
      alphas: `[n]` each row's feasible `alpha_k` (0 in the fallback).
      members: `[n]` int, the row `m_k` of S each start point leans towards.
      weights: `[n]` `s_k`.
      strike: the paper's `strike.StrikeResult` (stage 1, `g_S`, `dev`, `D`).
    """

    vectors: Array
    alphas: Array
    members: Array
    weights: Array
    strike: object


@functools.partial(jax.jit, static_argnames=("tol", "backend"))
def diverse_vectors(updates: Array, byzantine_mask: Array, nu=1.0, spread=0.5, *, tol: float = TOL,
                    backend: ops.Backend | None = None) -> DiverseResult:
    """The diverse STRIKE's Byzantine vectors for one round (see the module docstring).

    Args:
      updates: `[n, d]` honestly computed updates of all sampled clients.
      byzantine_mask: `[n]` bool (may be traced).
      nu: attack strength factor (> 0; traced ok).
      spread: weight `s` in `[0, 1]` of the start points towards members of S (traced ok).
      tol: bisection tolerance on each alpha (static).
      backend: `ops.Backend` (static).

    Returns:
      `DiverseResult`.
    """
    mask = jnp.asarray(byzantine_mask, bool)
    dtype = updates.dtype
    res = strike_vector(updates, mask, 1.0, tol=tol, backend=backend)
    skewed, hid = res.selection.skewed_mask, res.hidden
    size = skewed.sum()
    # S rows by decreasing projection (ties: earlier row first), then the rest.
    by_skew = jnp.argsort(jnp.where(skewed, -res.selection.projections, jnp.inf), stable=True)
    # Each Byzantine row's rank among the Byzantine rows (rows before the first one: 0, unused).
    k = jnp.maximum(jnp.cumsum(mask) - 1, 0)
    per = jnp.maximum(size, 1)
    members = by_skew[k % per]
    weights = jnp.asarray(spread, dtype) / (1.0 + (k // per).astype(dtype))
    y = updates - hid.centre
    ym = jnp.take(y, members, axis=0)  # [n, d]: y_{m_k} for every row
    cross = y @ ym.T  # cross[i, r] = <y_i, y_{m_r}>
    sq = (hid.sq_dists[None, :] - 2.0 * weights[:, None] * cross.T
          + (weights * weights * hid.sq_dists[members])[:, None])
    dots = hid.dots[None, :] - (weights * hid.dots[members])[:, None]
    alphas = jax.vmap(lambda a, b: bisect_alpha(a, b, hid.dev_sq_norm, hid.diameter_sq, skewed, tol=tol))(sq, dots)
    alphas = jnp.where(res.fallback, jnp.zeros_like(alphas), alphas)
    nu = jnp.asarray(nu, dtype)
    main = hid.centre[None, :] + (nu * alphas)[:, None] * hid.dev[None, :] + weights[:, None] * ym
    vectors = jnp.where(res.fallback, res.vector[None, :], main)
    return DiverseResult(vectors, alphas, members, weights, res)


@register("attack", "strike_diverse", nu=real(), spread=real(low=0.0, strict=False, high=1.0))
def strike_diverse(nu=1.0, spread=0.5, *, backend: ops.Backend | None = None) -> Stage:
    """Diverse STRIKE (see the module docstring): Byzantine client `k` sends
    `g_S + s_k (H_{m_k} - g_S) + nu * alpha_k * dev`, distinct points of the skewed set that each
    satisfy the paper's constraint (for `nu <= 1`).

    Args:
      nu: attack strength factor, `> 0` (traceable).
      spread: how far the start points lean from `g_S` towards members of S, in `[0, 1]`
        (traceable; 0 is the paper's STRIKE).
      backend: `ops.Backend` (resolved now).

    Returns:
      An attack `Stage` (stateless).
    """
    backend = ops.resolve(backend)

    def core(updates, mask, state, key):
        vecs = diverse_vectors(updates, mask, nu, spread, backend=backend).vectors
        return jnp.where(mask[:, None], vecs.astype(updates.dtype), updates), state

    return attack_stage("strike_diverse", core)


__all__ = ["DiverseResult", "diverse_vectors", "strike_diverse"]
