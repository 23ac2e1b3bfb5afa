"""FLTrust: aggregation bootstrapped by the server's own update on a small clean root dataset.

    rule = aggregators.get("fltrust")
    g, state = rule.aggregate(updates, rule.init(updates), f=f, root_update=g0)   # g0: [d]

The server trains the global model on its root dataset (same local training as the clients) and
passes that update `g0` as `root_update`. The simulation will supply it (a root dataset drawn
from the training set, excluded from the clients, size configurable); until then callers pass it
themselves. `f` is accepted and ignored (FLTrust does not need it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import Aggregator, empty_init
from strike_jax.aggregators.similarity import norms_and_dots, safe_norm

Array = jax.Array


def fltrust_weights(sq_norms: Array, dots: Array, root_sq_norm: Array) -> Array:
    """Row weights `[n]` of FLTrust's output `sum_i w_i x_i`.

    `TS_i = ReLU(cos(x_i, g0))`, `w_i = TS_i ||g0|| / (||x_i|| sum_j TS_j)`; rows with a non-finite
    or zero norm get `TS_i = 0`; all weights are 0 when every `TS_i` is 0 (the paper's zero update).
    """
    ok = jnp.isfinite(sq_norms) & jnp.isfinite(dots) & (sq_norms > 0)
    nrm = safe_norm(jnp.where(ok, sq_norms, 1.0))
    root = safe_norm(root_sq_norm)
    cos = jnp.where(ok & (root > 0), dots / (jnp.where(ok, nrm, 1.0) * jnp.where(root > 0, root, 1.0)), 0.0)
    ts = jax.nn.relu(cos)
    total = ts.sum()
    return jnp.where(total > 0, ts * root / (jnp.where(ok, nrm, 1.0) * jnp.where(total > 0, total, 1.0)), 0.0)


def fltrust() -> Aggregator:
    """FLTrust (Cao, Fang, Liu & Gong, NDSS 2021, Eq. 1-4).

    With `g0` the server's update on its root dataset: `TS_i = ReLU(<x_i, g0> / (||x_i|| ||g0||))`
    (Eq. 1-2), `x_i <- (||g0|| / ||x_i||) x_i` (Eq. 3), output
    `sum_i TS_i x_i / sum_j TS_j` (Eq. 4; zeros when every `TS_i` is 0). One blocked pass for the
    norms and inner products, one weighted row sum. Works identically in update space (all terms
    are invariant to flipping the sign of every row and of `g0`). Non-finite rows get trust 0.
    Differentiable (in the updates and in `g0`).

    Call: `aggregate(updates [n, d], state, *, f=0, key=None, root_update [d])`; `root_update` is
    required (ValueError without it). Stateless; no limit on `f`.
    """

    @jax.jit
    def impl(updates, g0):
        sq, dots = norms_and_dots(updates, g0)
        w = fltrust_weights(sq, dots, jnp.vdot(g0, g0))
        return ops.weighted_rows_safe(w, updates, jnp.isfinite(sq) & jnp.isfinite(dots))

    def aggregate(updates, state, *, f=0, key=None, root_update=None):
        if root_update is None:
            raise ValueError("fltrust needs the server's update on its root dataset: "
                             "aggregate(updates, state, f=..., root_update=g0) with g0 of shape [d].")
        g0 = jnp.asarray(root_update, updates.dtype)
        if g0.shape != updates.shape[1:]:
            raise ValueError(f"fltrust: root_update has shape {g0.shape}; expected {updates.shape[1:]} "
                             "(one [d] vector, like a row of the updates).")
        return impl(updates, g0), state

    return Aggregator("fltrust", empty_init, aggregate, lambda n: None, {})
