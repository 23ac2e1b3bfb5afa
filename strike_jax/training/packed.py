"""Packed local training: `L` lanes, each training a list of clients one after another (SPEC §3).

The classic vmapped layout gives every client a lane and pads it to the longest client's steps: on a
Dirichlet(0.5) split about half of the work is masked no-ops (a `lax.cond` that skips a padded step
becomes a select under `vmap`). Here the round's real steps are packed into `L` lanes of `T` steps
(`strike_jax.training.schedule.pack_lanes`): at a client's first step its lane restarts from the
global model with a fresh optimizer state, and after its last step the lane's
`w_client - w_global` is written into the client's row of `U`.

The training of a batch of `R` runs is one loop over steps whose body is a `vmap` over runs of a
`vmap` over lanes of one SGD step: the program holds one copy of the step whatever `S` (fast
compiles), device memory holds `R * L` models in flight, not `R * n`. The loop is not itself under
a `vmap` (a batched loop would select its whole carry, `U` included, at every step): it runs the
longest makespan of the batch, each run idling (masked no-op steps) past its own. Rows are written
leaf by leaf, each leaf into its own columns of the one flat `[R, n, d]` buffer (the layout of
`flatten_variables`: no per-step flattening, and no second `[R, n, d]` copy at the end, which at
10,000 clients x 100k parameters was 4 GB more peak memory and ~0.5 s of fresh-buffer page faults),
and only in steps where some lane finishes a client (a `lax.cond` outside every `vmap`, so a real
branch).

The results equal per-client training (`make_local_train`, the "steps" strategy) up to float
rounding: the same batches in the same order, the same step (`make_local_step`).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from strike_jax.training.local import LocalConfig, LocalHparams, LocalStats, _ravel_leaves, make_local_step
from strike_jax.training.schedule import LanePlan

Array = jax.Array


def _where(c, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def make_packed_train(model, cfg: LocalConfig) -> Callable:
    """Builds the packed local training of a batch of runs (pure, unjitted).

    Args:
      model: a `strike_jax.models.ModelSpec`.
      cfg: `LocalConfig` (the optimizer's structure; numbers come as `hp`).

    Returns:
      `train(variables, x_train, y_train, plan, batch_idx, batch_mask, flip, hp, num_steps=None) ->
      (U, LocalStats)`, every argument but the shared `x_train`, `y_train` and `num_steps` with a
      leading run axis `R`: `variables` the runs' global models; `plan` a `LanePlan` of `[R, T, L]`;
      `batch_idx` / `batch_mask` `[R, T, L, B]` (`schedule.lane_batches`); `flip` `[R, n]` bool
      (clients training on mapped labels); `hp` a `LocalHparams` of `[R]`; `num_steps` the steps to
      run (a traced scalar: the batch's longest makespan; None: all `T`). `U` is `[R, n, d]`
      float32 (rows of clients without a step stay zero); the stats are `[R, n]`.
    """
    ls = make_local_step(model, cfg)
    has_bs = model.has_batch_stats

    def train(variables, x_train, y_train, plan: LanePlan, batch_idx, batch_mask, flip, hp: LocalHparams,
              num_steps=None):
        R, T, L = plan.slot.shape
        n = flip.shape[1]
        params0 = variables["params"]
        bs0 = variables.get("batch_stats", {}) if has_bs else {}
        opt0 = jax.vmap(ls.init_opt)(params0)
        start = (params0, bs0, opt0)                                    # [R, ...]
        flip_ext = jnp.concatenate([flip.astype(bool), jnp.zeros((R, 1), bool)], axis=1)
        run_ids = jnp.broadcast_to(jnp.arange(R)[:, None], (R, L))

        def lane(state, start_r, hp_r, first, idx, mask, flip_l):
            state = _where(first, start_r, state)
            p, bs, o = state
            p2, bs2, o2, loss = ls.step(p, bs, o, x_train, y_train, idx, mask, flip_l, hp_r)
            count = mask.sum().astype(jnp.int32)
            active = count >= ls.min_examples
            return _where(active, (p2, bs2, o2), state), jnp.where(active, loss, 0.0), jnp.where(active, count, 0)

        lanes_of_run = jax.vmap(lane, in_axes=(0, None, None, 0, 0, 0, 0))
        step_all = jax.vmap(lanes_of_run)

        leaves0 = jax.tree_util.tree_leaves((params0, bs0))
        sizes = [math.prod(a.shape[1:]) for a in leaves0]

        def write(U, state, rows):
            # Leaf by leaf: U[r, rows[r, l], leaf's columns] = lane (r, l)'s model - run r's global
            # model; rows of lanes that did not finish a client are n, out of bounds: dropped.
            new = jax.tree_util.tree_leaves((state[0], state[1]))
            off = 0
            for a, b, size in zip(new, leaves0, sizes):
                delta = (a - jnp.expand_dims(b, 1)).reshape(R, L, size).astype(U.dtype)
                U = U.at[run_ids, rows, off:off + size].set(delta, mode="drop")
                off += size
            return U

        def body(t, carry):
            state, U, loss_sum, examples, steps = carry
            slot, first, last, idx, mask = (plan.slot[:, t], plan.first[:, t], plan.last[:, t],
                                            batch_idx[:, t], batch_mask[:, t])
            flip_l = jnp.take_along_axis(flip_ext, slot, axis=1)
            state, loss, count = step_all(state, start, hp, first, idx, mask, flip_l)
            rows = jnp.where(last, slot, n)
            U = jax.lax.cond(last.any(), write, lambda U, s, r: U, U, state, rows)
            loss_sum = loss_sum.at[run_ids, slot].add(loss * count.astype(jnp.float32))
            examples = examples.at[run_ids, slot].add(count)
            steps = steps.at[run_ids, slot].add((count > 0).astype(jnp.int32))
            return state, U, loss_sum, examples, steps

        lanes = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[:, None], (R, L, *x.shape[1:])), start)
        # The update layout of `flatten_variables` (parameters, then BatchNorm statistics, each in
        # jax's tree order).
        U = jnp.zeros((R, n, sum(sizes)), jnp.float32)
        carry = (lanes, U, jnp.zeros((R, n + 1), jnp.float32), jnp.zeros((R, n + 1), jnp.int32),
                 jnp.zeros((R, n + 1), jnp.int32))
        _, U, loss_sum, examples, steps = jax.lax.fori_loop(0, T if num_steps is None else num_steps, body, carry)
        stats = LocalStats(loss=loss_sum[:, :n] / jnp.maximum(examples[:, :n], 1).astype(jnp.float32),
                           num_steps=steps[:, :n], num_examples=examples[:, :n])
        return U, stats

    return train


def make_client_train(model, cfg: LocalConfig) -> Callable:
    """Builds the per-client ("vmap") local training of a batch of runs (pure, unjitted): one lane
    per client, the clients in chunks of `chunk` lanes, every client's steps padded to the round's
    longest (no packing: a client's row is its lane's).

    What it saves over the packed layout when every client takes the same number of steps (e.g.
    `local_steps=1`, or IID clients of at most `B` samples): every client's first step starts from
    the one global model, so it is one batched gradient at shared parameters (`vmap` with the
    parameters unbatched: the forward pass is one matrix product over all the chunk's examples,
    no `[L, d]` broadcast of the model, no lane restarts), and rows are written as contiguous
    slices of `U` (no scatter). A round of one step per client runs no loop over steps at all.

    Args:
      model: a `strike_jax.models.ModelSpec`.
      cfg: `LocalConfig` (the optimizer's structure; numbers come as `hp`).

    Returns:
      `train(variables, x_train, y_train, batch_idx, batch_mask, flip, hp, chunk, num_steps=None,
      out=None) -> (U, LocalStats)`, with a leading run axis `R` on every argument but the shared
      `x_train`, `y_train`, `chunk` and `num_steps`: `batch_idx` / `batch_mask` `[R, n, S, B]` (the per-client
      layout, `schedule.padded_schedule`); `flip` `[R, n]`; `hp` a `LocalHparams` of `[R]`; `chunk`
      (static) the clients trained together (memory: `chunk` models in flight; the last chunk
      overlaps the one before when `chunk` does not divide `n`, recomputing the same rows);
      `num_steps` the steps to run (a traced scalar <= S: the batch's longest client; None: S);
      `out` an `[R, n, d]` float32 buffer that `U` is written into (every row is overwritten: pass
      it donated, e.g. the previous round's matrix, and no fresh `[R, n, d]` is allocated; None: zeros).
      `U` `[R, n, d]` float32 in the layout of `flatten_variables` (rows of clients without a step
      stay zero); stats `[R, n]`. Equal to the packed layout and to per-client training up to float
      rounding (same batches, same order, same step).
    """
    ls = make_local_step(model, cfg)
    has_bs = model.has_batch_stats

    def one_run(params0, bs0, x_train, y_train, batch_idx, batch_mask, flip, hp, chunk, num_steps, out):
        n, S = batch_idx.shape[:2]
        C = max(1, min(int(chunk), n))
        opt0 = ls.init_opt(params0)
        leaves0 = jax.tree_util.tree_leaves((params0, bs0))
        d = sum(math.prod(a.shape) for a in leaves0)

        def count_of(mask):
            count = mask.sum(-1).astype(jnp.int32)
            return count, count >= ls.min_examples

        def first_step(idx, mask, fl):
            # Every client starts from the shared global model: parameters unbatched.
            p, bs, o, loss = jax.vmap(lambda i, m, f: ls.step(params0, bs0, opt0, x_train, y_train, i, m, f, hp))(
                idx, mask, fl)
            count, active = count_of(mask)
            keep = lambda new, old: jnp.where(  # noqa: E731 - an inactive client keeps the global model
                active.reshape((-1,) + (1,) * old.ndim), new, old)
            state = jax.tree_util.tree_map(keep, (p, bs, o), (params0, bs0, opt0))
            return state, jnp.where(active, loss, 0.0), jnp.where(active, count, 0)

        def later_step(state, idx, mask, fl):
            p2, bs2, o2, loss = jax.vmap(
                lambda s, i, m, f: ls.step(*s, x_train, y_train, i, m, f, hp))(state, idx, mask, fl)
            count, active = count_of(mask)
            state = jax.tree_util.tree_map(
                lambda a, b: jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), (p2, bs2, o2), state)
            return state, jnp.where(active, loss, 0.0), jnp.where(active, count, 0)

        def chunk_body(c, carry):
            U, loss_sum, examples, steps = carry
            s = jnp.minimum(c * C, n - C)
            idx = jax.lax.dynamic_slice_in_dim(batch_idx, s, C)
            mask = jax.lax.dynamic_slice_in_dim(batch_mask, s, C)
            fl = jax.lax.dynamic_slice_in_dim(flip, s, C)
            state, loss, count = first_step(idx[:, 0], mask[:, 0], fl)
            ls_c, ex_c, st_c = loss * count.astype(jnp.float32), count, (count > 0).astype(jnp.int32)
            if S > 1:
                def step_body(t, inner):
                    state, ls_c, ex_c, st_c = inner
                    state, loss, count = later_step(state, idx[:, t], mask[:, t], fl)
                    return (state, ls_c + loss * count.astype(jnp.float32), ex_c + count,
                            st_c + (count > 0).astype(jnp.int32))

                stop = S if num_steps is None else jnp.clip(num_steps, 1, S)
                state, ls_c, ex_c, st_c = jax.lax.fori_loop(1, stop, step_body, (state, ls_c, ex_c, st_c))
            new = jax.tree_util.tree_leaves((state[0], state[1]))
            rows = _ravel_leaves([a - jnp.expand_dims(b, 0) for a, b in zip(new, leaves0)], (C,))
            U = jax.lax.dynamic_update_slice_in_dim(U, rows.astype(U.dtype), s, 0)
            put = lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v, s, 0)  # noqa: E731
            return U, put(loss_sum, ls_c), put(examples, ex_c), put(steps, st_c)

        U0 = jnp.zeros((n, d), jnp.float32) if out is None else out
        carry = (U0, jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32))
        U, loss_sum, examples, steps = jax.lax.fori_loop(0, -(-n // C), chunk_body, carry)
        stats = LocalStats(loss=loss_sum / jnp.maximum(examples, 1).astype(jnp.float32), num_steps=steps,
                           num_examples=examples)
        return U, stats

    def train(variables, x_train, y_train, batch_idx, batch_mask, flip, hp: LocalHparams, chunk: int,
              num_steps=None, out=None):
        params0 = variables["params"]
        bs0 = variables.get("batch_stats", {}) if has_bs else {}
        run = lambda p, b, i, m, f, h, o: one_run(p, b, x_train, y_train, i, m, f.astype(bool), h,  # noqa: E731
                                                  chunk, num_steps, o)
        return jax.vmap(run)(params0, bs0, batch_idx, batch_mask, flip, hp, out)

    return train
