"""One round of federated training as pure functions over a batch of runs (SPEC §2).

A *group* is a batch of `R` runs that differ only in numbers (seed, Byzantine count, learning rate,
the attack's and defence's numeric hyper-parameters, the partition drawn from the seed and `beta`).
Their state is one `RunState` whose leaves have a leading run axis, and a round is

    state, out = round_step(state, consts)

one jitted device program on the packed path: for every run, sample the round's clients and draw
their batches from `(seed, round)` keys, train all sampled clients (`training.packed`, `L` lanes),
let the attack replace the Byzantine rows, pre-aggregate, aggregate, apply `w += g`, and compute the
round's metrics. Nothing in it depends on a Python value that changes between rounds or between the
runs of a group, so it compiles once. The host-loop strategies ("steps", "loop") run the same plan
and the same server step, with local training dispatched from the host (`make_host_round`).

Per-run numbers live in `RunConsts` (arrays with the run axis); the attack's and the rules' numeric
hyper-parameters live in the server pipeline's state (`stages.inject_hyperparams`), stacked over the
runs, so one program serves every `nu`, `tau`, `z`, ...
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import ops, stages
from strike_jax.training import schedule
from strike_jax.training.local import LocalConfig, LocalHparams
from strike_jax.training.packed import make_packed_train
from strike_jax.training.schedule import INIT_TAG, SAMPLING_TAG, SERVER_TAG, round_key  # noqa: F401

Array = jax.Array


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> np.ndarray:
    """Host copy of the round's sampled client ids (`schedule.sample_clients`), sorted `[n]` int32."""
    return np.asarray(_sample_jit(int(seed), int(round_index), num_clients, per_round))


_sample_jit = jax.jit(schedule.sample_clients, static_argnums=(2, 3))


def attack_key(key: Array) -> Array:
    """The attack's key within a round's server key (the defence gets `aggregator_key`)."""
    return jax.random.fold_in(key, 0)


def aggregator_key(key: Array) -> Array:
    return jax.random.fold_in(key, 1)


class RoundMetrics(NamedTuple):
    """Scalars the server computes every round (float32 unless noted; `[R]` for a group).

    Attributes:
      num_byzantine: f, Byzantine clients among the sampled ones (int32).
      aggregate_norm: ||g||.
      dist_to_honest_mean: ||g - mean of the honest updates|| (the honest updates as computed, before
        the attack).
      cos_to_honest_mean: cosine between g and the honest mean.
      skewness: Fisher skewness of the honest updates along their first principal component (SPEC §8);
        NaN when the diagnostic is off.
      median_mean_distance: ||lower median - mean|| of the honest updates (SPEC §8); NaN when off.
      finite: whether g is finite (False ends the run as diverged; bool).
      train_loss: mean local training loss of the honest clients (of all clients if none is honest).
    """

    num_byzantine: Array
    aggregate_norm: Array
    dist_to_honest_mean: Array
    cos_to_honest_mean: Array
    skewness: Array
    median_mean_distance: Array
    finite: Array
    train_loss: Array


def server_step(w, updates, byzantine_mask, stage_state, key, pipeline, *, with_skew: bool = False,
                train_loss=None, clients=None, root_update=None):
    """The server side of one round of one run (SPEC §2 steps 3-4), pure.

    Args:
      w: `[d]` global model (flat).
      updates: `[n, d]` honestly computed updates of the sampled clients.
      byzantine_mask: `[n]` bool.
      stage_state: the pipeline's state.
      key: the round's server key (`round_key`).
      pipeline: the server pipeline, `stages.chain(attack, nnm, bucketing, rule)` as
        `stages.server_pipeline` builds it (its first part is the attack, "none" included).
      with_skew: compute the gradient-skew diagnostic (about one pass over `U`).
      train_loss: `[n]` local losses (for the metric), or None.
      clients: `[n]` int32 sampled client ids (`RoundContext.clients`: FoolsGold's history).
      root_update: `[d]` the server's own update on its root set (`RoundContext.root_update`: FLTrust).

    Returns:
      `(w', stage_state', RoundMetrics, sent)`; `sent` is the matrix the aggregation received.
      The same numbers as `pipeline.update` (the attack gets `fold_in(key, 0)`, the aggregation
      `fold_in(key, 1)`), run in two parts so that `sent` can be returned. A non-finite aggregate
      leaves `w` unchanged and sets `metrics.finite = False`.
    """
    from strike_jax.analysis import skew as skew_lib

    honest = ~byzantine_mask
    honest_mean = ops.masked_mean(updates, honest)
    if with_skew:
        diag = skew_lib.gradient_skew(updates, honest)
        skewness, med_dist = diag.skewness, diag.median_mean_distance
    else:
        skewness = med_dist = jnp.float32(jnp.nan)
    attack, *rest = pipeline.parts
    aggregation = stages.chain(*rest)
    f = byzantine_mask.sum()
    agg_state = tuple(stage_state[1:]) if len(rest) > 1 else stage_state[1]
    ctx = stages.RoundContext(byzantine_mask, f, attack_key(key), clients=clients, root_update=root_update,
                              downstream=aggregation, downstream_state=agg_state)
    sent, attack_state, ctx = attack.update(updates, stage_state[0], ctx)
    g, agg_state, _ = aggregation.update(sent, agg_state, ctx._replace(key=aggregator_key(key), downstream=None,
                                                                       downstream_state=None))
    stage_state = (attack_state, *(agg_state if len(rest) > 1 else (agg_state,)))
    finite = jnp.all(jnp.isfinite(g))
    w_new = jnp.where(finite, w + g, w)
    g_safe = jnp.where(finite, g, 0.0)
    gn = jnp.linalg.norm(g_safe)
    hn = jnp.linalg.norm(honest_mean)
    if train_loss is None:
        tl = jnp.float32(jnp.nan)
    else:
        weights = jnp.where(honest.any(), honest, True).astype(jnp.float32)
        tl = (weights * train_loss).sum() / jnp.maximum(weights.sum(), 1.0)
    metrics = RoundMetrics(
        num_byzantine=f.astype(jnp.int32),
        aggregate_norm=jnp.where(finite, gn, jnp.inf),
        dist_to_honest_mean=jnp.where(finite, jnp.linalg.norm(g_safe - honest_mean), jnp.inf),
        cos_to_honest_mean=jnp.where(
            finite & (gn > 0) & (hn > 0), jnp.vdot(g_safe, honest_mean) / jnp.maximum(gn * hn, 1e-30), 0.0),
        skewness=jnp.asarray(skewness, jnp.float32),
        median_mean_distance=jnp.asarray(med_dist, jnp.float32),
        finite=finite,
        train_loss=jnp.asarray(tl, jnp.float32),
    )
    return w_new, stage_state, metrics, sent


def metrics_to_dict(m) -> dict[str, Any]:
    """Host-side conversion of one run's RoundMetrics to plain Python numbers (JSON friendly)."""
    out = {}
    for k, v in m._asdict().items():
        v = np.asarray(v)
        if v.dtype == bool:
            out[k] = bool(v)
        elif np.issubdtype(v.dtype, np.integer):
            out[k] = int(v)
        else:  # a diagnostic that was not computed is NaN on the device, null in the record
            out[k] = None if np.isnan(v) else float(v)
    return out


# ---------------------------------------------------------------------------------------------
# The round of a group.


class RunState(NamedTuple):
    """What changes over a group's rounds; every leaf has a leading run axis `R`.

    Attributes:
      w: `[R, d]` global models (flat; parameters then BatchNorm statistics, SPEC §1).
      stage_state: the server pipeline's state (one entry per stage; the injected numeric
        hyper-parameters of each run among them).
      round: `[R]` int32, the next round of each run.
      active: `[R]` bool, False once a run finished or diverged (its state is then left unchanged).
    """

    w: Array
    stage_state: Any
    round: Array
    active: Array


class RunConsts(NamedTuple):
    """What stays fixed over a group's rounds; every leaf has a leading run axis `R`.

    Attributes:
      seed: `[R]` int32 run seeds.
      num_byzantine: `[R]` int32, the Byzantine client ids are `0 .. num_byzantine - 1` (SPEC §2).
      index: `[R, N, max_m]` int32 client index tables (`data.ClientData.index`, padded).
      counts: `[R, N]` int32 client sample counts.
      local: `LocalHparams` of `[R]` float32.
      end_round: `[R]` int32, the run's total rounds.
    """

    seed: Array
    num_byzantine: Array
    index: Array
    counts: Array
    local: LocalHparams
    end_round: Array


class RoundShape(NamedTuple):
    """The static shape of a group's round.

    Attributes:
      per_round: n, clients sampled per round.
      batch_size: B.
      local_epochs: E.
      lanes: L, lanes of the packed local training (device path).
      lane_steps: T, the plan's capacity in steps per lane (>= the packing's makespan in every
        round; a round runs its own makespan).
      padded_steps: S, steps of the per-client padded schedule (host path, >= every client's steps).
      max_samples: the training set's size (fixes the permutations' key layout; see
        `schedule.client_batches`).
      root: the client table's last row is the server's root set (FLTrust): it is trained every
        round after the `per_round` sampled clients, and its update is the round's root update.
      batch_slots: slots of a step's batch on the device path (`schedule.batch_slots`: `B`, or
        fewer when no client holds `B` samples); None: `B`.
      devices: D, devices the round's clients are spread over (`make_device_train` with a mesh);
        `lanes` and `lane_steps` are then per device.
    """

    per_round: int
    batch_size: int
    local_epochs: int
    lanes: int
    lane_steps: int
    padded_steps: int
    max_samples: int | None = None
    root: bool = False
    batch_slots: int | None = None
    devices: int = 1

    @property
    def trained(self) -> int:
        """Rows trained per round: the sampled clients, plus the root set."""
        return self.per_round + int(self.root)

    @property
    def block(self) -> int:
        """Rows each device trains (the trained rows padded to a multiple of `devices`)."""
        return -(-self.trained // self.devices)


class RoundOutput(NamedTuple):
    """What a round returns besides the new state: `[R]` metrics, whether each run ran this round,
    whether a run's clients overflowed the planned lanes (an internal error), and on request the
    round's honestly computed updates `[R, n, d]`, Byzantine masks `[R, n]` and the matrices the
    aggregation received `[R, n, d]` (for figures; None otherwise)."""

    metrics: RoundMetrics
    ran: Array
    overflow: Array | None = None
    updates: Array | None = None
    byzantine_mask: Array | None = None
    sent: Array | None = None


class TrainOutput(NamedTuple):
    """What the training half of a round hands the server half (leading run axis `R`).

    Attributes:
      updates: `[R, n, d]` the sampled clients' honestly computed updates.
      byzantine_mask: `[R, n]` bool.
      train_loss: `[R, n]` local losses.
      clients: `[R, n]` int32 sampled client ids.
      root_update: `[R, d]` the server's own update on its root set (FLTrust), or None.
      overflow: `[R]` bool, a run's clients did not fit the planned lanes (an internal error).
    """

    updates: Array
    byzantine_mask: Array
    train_loss: Array
    clients: Array
    root_update: Array | None
    overflow: Array


def _plan(consts_r: RunConsts, r, shape: RoundShape):
    cb = schedule.client_batches(consts_r.index, consts_r.counts, consts_r.seed, r, per_round=shape.per_round,
                                 batch_size=shape.batch_size, local_epochs=shape.local_epochs,
                                 max_samples=shape.max_samples, include_last=shape.root)
    return cb, cb.clients < consts_r.num_byzantine


def _split_root(U, byz, loss, clients, shape: RoundShape, overflow):
    """With a root set (the table's last client, always trained last), its row is the root update."""
    n = shape.per_round
    if not shape.root:
        return TrainOutput(U, byz, loss, clients, None, overflow)
    return TrainOutput(U[:, :n], byz[:, :n], loss[:, :n], clients[:, :n], U[:, n], overflow)


def _server(pipeline, with_skew: bool, with_updates: bool) -> Callable:
    """The server side of a round for one run of a group, pure (vmap it over runs)."""

    def server_one(state_r: RunState, seed, end_round, t: TrainOutput):
        w, stage_state, metrics, sent = server_step(
            state_r.w, t.updates, t.byzantine_mask, state_r.stage_state, round_key(seed, state_r.round), pipeline,
            with_skew=with_skew, train_loss=t.train_loss, clients=t.clients, root_update=t.root_update)
        act = state_r.active
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(act, a, b), new, old)  # noqa: E731
        nxt = state_r.round + act.astype(jnp.int32)
        new = RunState(w=keep(w, state_r.w), stage_state=keep(stage_state, state_r.stage_state), round=nxt,
                       active=act & metrics.finite & (nxt < end_round))
        return new, (metrics, *((t.updates, t.byzantine_mask, sent) if with_updates else (None, None, None)))

    return server_one


def make_device_train(model, local_cfg: LocalConfig, shape: RoundShape, unravel: Callable, *,
                      flip_byzantine: bool, mesh=None) -> Callable:
    """The local-training half of a packed round for a whole group: plan (sampling, batches, lanes,
    drawn on the device) and packed training. It depends on the model, the data's shapes and the
    round's shape only, not on the attack or the defence, so every group of a sweep that shares them
    reuses one compiled program (a Table 1 sweep has 49 attack x defence groups).

    With a `mesh` (`make_mesh`; `shape.devices` devices on its "clients" axis) the clients are
    trained data-parallel: under `shard_map`, device `k` trains rows `k * b .. (k + 1) * b - 1` of
    the round's trained rows (`b = shape.block`, the last block padded with empty rows), packed
    into its own `shape.lanes` lanes, for its own makespan; the update matrix comes out sharded by
    rows. Every client's batches are those of the single-device round (`schedule.client_orders`),
    so the rows equal the single-device ones up to float rounding.

    Returns:
      `train_round(w [R, d], round [R], consts, x_train, y_train) -> TrainOutput`, jitted.
    """
    if mesh is not None:
        return _make_sharded_train(model, local_cfg, shape, unravel, flip_byzantine=flip_byzantine, mesh=mesh)
    train = make_packed_train(model, local_cfg)

    def plan_one(consts_r: RunConsts, r):
        cb, byz = _plan(consts_r, r, shape)
        plan, makespan = schedule.pack_lanes(cb.steps, shape.lanes, shape.lane_steps)
        idx, mask = schedule.lane_batches(cb, plan, batch_size=shape.batch_size, slots=shape.batch_slots)
        return plan, makespan, idx, mask, byz, cb.clients

    def train_round(w, rounds, consts: RunConsts, x_train, y_train):
        plan, makespan, idx, mask, byz, clients = jax.vmap(plan_one)(consts, rounds)
        # One loop for the whole batch, as long as its longest makespan (training.packed).
        steps = jnp.minimum(makespan.max(), shape.lane_steps)
        U, stats = train(jax.vmap(unravel)(w), x_train, y_train, plan, idx, mask, byz & flip_byzantine,
                         consts.local, steps)
        return _split_root(U, byz, stats.loss, clients, shape, makespan > shape.lane_steps)

    return jax.jit(train_round)


#: The mesh axis the clients (rows of the update matrix) are spread over.
CLIENTS_AXIS = "clients"
#: How the server half lays out the `[R, n, d]` matrix on a mesh (`make_device_server`).
SERVER_LAYOUTS = ("rows", "columns", "replicated")


def make_mesh(num_devices: int, devices=None):
    """A 1-d `jax.sharding.Mesh` over the first `num_devices` of `devices` (default `jax.devices()`,
    every process's devices under `jax.distributed`), axis `CLIENTS_AXIS`.

    Raises:
      ValueError: fewer devices than asked (one line naming how to get more).
    """
    from jax.sharding import Mesh

    devices = jax.devices() if devices is None else list(devices)
    if not (isinstance(num_devices, int) and 1 <= num_devices <= len(devices)):
        raise ValueError(
            f"num_devices={num_devices!r} is not allowed; allowed: 1 .. {len(devices)} (the devices jax sees: "
            f"{len(devices)} {devices[0].platform}; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before jax is imported; across hosts call jax.distributed.initialize first).")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(f"num_devices={num_devices} is not allowed under jax.distributed with "
                         f"{jax.process_count()} processes; allowed: all {len(devices)} devices (every process "
                         "must hold part of the mesh).")
    return Mesh(np.asarray(devices[:num_devices]), (CLIENTS_AXIS,))


def replicated(mesh):
    """The `NamedSharding` of an array held whole by every device of `mesh`."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def _make_sharded_train(model, local_cfg: LocalConfig, shape: RoundShape, unravel: Callable, *,
                        flip_byzantine: bool, mesh) -> Callable:
    from jax.sharding import NamedSharding, PartitionSpec as P

    train = make_packed_train(model, local_cfg)
    D, b, rows = shape.devices, shape.block, shape.trained
    if mesh.shape[CLIENTS_AXIS] != D:
        raise ValueError(f"the mesh has {mesh.shape[CLIENTS_AXIS]} devices on {CLIENTS_AXIS!r}, the round's shape "
                         f"{D}.")

    def plan_one(consts_r: RunConsts, r, dev):
        clients = schedule.round_clients(consts_r.index.shape[0], consts_r.seed, r, per_round=shape.per_round,
                                         include_last=shape.root)
        clients = jnp.pad(clients, (0, b * D - rows))
        mine = jax.lax.dynamic_slice_in_dim(clients, dev * b, b)
        valid = dev * b + jnp.arange(b) < rows
        cb = schedule.client_orders(consts_r.index, consts_r.counts, mine, consts_r.seed, r,
                                    batch_size=shape.batch_size, local_epochs=shape.local_epochs,
                                    max_samples=shape.max_samples, valid=valid)
        plan, makespan = schedule.pack_lanes(cb.steps, shape.lanes, shape.lane_steps)
        idx, mask = schedule.lane_batches(cb, plan, batch_size=shape.batch_size, slots=shape.batch_slots)
        byz = (mine < consts_r.num_byzantine) & valid
        if shape.root:  # the root set is trained but never Byzantine
            byz = byz & (dev * b + jnp.arange(b) < shape.per_round)
        return plan, makespan, idx, mask, byz, mine

    def local(w, rounds, consts: RunConsts, x_train, y_train):
        dev = jax.lax.axis_index(CLIENTS_AXIS)
        plan, makespan, idx, mask, byz, clients = jax.vmap(plan_one, in_axes=(0, 0, None))(consts, rounds, dev)
        # This device's own loop: as long as the longest makespan of its lanes (over the runs).
        steps = jnp.minimum(makespan.max(), shape.lane_steps)
        U, stats = train(jax.vmap(unravel)(w), x_train, y_train, plan, idx, mask, byz & flip_byzantine,
                         consts.local, steps)
        overflow = jax.lax.pmax((makespan > shape.lane_steps).astype(jnp.int32), CLIENTS_AXIS) > 0
        return U, byz, stats.loss, clients, overflow

    rows_spec = P(None, CLIENTS_AXIS)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(), P()),
                            out_specs=(rows_spec, rows_spec, rows_spec, rows_spec, P()), check_vma=False)

    def train_round(w, rounds, consts: RunConsts, x_train, y_train):
        U, byz, loss, clients, overflow = sharded(w, rounds, consts, x_train, y_train)
        if b * D != rows:  # drop the padding rows of the last block
            U, byz, loss, clients = U[:, :rows], byz[:, :rows], loss[:, :rows], clients[:, :rows]
        return _split_root(U, byz, loss, clients, shape, overflow)

    # Sharded by rows when the sampled clients split evenly; else (a few rows) XLA's choice.
    rows_sharding = NamedSharding(mesh, P(None, CLIENTS_AXIS)) if shape.per_round % D == 0 else None
    out = TrainOutput(rows_sharding, rows_sharding, rows_sharding, rows_sharding,
                      NamedSharding(mesh, P()) if shape.root else None, NamedSharding(mesh, P()))
    return jax.jit(train_round, out_shardings=out)


def make_device_server(pipeline, *, with_skew: bool = False, with_updates: bool = False, mesh=None,
                       layout: str = "rows") -> Callable:
    """The server half of a round for a whole group (attack, pre-aggregation, rule, `w += g`, metrics).

    Args:
      pipeline: the server pipeline (`stages.server_pipeline(..., inject=True)` of one run: the runs
        of a group share its `update`; their numbers are in the stacked state).
      with_skew: compute the gradient-skew diagnostic.
      with_updates: also return the round's matrices (`RoundOutput`).
      mesh: a `make_mesh` mesh: the matrix comes sharded by rows (`make_device_train` with the
        mesh) and the program is partitioned by XLA (GSPMD) in the `layout` it is given.
      layout: "rows" (the training's sharding: reductions over the clients become partial sums
        reduced across devices, a Gram matrix is computed from row blocks), "columns" (an
        all-to-all first: coordinate-wise work is local, sums over coordinates are reduced across
        devices) or "replicated" (gathered: every device runs the whole server step). The new
        state and the metrics come out replicated.

    Returns:
      `server_round(state, consts, train_output) -> (state', RoundOutput)`, `state` donated. Of
      `consts` only the seeds and the end rounds reach the compiled program (its other fields'
      shapes depend on the partitions).
    """
    if layout not in SERVER_LAYOUTS:
        raise ValueError(f"layout={layout!r} is not allowed; allowed: {', '.join(map(repr, SERVER_LAYOUTS))}.")
    server_one = _server(pipeline, with_skew, with_updates)
    constrain = lambda t: t  # noqa: E731
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec as P

        D = mesh.shape[CLIENTS_AXIS]
        spec = {"rows": P(None, CLIENTS_AXIS), "columns": P(None, None, CLIENTS_AXIS), "replicated": P()}[layout]
        axis = {"rows": 1, "columns": 2, "replicated": None}[layout]

        def constrain(t):
            if axis is not None and t.updates.shape[axis] % D:  # uneven: left to XLA
                return t
            return t._replace(updates=jax.lax.with_sharding_constraint(t.updates, NamedSharding(mesh, spec)))

    def server_all(state: RunState, seed, end_round, t: TrainOutput):
        new, (metrics, *extra) = jax.vmap(server_one)(state, seed, end_round, constrain(t)._replace(overflow=None))
        return new, RoundOutput(metrics, state.active, t.overflow, *extra)

    if mesh is None:
        compiled = jax.jit(server_all, donate_argnums=(0,))
    else:
        rep = replicated(mesh)
        compiled = jax.jit(server_all, donate_argnums=(0,), out_shardings=(rep, RoundOutput(
            rep, rep, rep, None, None, None)))

    def server_round(state: RunState, consts: RunConsts, t: TrainOutput):
        return compiled(state, consts.seed, consts.end_round, t)

    return server_round


def make_device_round(train_round: Callable, server_round: Callable) -> Callable:
    """The packed round: `round_step(state, consts, x_train, y_train) -> (state', RoundOutput)`.

    The two halves (`make_device_train`, `make_device_server`) are dispatched back to back without
    any host synchronisation: the update matrix stays on the device and the host reads nothing but
    the round's metrics. They are compiled separately so that groups of a sweep that differ in the
    attack or the defence share the training program (measured: the README's demo, 24 such groups,
    compiled the fused round 24 times and took 2.4x the CPU time of compiling training once).
    """

    def round_step(state: RunState, consts: RunConsts, x_train, y_train):
        return server_round(state, consts, train_round(state.w, state.round, consts, x_train, y_train))

    return round_step


def make_host_round(client_updates: Callable, pipeline, shape: RoundShape, unravel: Callable, *,
                    flip_byzantine: bool, with_skew: bool = False, with_updates: bool = False) -> Callable:
    """The host-loop path: the same plan and server step as `make_device_round`, local training by
    `client_updates` (a `training.make_client_updates` strategy such as "steps") called per run.

    Returns:
      `round_step(state, consts, x_train, y_train) -> (state', RoundOutput, timings)` with
      `timings = (train_s, server_s)` measured after the work finished.
    """
    import time

    def plan_one(consts_r, r):
        cb, byz = _plan(consts_r, r, shape)
        idx, mask = schedule.padded_schedule(cb, batch_size=shape.batch_size, num_steps=shape.padded_steps)
        return idx, mask, byz, cb.clients, cb.steps.max() > shape.padded_steps

    plans = jax.jit(jax.vmap(plan_one))
    server = make_device_server(pipeline, with_skew=with_skew, with_updates=with_updates)
    unravel_jit = jax.jit(unravel)

    def round_step(state: RunState, consts: RunConsts, x_train, y_train):
        t0 = time.perf_counter()
        idx, mask, byz, clients, overflow = jax.device_get(plans(consts, state.round))
        active = np.asarray(state.active)
        rows, losses = [], []
        for i in range(idx.shape[0]):
            if active[i]:
                hp_i = jax.tree_util.tree_map(lambda a: a[i], consts.local)
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
        t = _split_root(U, jnp.asarray(byz), jnp.stack(losses), jnp.asarray(clients), shape, jnp.asarray(overflow))
        new, out = server(state, consts, t)
        jax.block_until_ready(out.metrics)
        return new, out, (t1 - t0, time.perf_counter() - t1)

    return round_step
