"""Packed local training: `L` lanes, each training a list of clients one after another (SPEC §3).

The classic vmapped layout gives every client a lane and pads it to the longest client's steps: on a
Dirichlet(0.5) split about half of the work is masked no-ops (a `lax.cond` that skips a padded step
becomes a select under `vmap`). Here the round's real steps are packed into `L` lanes of `T` steps
(`strike_jax.training.schedule.pack_lanes`): at a client's first step its lane restarts from the
global model with a fresh optimizer state, and after its last step the lane writes
`flatten(w_client) - flatten(w_global)` into the client's row of `U`. One loop over the round's
steps runs a `vmap` over the lanes of one SGD step, so the program holds one copy of the step
whatever `S` (fast compiles), and device memory holds `L` models in flight, not `n`. The plan has a
static capacity of `T` steps per lane; the loop runs only the round's makespan (a traced count), so
a group of runs whose partitions differ shares one program without training idle steps.

The results equal per-client training (`make_local_train`, the "steps" strategy) up to float
rounding: the same batches in the same order, the same step (`make_local_step`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from strike_jax.training.local import LocalConfig, LocalHparams, LocalStats, flat_delta, make_local_step
from strike_jax.training.schedule import LanePlan

Array = jax.Array


def _where(c, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def make_packed_train(model, cfg: LocalConfig) -> Callable:
    """Builds one run's packed local training (pure, unjitted; vmap it over runs).

    Args:
      model: a `strike_jax.models.ModelSpec`.
      cfg: `LocalConfig` (the optimizer's structure; numbers come as `hp`).

    Returns:
      `train(variables, x_train, y_train, plan, batch_idx, batch_mask, flip, hp, num_steps=None) ->
      (U, LocalStats)`: `variables` the global model; `plan` a `LanePlan` of `[T, L]` arrays;
      `batch_idx` / `batch_mask` `[T, L, B]` (`schedule.lane_batches`); `flip` `[n]` bool (clients
      training on mapped labels); `hp` a `LocalHparams`; `num_steps` the steps to run (traced; the
      plan's makespan; None: all `T`). `U` is `[n, d]` float32 (rows of clients without a
      step stay zero) and the stats are `[n]` arrays.
    """
    ls = make_local_step(model, cfg)
    has_bs = model.has_batch_stats

    def train(variables, x_train, y_train, plan: LanePlan, batch_idx, batch_mask, flip, hp: LocalHparams,
              num_steps=None):
        T, L = plan.slot.shape
        n = flip.shape[0]
        params0 = variables["params"]
        bs0 = variables.get("batch_stats", {}) if has_bs else {}
        opt0 = ls.init_opt(params0)
        d = sum(x.size for x in jax.tree_util.tree_leaves((params0, bs0)))
        flip_ext = jnp.concatenate([flip.astype(bool), jnp.zeros((1,), bool)])

        def lane(state, first, idx, mask, flip_l):
            start = (params0, bs0, opt0)
            state = _where(first, start, state)
            p, bs, o = state
            p2, bs2, o2, loss = ls.step(p, bs, o, x_train, y_train, idx, mask, flip_l, hp)
            count = mask.sum().astype(jnp.int32)
            active = count >= ls.min_examples
            return _where(active, (p2, bs2, o2), state), jnp.where(active, loss, 0.0), jnp.where(active, count, 0)

        def delta(p, bs):
            new = {"params": p, "batch_stats": bs} if has_bs else {"params": p}
            return flat_delta(new, variables)

        def body(t, carry):
            state, U, loss_sum, examples, steps = carry
            slot, first, last, idx, mask = jax.tree_util.tree_map(lambda a: a[t], xs)
            state, loss, count = jax.vmap(lane)(state, first, idx, mask, flip_ext[slot])
            rows = jnp.where(last, slot, n)  # row n is out of bounds: dropped
            U = U.at[rows].set(jax.vmap(delta)(state[0], state[1]), mode="drop")
            loss_sum = loss_sum.at[slot].add(loss * count.astype(jnp.float32))
            examples = examples.at[slot].add(count)
            steps = steps.at[slot].add((count > 0).astype(jnp.int32))
            return state, U, loss_sum, examples, steps

        lanes = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (L, *x.shape)), (params0, bs0, opt0))
        carry = (lanes, jnp.zeros((n, d), jnp.float32), jnp.zeros((n + 1,), jnp.float32),
                 jnp.zeros((n + 1,), jnp.int32), jnp.zeros((n + 1,), jnp.int32))
        xs = (plan.slot, plan.first, plan.last, batch_idx, batch_mask)
        _, U, loss_sum, examples, steps = jax.lax.fori_loop(0, T if num_steps is None else num_steps, body, carry)
        stats = LocalStats(loss=loss_sum[:n] / jnp.maximum(examples[:n], 1).astype(jnp.float32),
                           num_steps=steps[:n], num_examples=examples[:n])
        return U, stats

    return train
