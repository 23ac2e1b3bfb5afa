"""Fang et al.'s full-knowledge local model poisoning attacks (USENIX Security 2020).

    attack = strike_jax.attacks.get("fang", target="trmean")    # or "median", "krum"
    stage = strike_jax.stages.get("attack", "fang", target="krum")

* Trim attack (targets Trimmed mean and Median, paper Sec. 4.3, "full knowledge"): for every
  coordinate `j`, `s_j` = the sign of the honest mean (the direction the global model would move
  without attack); each Byzantine client pushes the coordinate beyond the honest extreme on the
  other side: if `s_j > 0`, `e_j = min_i H_ij` and the value is drawn uniformly from
  `[e_j / b, e_j]` (`e_j > 0`) or `[b e_j, e_j]` (`e_j <= 0`); if `s_j < 0`, `e_j = max_i H_ij` and
  the value is drawn from `[e_j, b e_j]` (`e_j > 0`) or `[e_j, e_j / b]` (`e_j <= 0`); `b = 2`.
  Every Byzantine client draws its own values. (`s_j = 0`: the value is 0.)
* Krum attack (targets Krum, paper Sec. 4.2): all Byzantine clients send `-lambda * s`, with
  `lambda` the largest value, halving from the upper bound of the paper's Eq. (7)
  `1 / ((n - 2f - 1) sqrt(d)) * min_{i honest} sum_{l in G_i} ||H_l - H_i|| + 1 / sqrt(d) *
  max_{i honest} ||H_i||` (`G_i`: the `n - f - 2` honest rows nearest to `H_i`), until Krum (with
  the round's `f`, clamped to `(n - 3) // 2`) selects a Byzantine row, or `lambda < 1e-5` (then the
  last `lambda` is kept).

Both attacks are written in the paper for local *models* `w_i`, with the current global model `w_Re`
as the reference point; here they act on the *updates* `w_i - w_Re` (as the NDSS'21 reference
code and FLPoison do): `w_Re` becomes the zero update, so `||w_i - w_Re|| = ||H_i||` and
`w_Re - lambda s` becomes `-lambda s`. The trim attack's intervals are then taken around the
extremes of the honest updates rather than of the honest model parameters.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops
from strike_jax.aggregators.base import sum_smallest
from strike_jax.attacks.base import attack_stage, krum_scores_with_rows_replaced, reference_mask, replace_rows
from strike_jax.registry import choice, real, register
from strike_jax.stages import Stage

Array = jax.Array

FANG_TARGETS = ("trmean", "median", "krum")
#: Krum attack: stop halving below this lambda (the paper's threshold).
LAMBDA_MIN = 1e-5
MAX_HALVINGS = 200


def trim_bounds(updates: Array, byzantine_mask: Array, backend: ops.Backend | None = None) -> tuple[Array, Array]:
    """`(s, e)`: the sign of the honest mean and the honest extreme opposite to it, both `[d]`."""
    ref = reference_mask(byzantine_mask)
    h = ref.sum()
    s = jnp.sign(ops.masked_mean(updates, ref))
    lo = ops.order_statistic(updates, 0, ref, backend=backend)
    hi = ops.order_statistic(updates, jnp.maximum(h - 1, 0), ref, backend=backend)
    return s, jnp.where(s > 0, lo, hi)


def trim_values(s: Array, e: Array, u: Array, b) -> Array:
    """The trim attack's values for uniform draws `u` (`[..., d]` in `[0, 1)`): `e + (t - e) u`,
    uniform between the extreme `e` and the interval's other end `t`: `t = e / b` when `e` lies on
    the side of `s` (towards 0), `t = b e` when it lies on the other side (away from 0); 0 where
    `s * e == 0`."""
    b = jnp.asarray(b, e.dtype)
    other = jnp.where(s * e > 0, e / b, b * e)
    return jnp.where(s * e != 0, e + (other - e) * u, 0.0)


def krum_lambda_bound(d2: Array, honest: Array, sq_norms: Array, f: Array, d: int) -> Array:
    """Upper bound on `lambda` of the Krum attack (Fang et al. 2020, Eq. 7, in update space)."""
    n = d2.shape[0]
    dist = jnp.sqrt(jnp.where(honest[:, None] & honest[None, :], d2, jnp.inf))
    others = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, dist)
    k = jnp.maximum(n - f - 2, 1)
    sums = sum_smallest(others, k)
    best = jnp.min(jnp.where(honest & jnp.isfinite(sums), sums, jnp.inf))
    best = jnp.where(jnp.isfinite(best), best, 0.0)
    denom = jnp.maximum(n - 2 * f - 1, 1).astype(d2.dtype) * math.sqrt(d)
    far = jnp.max(jnp.where(honest, jnp.sqrt(jnp.maximum(sq_norms, 0.0)), 0.0)) / math.sqrt(d)
    return best / denom + far


def krum_picks_byzantine(d2: Array, byz: Array, sq_norms: Array, dots: Array, s_sq: Array, lam: Array) -> Array:
    """Whether Krum (`f' = min(f, (n-3)//2)`) selects a Byzantine row when every Byzantine row is
    `-lam * s`: distances honest-Byzantine are `||H_i + lam s||^2`, Byzantine-Byzantine 0."""
    to_mal = sq_norms + 2.0 * lam * dots + lam * lam * s_sq
    return byz[jnp.argmin(krum_scores_with_rows_replaced(d2, byz, to_mal))]


def fang_krum_vector(updates: Array, byzantine_mask: Array, backend: ops.Backend | None = None) -> tuple[Array, Array]:
    """`(vector [d], lambda)` of Fang's Krum attack (see the module docstring)."""
    n, d = updates.shape
    byz = jnp.asarray(byzantine_mask, bool)
    ref = reference_mask(byz)
    f = byz.sum()
    s = jnp.sign(ops.masked_mean(updates, ref))
    d2, _ = ops.pairwise_sq_dists_finite(updates, backend=backend)
    sq, dots = ops.sq_norms_and_dots(updates, s, backend=backend)
    s_sq = jnp.sum(jnp.abs(s))
    lam0 = krum_lambda_bound(d2, ref, sq, f, d)

    def body(_, carry):
        lam, done = carry
        ok = krum_picks_byzantine(d2, byz, sq, dots, s_sq, lam)
        stop = done | ok | (lam < LAMBDA_MIN)
        return jnp.where(stop, lam, 0.5 * lam), stop

    lam, _ = lax.fori_loop(0, MAX_HALVINGS, body, (lam0, jnp.asarray(False)))
    return -lam * s, lam


@functools.partial(jax.jit, static_argnames=("backend",))
def _fang_krum(updates: Array, mask: Array, *, backend: ops.Backend) -> Array:
    return replace_rows(updates, mask, fang_krum_vector(updates, mask, backend)[0])


@functools.partial(jax.jit, static_argnames=("backend",))
def _fang_trim(updates: Array, mask: Array, key: Array, b: Array, *, backend: ops.Backend) -> Array:
    s, e = trim_bounds(updates, mask, backend)
    u = jax.random.uniform(key, updates.shape, updates.dtype)
    # Every Byzantine row differs (its own draws): a select, not `replace_rows`.
    return jnp.where(mask[:, None], trim_values(s, e, u, b), updates)


@register("attack", "fang", target=choice(*FANG_TARGETS), b=real(low=1.0))
def fang(target="trmean", b=2.0, *, backend: ops.Backend | None = None) -> Stage:
    """Fang et al.'s full-knowledge attacks (Fang, Cao, Jia & Gong, "Local model poisoning attacks
    to Byzantine-robust federated learning", USENIX Security 2020): the trim attack on Trimmed mean
    and Median, the Krum attack on Krum (see the module docstring).

    Args:
      target: the defence attacked: "trmean" or "median" (trim attack, needs `key`) or "krum"
        (static).
      b: the trim attack's interval factor (`> 1`; traceable; unused for "krum").
      backend: `ops.Backend` (resolved now).

    Returns:
      An attack `Stage` (`info["needs_key"]` for the trim attack).
    """
    backend = ops.resolve(backend)

    if target == "krum":

        def krum_core(updates, mask, state, key):
            return _fang_krum(updates, mask, backend=backend), state

        return attack_stage("fang", krum_core)

    def trim_core(updates, mask, state, key):
        return _fang_trim(updates, mask, key, jnp.asarray(b, updates.dtype), backend=backend), state

    return attack_stage("fang", trim_core, needs_key=True)


__all__ = ["FANG_TARGETS", "fang", "fang_krum_vector", "krum_lambda_bound", "trim_bounds", "trim_values"]
