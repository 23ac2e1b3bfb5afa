"""The compiled programs of a batch, their one typed key, and the cache that shares them.

A batch of runs executes three device programs: training (`training.round.make_device_train`), the
server step (`server.make_device_server`) and evaluation. Every static input of a program (its
kind, the structure of the runs, the round's shape, the number of runs, the strategy, the grid's
branches, the ops back-end, the mesh and the server layout, the flags) is in its `ProgramKey`,
built in one place (`program_keys`), so two batches share a program exactly when nothing that
shapes it differs.

Programs are compiled ahead of time (`jax.jit(...).lower(...).compile()`) on a thread pool: the
first batch's three programs compile concurrently, and the next batch's while the current one runs
(XLA compiles without holding Python's lock). The server program of a sweep is a grid
(`server.ServerGrid`): each attack and each rule of the sweep is one branch, chosen per batch by
index, so a grid of `A` attacks x `D` rules compiles `A + D` branches once instead of `A x D`
programs.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import ops, server, training
from strike_jax.training import round as round_lib


class ProgramKey(NamedTuple):
    """Everything static about one compiled program.

    Attributes:
      kind: "train", "server", "eval", "host_round" (the host-loop strategies' round) or "init"
        (a model's initialiser).
      structure: the runs' shared structure (`components.program_key`: model, data, clients,
        pre-aggregation, optimizer structure, training flags).
      shape: the round's `RoundShape` (None for evaluation).
      runs: R, runs in the batch.
      strategy: the training strategy.
      branches: a server program's grid `(attack structures, rule structures)`; else `()`.
      backend: the server's `ops.Backend` (None for others).
      layout: the server's layout with several devices (None on one device).
      mesh: the device ids of the mesh (None on one device).
      flags: `(with_skew, with_updates, milestones)` of the server (`milestones`: the width of the
        DSGD step-size schedule, `ServerHparams.milestones`); the shapes of the data tables otherwise.
    """

    kind: str
    structure: tuple
    shape: Any
    runs: int
    strategy: str
    branches: tuple = ()
    backend: ops.Backend | None = None
    layout: str | None = None
    mesh: tuple | None = None
    flags: tuple = ()


class ProgramCache:
    """Compiled programs of this process by `ProgramKey`; compiles off the main thread.

    `submit(key, build)` starts `build()` (which lowers and compiles, returning a callable) on the
    pool unless the key is known; `get(key)` waits for it. `compiled_keys()` lists what was built
    (for tests and benchmarks).
    """

    def __init__(self, workers: int = 3):
        self._futures: dict[Any, concurrent.futures.Future] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers = workers
        self._lock = threading.Lock()
        self.compile_seconds: dict[Any, float] = {}

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="strike-jax-compile")
        return self._pool

    def __contains__(self, key) -> bool:
        return key in self._futures

    def submit(self, key, build: Callable[[], Any], *, background: bool = True) -> None:
        with self._lock:
            if key in self._futures:
                return

            def timed():
                t0 = time.perf_counter()
                out = build()
                self.compile_seconds[key] = time.perf_counter() - t0
                return out

            if background:
                self._futures[key] = self._executor().submit(timed)
            else:
                fut: concurrent.futures.Future = concurrent.futures.Future()
                self._futures[key] = fut
                try:
                    fut.set_result(timed())
                except BaseException as e:  # noqa: BLE001 - re-raised by get
                    fut.set_exception(e)

    def get(self, key, build: Callable[[], Any] | None = None):
        """The program for `key` (built now, on this thread, if it was never submitted)."""
        if key not in self._futures:
            if build is None:
                raise KeyError(key)
            self.submit(key, build, background=False)
        return self._futures[key].result()

    def compiled_keys(self) -> list:
        return list(self._futures)

    def clear(self) -> None:
        with self._lock:
            self._futures.clear()
            self.compile_seconds.clear()


#: The process's program cache (`simulate_many(programs=...)` takes another).
PROGRAMS = ProgramCache()


def _vmapped_eval(evaluate, unravel):
    return lambda w, x, y: jax.vmap(lambda wi: evaluate(unravel(wi), x, y))(w)


def _vmapped_val(evaluate, unravel):
    return lambda w, x, y, index: jax.vmap(lambda wi, ii: evaluate(unravel(wi), x, y, ii))(w, index)


def _abstract(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype)
                                  if not isinstance(a, jax.ShapeDtypeStruct) else a, tree)


def _aot(jitted, *args):
    """Lowers `jitted` for `args` (arrays or shape structs) and compiles it (XLA, off the GIL)."""
    return jitted.lower(*args).compile()


class BatchPrograms(NamedTuple):
    """A batch's callables: `round_step(state, consts, x, y) -> (state', RoundOutput, timings)`
    (`timings = (train_s, server_s)` or None),
    `evaluate(w [R, d], x, y) -> (acc [R], loss [R])` (or per run on the host path),
    `validate(w [R, d], x_train, y_train, val_index [R, V]) -> (acc [R], loss [R])` (the host path:
    `evaluate(variables, x_train, y_train, val_index[i])` per run; None without validation sets)."""

    round_step: Callable
    evaluate: Callable
    device: bool
    validate: Callable | None = None


def train_consts(consts: round_lib.RunConsts) -> round_lib.RunConsts:
    """What the train program reads of the consts: not the server's numbers (whose milestones'
    width may differ between program groups that share a train program)."""
    return consts._replace(server=None)


def program_keys(batch) -> dict[str, ProgramKey]:
    """The keys of a batch's programs (the one place they are built)."""
    cfg = batch.cfg
    structure = batch.structure
    mesh = None if batch.mesh is None else tuple(d.id for d in batch.mesh.devices.flat)
    layout = batch.settings.server_layout if batch.mesh is not None else None
    R = len(batch.runs)
    tables = (tuple(batch.consts.index.shape[1:]), tuple(batch.x_train.shape), tuple(batch.x_test.shape))
    keys = {
        "server": ProgramKey("server", structure, None, R, "", batch.grid_branches, batch.backend, layout, mesh,
                             (cfg.skew_metrics, batch.with_updates, batch.milestones_width, batch.recycle)),
        "eval": ProgramKey("eval", structure, None, R, batch.strategy, (), None, None, mesh, tables),
    }
    if batch.val_index is not None:
        keys["val"] = ProgramKey("val", structure, None, R, batch.strategy, (), None, None, mesh,
                                 tables + (tuple(batch.val_index.shape),))
    if batch.device:
        keys["train"] = ProgramKey("train", structure, batch.shape, R, batch.strategy, (), None, None, mesh, tables)
    else:
        keys["host_round"] = ProgramKey("host_round", structure, batch.shape, R, batch.strategy, (), None, None, mesh,
                                        tables)
    return keys


def submit_programs(batch, cache: ProgramCache) -> dict[str, ProgramKey]:
    """Starts compiling a batch's programs (those not already in `cache`); returns their keys."""
    keys = program_keys(batch)
    # Tracing the training (for its output's shapes) costs ~0.1-1 s: only when a program is missing.
    if batch.device and batch.mesh is None and (keys["train"] not in cache or keys["server"] not in cache):
        train = round_lib.make_device_train(batch.model, batch.local_cfg, batch.shape, batch.unravel,
                                            flip_byzantine=batch.flip, mesh=batch.mesh,
                                            flipped_rows=batch.flipped_rows)
        train_args: tuple = (batch.state.w, batch.state.round, train_consts(batch.consts), batch.x_train,
                             batch.y_train)
        t_shape = jax.eval_shape(train, *train_args)
        if batch.writes_into:
            train_args += (t_shape.updates,)
        if keys["train"] not in cache:
            cache.submit(keys["train"], lambda: _aot(train, *train_args))
        if keys["server"] not in cache:
            srv = server.make_device_server(batch.grid, with_skew=batch.cfg.skew_metrics,
                                            with_updates=batch.with_updates, mesh=batch.mesh,
                                            layout=batch.settings.server_layout, recycle=batch.recycle)
            server_args: tuple = (_abstract(batch.state), batch.consts.seed, batch.consts.end_round,
                                  batch.consts.server, t_shape._replace(updates=None) if batch.recycle else t_shape,
                                  batch.pair)
            if batch.recycle:
                server_args += (t_shape.updates,)
            cache.submit(keys["server"], lambda: _aot(srv.jitted, *server_args))
    if batch.device and batch.mesh is None:
        if keys["eval"] not in cache:
            ev = jax.jit(_vmapped_eval(training.make_evaluate(batch.model), batch.unravel))
            eval_args = (batch.state.w, batch.x_test, batch.y_test)
            cache.submit(keys["eval"], lambda: _aot(ev, *eval_args))
        if "val" in keys and keys["val"] not in cache:
            va = jax.jit(_vmapped_val(training.make_evaluate(batch.model), batch.unravel))
            val_args = (batch.state.w, batch.x_train, batch.y_train, batch.val_index)
            cache.submit(keys["val"], lambda: _aot(va, *val_args))
    # Several devices: the programs compile on their first call (their inputs' shardings decide the
    # partitioning). The host-loop strategies dispatch many small programs: built on first use.
    return keys


def batch_programs(batch, cache: ProgramCache) -> BatchPrograms:
    """The batch's callables, waiting for programs still compiling."""
    keys = submit_programs(batch, cache)
    pair = batch.pair
    if batch.device and batch.mesh is not None:
        train = cache.get(keys["train"], lambda: round_lib.make_device_train(
            batch.model, batch.local_cfg, batch.shape, batch.unravel, flip_byzantine=batch.flip, mesh=batch.mesh))
        srv = cache.get(keys["server"], lambda: server.make_device_server(
            batch.grid, with_skew=batch.cfg.skew_metrics, with_updates=batch.with_updates, mesh=batch.mesh,
            layout=batch.settings.server_layout).jitted)
        ev = cache.get(keys["eval"], lambda: jax.jit(_vmapped_eval(training.make_evaluate(batch.model),
                                                                   batch.unravel)))
    elif batch.device:
        train, srv, ev = cache.get(keys["train"]), cache.get(keys["server"]), cache.get(keys["eval"])
    va = None
    if batch.device and "val" in keys:
        va = cache.get(keys["val"], lambda: jax.jit(_vmapped_val(training.make_evaluate(batch.model), batch.unravel)))
    if batch.device:
        # The update matrix's buffer, handed from the server back to the next round's training
        # (`batch.writes_into`, `batch.recycle`): donated each time, so no round allocates it anew.
        spare: dict[str, Any] = {"U": None}
        U_shape = (len(batch.runs), batch.shape.per_round, batch.state.w.shape[-1])

        def train_half(state, consts, x_train, y_train):
            args = (state.w, state.round, train_consts(consts), x_train, y_train)
            if not batch.writes_into:
                return train(*args)
            U, spare["U"] = spare["U"], None
            if U is None:  # the first round (or the matrices went to the loop): a new buffer
                U = jnp.zeros(U_shape, jnp.float32)
            return train(*args, U)

        def server_half(state, consts, t):
            if not batch.recycle:
                return srv(state, consts.seed, consts.end_round, consts.server, t, pair)
            new, out, spare["U"] = srv(state, consts.seed, consts.end_round, consts.server,
                                       t._replace(updates=None), pair, t.updates)
            return new, out

        def round_step(state, consts, x_train, y_train):
            return (*server_half(state, consts, train_half(state, consts, x_train, y_train)), None)

        def timed_round_step(state, consts, x_train, y_train):
            t0 = time.perf_counter()
            t = jax.block_until_ready(train_half(state, consts, x_train, y_train))
            t1 = time.perf_counter()
            new, out = jax.block_until_ready(server_half(state, consts, t))
            return new, out, (t1 - t0, time.perf_counter() - t1)

        return BatchPrograms(timed_round_step if batch.settings.time_halves else round_step, ev, True, va)

    def build_host():
        client_updates = training.make_client_updates(batch.model, batch.local_cfg, batch.strategy)
        return make_host_round(client_updates, batch.grid, batch.shape, batch.unravel, flip_byzantine=batch.flip,
                               with_skew=batch.cfg.skew_metrics, with_updates=batch.with_updates,
                               flipped=(training.make_flipped_gradients(batch.model, batch.local_cfg)
                                        if batch.flipped_rows else None))

    host_round = cache.get(keys["host_round"], build_host)
    evaluate = cache.get(keys["eval"], lambda: training.make_evaluate(batch.model))

    def host_step(state, consts, x_train, y_train):
        return host_round(state, consts, x_train, y_train, pair)

    return BatchPrograms(host_step, evaluate, False, evaluate if "val" in keys else None)


def make_host_round(client_updates: Callable, pipeline, shape: round_lib.RoundShape, unravel: Callable, *,
                    flip_byzantine: bool, with_skew: bool = False, with_updates: bool = False,
                    flipped: Callable | None = None) -> Callable:
    """The host-loop path: the same plan and server step as the device round, local training by
    `client_updates` (a `training.make_client_updates` strategy such as "steps") called per run;
    `flipped` (`training.make_flipped_gradients`): also each client's flipped-label gradient on its
    first batch (ByzFL's LabelFlipping).

    Returns:
      `round_step(state, consts, x_train, y_train, pair) -> (state', RoundOutput, timings)` with
      `timings = (train_s, server_s)` measured after the work finished.
    """
    from strike_jax.training import schedule

    def plan_one(consts_r, r):
        cb, byz = round_lib._plan(consts_r, r, shape)
        idx, mask = schedule.padded_schedule(cb, batch_size=shape.batch_size, num_steps=shape.padded_steps)
        return idx, mask, byz, cb.clients, cb.steps.max() > shape.padded_steps

    plans = jax.jit(jax.vmap(plan_one))
    srv = server.make_device_server(pipeline, with_skew=with_skew, with_updates=with_updates)
    unravel_jit = jax.jit(unravel)
    flipped_jit = None if flipped is None else jax.jit(flipped)

    def round_step(state, consts, x_train, y_train, pair):
        t0 = time.perf_counter()
        idx, mask, byz, clients, overflow = jax.device_get(plans(consts, state.round))
        active = np.asarray(state.active)
        rows, losses, flips = [], [], []
        for i in range(idx.shape[0]):
            if flipped_jit is not None:
                flips.append(flipped_jit(unravel_jit(state.w[i]), x_train, y_train, idx[i][:, 0], mask[i][:, 0]))
            if active[i]:
                hp_i = jax.tree_util.tree_map(lambda a, i=i: a[i], consts.local)
                U_i, st = client_updates(unravel_jit(state.w[i]), x_train, y_train, idx[i], mask[i],
                                         byz[i] & flip_byzantine, hp_i)
                loss = st.loss
            else:  # a finished run: no training (its state is kept by the server step)
                U_i = jnp.zeros((idx.shape[1], state.w.shape[1]), jnp.float32)
                loss = jnp.zeros((idx.shape[1],), jnp.float32)
            rows.append(U_i)
            losses.append(loss)
        U = jnp.stack(rows)
        U.block_until_ready()
        t1 = time.perf_counter()
        t = round_lib._split_root(U, jnp.asarray(byz), jnp.stack(losses), jnp.asarray(clients), shape,
                                  jnp.asarray(overflow), jnp.stack(flips) if flips else None)
        new, out = srv(state, consts, t, pair)
        jax.block_until_ready(out.metrics)
        return new, out, (t1 - t0, time.perf_counter() - t1)

    return round_step
