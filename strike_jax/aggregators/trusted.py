"""FLTrust: aggregation bootstrapped by the server's own update on a small clean root dataset.

    rule = stages.get("rule", "fltrust")
    g, state, ctx = rule.update(U, rule.init(U), RoundContext(mask, f, key, root_update=g0))  # g0: [d]

The server trains the global model on its root dataset (same local training as the clients) and
puts that update `g0` in the round context (`ctx.root_update`; the adapter
`aggregators.get("fltrust").aggregate(U, state, f=f, root_update=g0)` does the same). The
simulation supplies it (a root dataset drawn from the training set, excluded from the clients,
size configurable). `f` is checked and ignored (FLTrust does not need it).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import rule_stage
from strike_jax.registry import register
from strike_jax.stages import Stage

Array = jax.Array


def fltrust_weights(sq_norms: Array, dots: Array, root_sq_norm: Array) -> Array:
    """Row weights `[n]` of FLTrust's output `sum_i w_i x_i`.

    `TS_i = ReLU(cos(x_i, g0))`, `w_i = TS_i ||g0|| / (||x_i|| sum_j TS_j)`; rows with a non-finite
    or zero norm get `TS_i = 0`; all weights are 0 when every `TS_i` is 0 (the paper's zero update).
    """
    ok = jnp.isfinite(sq_norms) & jnp.isfinite(dots) & (sq_norms > 0)
    nrm = ops.safe_sqrt(jnp.where(ok, sq_norms, 1.0))
    root = ops.safe_sqrt(root_sq_norm)
    cos = jnp.where(ok & (root > 0), dots / (jnp.where(ok, nrm, 1.0) * jnp.where(root > 0, root, 1.0)), 0.0)
    ts = jax.nn.relu(cos)
    total = ts.sum()
    return jnp.where(total > 0, ts * root / (jnp.where(ok, nrm, 1.0) * jnp.where(total > 0, total, 1.0)), 0.0)


@functools.partial(jax.jit, static_argnames=("backend",))
def _fltrust(updates: Array, g0: Array, *, backend: ops.Backend) -> Array:
    sq, dots = ops.sq_norms_and_dots(updates, g0, backend=backend)
    w = fltrust_weights(sq, dots, jnp.vdot(g0, g0))
    return ops.weighted_rows_safe(w, updates, jnp.isfinite(sq) & jnp.isfinite(dots))


@register("rule", "fltrust")
def fltrust(*, backend: ops.Backend | None = None) -> Stage:
    """FLTrust (Cao, Fang, Liu & Gong, NDSS 2021, Eq. 1-4).

    With `g0` the server's update on its root dataset: `TS_i = ReLU(<x_i, g0> / (||x_i|| ||g0||))`
    (Eq. 1-2), `x_i <- (||g0|| / ||x_i||) x_i` (Eq. 3), output
    `sum_i TS_i x_i / sum_j TS_j` (Eq. 4; zeros when every `TS_i` is 0). One blocked pass for the
    norms and inner products, one weighted row sum. Works identically in update space (all terms
    are invariant to flipping the sign of every row and of `g0`). Non-finite rows get trust 0.
    Differentiable (in the updates and in `g0`).

    Round input: `ctx.root_update`, `[d]` (ValueError without it; chex checks the shape).
    Stateless; no limit on `f`.

    Returns:
      A rule `Stage` (`info["needs_root_update"]`).
    """
    backend = ops.resolve(backend)

    def core(updates, state, f, key, ctx):
        if ctx.root_update is None:
            raise ValueError("fltrust needs the server's update on its root dataset: RoundContext(..., "
                             "root_update=g0) (or aggregate(..., root_update=g0)) with g0 of shape [d].")
        g0 = jnp.asarray(ctx.root_update, updates.dtype)
        chex.assert_shape(g0, updates.shape[1:],
                          custom_message="fltrust: ctx.root_update must be one [d] vector, like a row of the updates")
        return _fltrust(updates, g0, backend=backend), state

    return rule_stage("fltrust", core, with_ctx=True, needs_root_update=True)


__all__ = ["fltrust", "fltrust_weights"]
