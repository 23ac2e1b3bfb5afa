"""Divide-and-Conquer (DnC, Shejwalkar & Houmansadr, NDSS 2021; SPEC §7).

`k = ceil(c * f)`; `niters` times: draw `b` coordinates uniformly with replacement (as the
reference: `keys = jax.random.split(key, niters)`, iteration `t` uses
`jax.random.randint(keys[t], (b,), 0, d)`), centre the `[n, b]` sub-matrix on the mean of the finite rows, take its
top right singular vector `v`, score `s_i = <X_i - mean, v>^2`, mark the `k` highest scores as bad.
Average the rows never marked bad. Non-finite rows are removed before the SVD and count towards `k`.

The top singular direction is computed from the small `[n, n]` Gram matrix of the sub-matrix
(`v = cen^T u / ||cen^T u||` with `u` its top eigenvector), under `stop_gradient`: the selection is
piecewise constant, so gradients flow only through the final average (and never through a
degenerate eigen-decomposition).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import rule_stage
from strike_jax.registry import integer, is_traced, real, register
from strike_jax.stages import Stage

Array = jax.Array


def _dnc_core(updates: Array, k: Array, key: Array, finite: Array, niters: int, b: int) -> Array:
    d = updates.shape[1]
    good = finite
    keys = jax.random.split(key, niters)
    for it in range(niters):
        cols = jax.random.randint(keys[it], (b,), 0, d)
        # Non-finite rows are removed before the SVD (zeroed and given no weight).
        sub = jax.lax.stop_gradient(jnp.where(finite[:, None], updates[:, cols], 0.0))
        mu = ops.masked_mean(sub, finite)
        cen = jnp.where(finite[:, None], sub - mu, 0.0)
        # v = top right singular vector of `cen` [n, b], from the smaller of its two Gram matrices
        # (static choice): `cen^T cen` [b, b] once n > b, so that the eigenproblem stays O(b^3)
        # at any n (an [n, n] one is O(n^3): minutes at n = 10,000). Scoring through `cen @ v`
        # (not lambda u_i^2) gives identical rows bit-identical scores, so ties break by row index.
        if cen.shape[0] > cen.shape[1]:
            v = jnp.linalg.eigh(cen.T @ cen)[1][:, -1]
        else:
            v = cen.T @ jnp.linalg.eigh(cen @ cen.T)[1][:, -1]
        v = v / jnp.maximum(jnp.linalg.norm(v), 1e-30)
        scores = jnp.square(cen @ v)
        scores = jnp.where(finite, scores, jnp.inf)
        bad = ops.largest_k_mask(scores, k)
        good = good & ~bad
    # Rows never marked bad; non-finite rows are never averaged (even if k < their number).
    return ops.masked_mean_safe(updates, good, finite)


@functools.partial(jax.jit, static_argnames=("niters", "b", "backend"))
def _dnc(updates: Array, k: Array, key: Array, *, niters: int, b: int, backend: ops.Backend) -> Array:
    # Optimistic: assume every row finite (no pass to check). A non-finite row always shows in
    # the average (0 * nan = nan), and then the careful path reruns with the finite rows.
    n = updates.shape[0]
    fast = _dnc_core(updates, k, key, jnp.ones((n,), bool), niters, b)
    return jax.lax.cond(jnp.all(jnp.isfinite(fast)), lambda u: fast,
                        lambda u: _dnc_core(u, k, key, ops.finite_rows(u, backend=backend), niters, b), updates)


@register("rule", "dnc", c=real(), niters=integer(low=1), b=integer(low=1))
def dnc(c=1.0, niters=1, b=1000, *, backend: ops.Backend | None = None) -> Stage:
    """Builds DnC.

    Args:
      c: filtering fraction; `k = ceil(c * f)` rows are removed per iteration (`k <= n - 1`;
        traceable).
      niters: number of random sub-samplings (static).
      b: number of coordinates sampled per iteration, with replacement (static).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`; `update` needs `ctx.key`. Limit: the largest `f` with `ceil(c f) <= n - 1`
      (None while `c` is traced); a concrete `f` beyond raises, a traced one gives `k = n - 1`.

    Cost: linear in n per iteration: a gather of `[n, b]` and one eigenproblem of
    `min(n, b)` squared, `O(niters (n b min(n, b) + min(n, b)^3))`; `O(n b)` memory.
    """
    backend = ops.resolve(backend)

    def max_f(n):
        # largest f with ceil(c f) <= n - 1
        if is_traced(c):
            return None
        f = int(math.floor((n - 1) / c)) if c > 0 else n - 1
        while f > 0 and math.ceil(c * f) > n - 1:
            f -= 1
        return f

    def check_f(f, n):
        if f is None:
            raise ValueError("dnc: f (the number of Byzantine rows) is required; pass f=0 for none.")
        if not is_traced(f) and not is_traced(c):
            fc = int(f)
            if fc < 0:
                raise ValueError(f"dnc: f={fc} is negative.")
            if math.ceil(c * fc) > n - 1:
                raise ValueError(f"dnc removes k=ceil(c*f)={math.ceil(c * fc)} rows but at most n-1={n - 1} "
                                 f"can go (its limit: f <= {max_f(n)} for c={c}); got f={fc}.")
        return f

    def core(updates, state, f, key):
        n = updates.shape[0]
        k = jnp.clip(jnp.ceil(c * jnp.asarray(f, jnp.float32)).astype(jnp.int32), 0, n - 1)
        return _dnc(updates, k, key, niters=niters, b=b, backend=backend), state

    return rule_stage("dnc", core, limit=max_f, check_f=check_f, needs_key=True)


__all__ = ["dnc"]
