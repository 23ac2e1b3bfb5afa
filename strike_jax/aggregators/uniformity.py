"""A uniformity-aware pre-aggregator: neutralise updates that are suspiciously close to another one.

Why: honest updates on heterogeneous data are spread out, while most attacks (STRIKE, LIE, IPM,
MinMax, ...) have all `f` Byzantine clients send one and the same vector. ProDiGy (Ergisi, Maßny &
Bitar, arXiv 2509.09534, "ProDiGy: Proximity- and Dissimilarity-Based Byzantine-Robust Federated
Learning") scores clients by proximity *and* dissimilarity, treating "suspicious uniformity" among
updates as a sign of an attack. This stage follows that idea only (the paper's exact scoring is
not reproduced here); its test is a nearest-neighbour one, measured against the honest spread:

1. `nn_i^2 = min_{j != i} ||X_i - X_j||^2` over the finite rows (`+inf` with no finite neighbour).
2. The spread scale `s^2` = the lower median of `nn^2` over the finite rows (SPEC §1's lower
   median): with `f <= (n - 1) // 2` Byzantine rows, at least half the nearest-neighbour
   distances are honest rows'. So `f` identical rows (`nn = 0`) cannot make the scale 0.
3. Suspicious: a finite row with `nn_i^2 <= tau^2 * s^2` (a near-twin `tau` times closer than the
   typical honest spacing), and every non-finite row.
4. At most `f` suspicious rows are flagged (non-finite rows first, then the smallest `nn_i`; ties by
   row index), so an honest pair that happens to be close costs at most the `f` rows the
   downstream rule must tolerate anyway.
5. Every flagged row is replaced by the mean of the rows neither flagged nor non-finite: a
   following `mean` then averages exactly the kept rows (removal), and for a robust rule the
   replacements sit at the kept rows' centre. The rule is told the same `f` (`f' = f`).

Limit: `f <= (n - 1) // 2` (beyond it the Byzantine rows could set the scale). What it cannot
catch, by construction: Byzantine rows spread at least `tau * s` apart from each other and from
the honest rows (`strike_diverse` with a large enough `spread`), or a single Byzantine row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import majority_limit, resolve_f
from strike_jax.registry import real, register
from strike_jax.stages import Stage, check_updates, empty_init, make_stage

Array = jax.Array


def uniformity_flags(updates: Array, f: Array, tau: Array, *, backend: ops.Backend | None = None) -> Array:
    """The rows the stage replaces (steps 1-4 of the module docstring).

    Args:
      updates: `[n, d]`.
      f: the most rows flagged (traced ok).
      tau: threshold on the nearest-neighbour distance relative to the spread scale (traced ok).
      backend: `ops.Backend` (static).

    Returns:
      `[n]` bool.
    """
    n = updates.shape[0]
    d2, finite = ops.pairwise_sq_dists_finite(updates, backend=backend)
    d2 = jax.lax.stop_gradient(d2)
    others = jnp.where(jnp.eye(n, dtype=bool) | ~finite[None, :], jnp.inf, d2)
    nn2 = jnp.where(finite, jnp.min(others, axis=1), jnp.inf)
    # Lower median over the finite rows (the non-finite ones sort last as +inf).
    count = finite.sum()
    scale2 = jnp.sort(jnp.where(finite, nn2, jnp.inf))[jnp.maximum(count - 1, 0) // 2]
    tau = jnp.asarray(tau, d2.dtype)
    suspicious = ~finite | (nn2 <= tau * tau * scale2)
    rank = jnp.where(finite, nn2, -jnp.inf)
    return ops.smallest_k_mask(jnp.where(suspicious, rank, jnp.inf), f) & suspicious


@functools.partial(jax.jit, static_argnames=("backend",))
def _uniformity(updates: Array, f: Array, tau: Array, *, backend: ops.Backend) -> Array:
    flagged = uniformity_flags(updates, f, tau, backend=backend)
    ok = ops.finite_rows(updates, backend=backend)
    fill = ops.masked_mean_safe(updates, ok & ~flagged, ok)
    return jnp.where(flagged[:, None], fill[None, :], updates)


@register("preaggregator", "uniformity", tau=real())
def uniformity(tau=0.1, *, backend: ops.Backend | None = None) -> Stage:
    """Replaces up to `f` suspiciously uniform rows by the mean of the others (see the module
    docstring; in the spirit of ProDiGy's "suspicious uniformity", arXiv 2509.09534).

    Use it alone as `chain(uniformity, mean)` (then the mean of the kept rows) or in front of a
    robust rule, `chain(attack, uniformity, dnc)`; put it first among the pre-aggregators (NNM and
    bucketing mix rows, which hides duplicates).

    Args:
      tau: a row is suspicious when its nearest neighbour is closer than `tau` times the lower
        median nearest-neighbour distance (`> 0`; traceable).
      backend: `ops.Backend` (resolved now).

    Returns:
      A pre-aggregator `Stage` (`[n, d] -> [n, d]`, `f' = f`); limit `f <= (n - 1) // 2`.
    """
    backend = ops.resolve(backend)

    def update(x, state, ctx):
        check_updates("uniformity", x)
        n = x.shape[0]
        fr = resolve_f(ctx.f, majority_limit(n), "uniformity", n)
        out = _uniformity(x, fr, jnp.asarray(tau, x.dtype), backend=backend)
        return out, state, ctx._replace(byzantine_mask=None)

    return make_stage("uniformity", "preaggregator", empty_init, update, max_f=majority_limit)


__all__ = ["uniformity", "uniformity_flags"]
