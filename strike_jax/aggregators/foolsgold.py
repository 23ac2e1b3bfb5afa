"""FoolsGold: down-weighting clients whose update histories point the same way (sybils).

    rule = aggregators.get("foolsgold", num_clients=N)          # N: clients in the partition
    state = rule.init(updates)                                    # history [N, k]
    g, state = rule.aggregate(updates, state, f=f, clients=ids)  # ids: [n] int client ids

The state is each client's running sum of updates, indexed by client id: `[num_clients, d]`
float (`k = d`), or, with `sketch=k`, the sums restricted to `k` fixed coordinates drawn once
from `seed` (`[num_clients, k]`; 4 * N * k bytes in float32, e.g. 3,597 FEMNIST clients x
848,382 parameters is 12 GB exact, 14 MB with k = 1000). The simulation will pass each round's
sampled client ids; until then callers pass them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import ops
from strike_jax.aggregators.base import Aggregator, check_number, is_concrete
from strike_jax.aggregators.similarity import cosine_from_gram, gram

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


def foolsgold(num_clients: int | None = None, sketch: int | None = None, seed: int = 0) -> Aggregator:
    """FoolsGold (Fung, Yoon & Beschastnikh, RAID 2020, "The limitations of federated learning in
    sybil settings", Alg. 1). Stateful over rounds.

    Each round: add every sampled client's update to its history `H_i` (non-finite updates are not
    added); `cs_ij = cos(H_i, H_j)` among the round's sampled clients; weights `alpha_i` by
    `foolsgold_weights`; output `(1/n) sum_i alpha_i x_i`. The paper returns `sum_i alpha_i x_i` for
    a server step with its own learning rate; dividing by `n` makes it FedAvg when every
    `alpha_i = 1`, as FLPoison. Not in this version: the paper's optional importance weighting
    of output-layer features.

    Call: `aggregate(updates [n, d], state, *, f=0, key=None, clients [n] int)`; `clients` (the
    sampled clients' ids in `[0, num_clients)`, one per row, distinct) is required. `f` is ignored.
    Under `jit` pass the state in and out (donate it to update the history in place).

    Args:
      num_clients: N, the number of client ids (static).
      sketch: None (exact history, `[N, d]`) or `k` (history on `k` coordinates drawn uniformly
        without replacement from `seed`, `[N, k]`; the cosines are then estimates).
      seed: seed of the sketch's coordinates.

    Returns:
      An `Aggregator`; `init(updates) -> FoolsGoldState`. Differentiable in the updates through
      the output average (the weights depend on the history, which holds this round's updates:
      they are held fixed).
    """
    if num_clients is None:
        raise ValueError("foolsgold keeps one history row per client: pass num_clients=N (the number of "
                         "client ids, e.g. aggregators.get('foolsgold', num_clients=50)).")
    check_number("foolsgold", "num_clients", num_clients, low=1, strict=False, integer=True)
    if sketch is not None:
        check_number("foolsgold", "sketch", sketch, low=1, strict=False, integer=True)
    check_number("foolsgold", "seed", seed, low=0, strict=False, integer=True)
    num_clients = int(num_clients)
    sketch = None if sketch is None else int(sketch)

    def coords_for(d: int) -> Array:
        if sketch is None or sketch >= d:
            return jnp.arange(d, dtype=jnp.int32)
        idx = jax.random.choice(jax.random.PRNGKey(int(seed)), d, (sketch,), replace=False)
        return jnp.sort(idx).astype(jnp.int32)

    def init(updates):
        d = updates.shape[-1]
        coords = coords_for(d)
        return FoolsGoldState(jnp.zeros((num_clients, coords.shape[0]), updates.dtype), coords)

    @jax.jit
    def impl(updates, history, coords, clients):
        n, d = updates.shape
        part = jax.lax.stop_gradient(updates if coords.shape[0] == d else jnp.take(updates, coords, axis=1))
        # Optimistic: the new history rows and their Gram matrix in one go; a non-finite update
        # shows on the Gram diagonal (the stored history is finite), and only then are the rows
        # rebuilt without it (non-finite updates are never added to the history).
        rows = jnp.take(history, clients, axis=0) + part
        g = gram(rows)
        finite = jnp.isfinite(jnp.diagonal(g))

        def clean(_):
            r = jnp.take(history, clients, axis=0) + jnp.where(finite[:, None], part, 0.0)
            return r, gram(r)

        rows, g = jax.lax.cond(jnp.all(finite), lambda _: (rows, g), clean, None)
        history = history.at[clients].set(rows)
        cos, ok = cosine_from_gram(g)
        alpha = jax.lax.stop_gradient(foolsgold_weights(cos, ok & finite))
        out = ops.weighted_rows_safe(alpha / n, updates, finite)
        return out, history

    def aggregate(updates, state, *, f=0, key=None, clients=None):
        n, d = updates.shape
        if clients is None:
            raise ValueError("foolsgold needs the sampled clients' ids: aggregate(updates, state, f=..., "
                             "clients=ids) with ids an [n] int array in [0, num_clients).")
        clients = jnp.asarray(clients)
        if clients.shape != (n,) or not jnp.issubdtype(clients.dtype, jnp.integer):
            raise ValueError(f"foolsgold: clients must be an [n]={n} integer array of client ids; got "
                             f"shape {clients.shape}, dtype {clients.dtype}.")
        if is_concrete(clients):
            c = np.asarray(clients)
            if c.min() < 0 or c.max() >= num_clients:
                raise ValueError(f"foolsgold: client ids must be in [0, num_clients={num_clients}); got "
                                 f"min {c.min()}, max {c.max()}.")
            if len(np.unique(c)) != n:
                raise ValueError("foolsgold: client ids must be distinct within a round.")
        if state.history.shape[0] != num_clients or state.coords.ndim != 1:
            raise ValueError(f"foolsgold: state does not match num_clients={num_clients}; use rule.init(updates).")
        out, history = impl(updates, state.history, state.coords, clients.astype(jnp.int32))
        return out, FoolsGoldState(history, state.coords)

    return Aggregator("foolsgold", init, aggregate, lambda n: None,
                      {"num_clients": num_clients, "sketch": sketch, "seed": seed})

