"""FoolsGold: down-weighting clients whose update histories point the same way (sybils).

    rule = stages.get("rule", "foolsgold", num_clients=N)        # N: clients in the partition
    state = rule.init(U)                                         # FoolsGoldState, history [N, k]
    g, state, ctx = rule.update(U, state, RoundContext(mask, f, key, clients=ids))   # ids: [n] int

The state is each client's running sum of updates, indexed by client id: `[num_clients, d]`
float (`k = d`), or, with `sketch=k`, the sums restricted to `k` fixed coordinates drawn once
from `seed` (`[num_clients, k]`; 4 * N * k bytes in float32, e.g. 3,597 FEMNIST clients x
848,382 parameters is 12 GB exact, 14 MB with k = 1000). The simulation passes each round's
sampled client ids in `ctx.clients` (the adapter: `aggregate(U, state, f=f, clients=ids)`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import ops
from strike_jax.aggregators.base import rule_stage
from strike_jax.registry import integer, is_traced, optional, register
from strike_jax.stages import Stage

Array = jax.Array


class FoolsGoldState(NamedTuple):
    """FoolsGold's state.

    Attributes:
      history: `[num_clients, k]` running sum of each client's (finite) updates on the sketched
        coordinates (`k = d` without a sketch).
      coords: `[k]` int32 coordinate indices of the sketch (`arange(d)` without one).
    """

    history: Array
    coords: Array


def foolsgold_weights(cos: Array, ok: Array) -> Array:
    """FoolsGold's learning-rate weights `alpha [n]` in `[0, 1]` from the history cosines.

    Fung, Yoon & Beschastnikh 2020, Alg. 1 (confidence kappa = 1), as the authors' code computes it:
    `cs` = cosine similarities with the diagonal set to 0 (so `v_i = max_j cs_ij >= 0`);
    pardoning: `cs_ij <- cs_ij v_i / v_j` when `v_j > v_i`; `alpha_i = 1 - max_j cs_ij`, clipped to
    `[0, 1]`; `alpha <- alpha / max(alpha)`; `alpha_i = 1` becomes 0.99;
    `alpha_i <- ln(alpha_i / (1 - alpha_i)) + 0.5`, clipped to `[0, 1]` (`alpha_i = 0` gives 0).

    Guards (where the authors' code gives NaN): if every `alpha_i` is 0 (every history duplicated)
    all weights are 0. Rows not `ok` (non-finite or zero history) weigh 0 and are nobody's
    neighbour (similarity 0).
    """
    n = cos.shape[0]
    both = ok[:, None] & ok[None, :] & ~jnp.eye(n, dtype=bool)
    cs = jnp.where(both, cos, 0.0)
    v = jnp.max(cs, axis=1)
    pardon = v[None, :] > v[:, None]  # implies v_j > 0
    cs = jnp.where(pardon, cs * v[:, None] / jnp.where(pardon, v[None, :], 1.0), cs)
    alpha = jnp.clip(1.0 - jnp.max(cs, axis=1), 0.0, 1.0)
    alpha = jnp.where(ok, alpha, 0.0)
    top = jnp.max(alpha)
    alpha = jnp.where(top > 0, alpha / jnp.where(top > 0, top, 1.0), 0.0)
    alpha = jnp.where(alpha >= 1.0, 0.99, alpha)
    pos = alpha > 0
    safe = jnp.where(pos, alpha, 0.5)
    logit = jnp.log(safe / (1.0 - safe)) + 0.5
    return jnp.where(pos & ok, jnp.clip(logit, 0.0, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("backend",))
def _foolsgold(updates: Array, history: Array, coords: Array, clients: Array, *,
               backend: ops.Backend) -> tuple[Array, Array]:
    n, d = updates.shape
    part = jax.lax.stop_gradient(updates if coords.shape[0] == d else jnp.take(updates, coords, axis=1))
    # Optimistic: the new history rows and their Gram matrix in one go; a non-finite update shows
    # on the Gram diagonal (the stored history is finite), and only then are the rows rebuilt
    # without it (non-finite updates are never added to the history).
    rows = jnp.take(history, clients, axis=0) + part
    g = ops.gram(rows, backend=backend)
    finite = jnp.isfinite(jnp.diagonal(g))

    def clean(_):
        r = jnp.take(history, clients, axis=0) + jnp.where(finite[:, None], part, 0.0)
        return r, ops.gram(r, backend=backend)

    rows, g = jax.lax.cond(jnp.all(finite), lambda _: (rows, g), clean, None)
    history = history.at[clients].set(rows)
    cos, ok = ops.cosine_from_gram(g)
    alpha = jax.lax.stop_gradient(foolsgold_weights(cos, ok & finite))
    return ops.weighted_rows_safe(alpha / n, updates, finite), history


def _check_clients(clients: Any, n: int, num_clients: int) -> Array:
    if clients is None:
        raise ValueError("foolsgold needs the sampled clients' ids: RoundContext(..., clients=ids) (or "
                         "aggregate(..., clients=ids)) with ids an [n] int array in [0, num_clients).")
    clients = jnp.asarray(clients)
    chex.assert_shape(clients, (n,), custom_message=f"foolsgold: ctx.clients must be [n] client ids with n={n}")
    chex.assert_type(clients, int, custom_message="foolsgold: ctx.clients must be integer client ids")
    if not is_traced(clients):
        c = np.asarray(clients)
        if c.min() < 0 or c.max() >= num_clients:
            raise ValueError(f"foolsgold: client ids must be in [0, num_clients={num_clients}); got "
                             f"min {c.min()}, max {c.max()}.")
        if len(np.unique(c)) != n:
            raise ValueError("foolsgold: client ids must be distinct within a round.")
    return clients.astype(jnp.int32)


@register("rule", "foolsgold", num_clients=optional(integer(low=1)), sketch=optional(integer(low=1)),
          seed=integer(low=0))
def foolsgold(num_clients=None, sketch=None, seed=0, *, backend: ops.Backend | None = None) -> Stage:
    """FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020, "The limitations of federated learning in
    sybil settings", Alg. 1). Stateful over rounds.

    Each round: add every sampled client's update to its history `H_i` (non-finite updates are not
    added); `cs_ij = cos(H_i, H_j)` among the round's sampled clients; weights `alpha_i` by
    `foolsgold_weights`; output `(1/n) sum_i alpha_i x_i`. The paper returns `sum_i alpha_i x_i` for
    a server step with its own learning rate; dividing by `n` makes it FedAvg when every
    `alpha_i = 1`, as FLPoison. Not in this version: the paper's optional importance weighting
    of output-layer features.

    Round input: `ctx.clients`, the sampled clients' ids (`[n]` int in `[0, num_clients)`, one per
    row, distinct; ValueError without it). The rows must be the clients' own updates: after
    bucketing there are fewer rows than ids (chex raises). `f` is checked and ignored; no limit.
    Under `jit` pass the state in and out (donate it to update the history in place).

    Args:
      num_clients: N, the number of client ids (static; required: the history has one row per
        client).
      sketch: None (exact history, `[N, d]`) or `k` (history on `k` coordinates drawn uniformly
        without replacement from `seed`, `[N, k]`; the cosines are then estimates; static).
      seed: seed of the sketch's coordinates (static).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage` (`info["stateful"]`, `info["needs_clients"]`); `init(shape) ->
      FoolsGoldState`. Differentiable in the updates through the output average (the weights
      depend on the history, which holds this round's updates: they are held fixed).

    Raises:
      ValueError: `num_clients` not given.
    """
    if num_clients is None:
        raise ValueError("foolsgold keeps one history row per client: pass num_clients=N (the number of "
                         "client ids, e.g. aggregators.get('foolsgold', num_clients=50)).")
    backend = ops.resolve(backend)

    def init(shape):
        d = shape.shape[-1]
        if sketch is None or sketch >= d:
            coords = jnp.arange(d, dtype=jnp.int32)
        else:
            idx = jax.random.choice(jax.random.PRNGKey(seed), d, (sketch,), replace=False)
            coords = jnp.sort(idx).astype(jnp.int32)
        return FoolsGoldState(jnp.zeros((num_clients, coords.shape[0]), shape.dtype), coords)

    def core(updates, state, f, key, ctx):
        clients = _check_clients(ctx.clients, updates.shape[0], num_clients)
        chex.assert_shape(state.history, (num_clients, state.coords.shape[0]),
                          custom_message=f"foolsgold: the state must be the [num_clients={num_clients}, k] history")
        out, history = _foolsgold(updates, state.history, state.coords, clients, backend=backend)
        return out, FoolsGoldState(history, state.coords)

    return rule_stage("foolsgold", core, init=init, with_ctx=True, stateful=True, needs_clients=True)


__all__ = ["FoolsGoldState", "foolsgold", "foolsgold_weights"]
