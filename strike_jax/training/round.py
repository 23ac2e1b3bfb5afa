"""The training half of a round, and the types a round passes around, over a batch of runs (SPEC §2).

A *batch* is `R` runs that differ only in numbers (seed, Byzantine count, learning rate, the
attack's and defence's numeric hyper-parameters, the partition drawn from the seed and `beta`).
Their state is one `RunState` whose leaves have a leading run axis. A round is two jitted device
programs dispatched back to back (`simulation.programs`):

    t = train_round(state.w, state.round, consts, x_train, y_train)     # this module
    state, out = server_round(state, consts, t)                         # strike_jax.server

`train_round` samples each run's clients and draws their batches from `(seed, round)` keys on the
device, and trains all sampled clients (`training.packed`, `L` lanes). It depends on the model,
the data's shapes and the round's shape only, never on the attack or the defence, so every batch of
a sweep that shares them reuses one compiled program. Nothing in it depends on a Python value that
changes between rounds or between the runs of a batch, so it compiles once.

Per-run numbers live in `RunConsts` (arrays with the run axis); the attack's and the rules' numeric
hyper-parameters live in the server pipeline's state (`stages.inject_hyperparams`), stacked over the
runs, so one program serves every `nu`, `tau`, `z`, ...
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import ops, sharding
from strike_jax.training import schedule
from strike_jax.training.local import LocalConfig, LocalHparams, make_flipped_gradients
from strike_jax.training.packed import make_client_train, make_packed_train

# Arrays with the run axis: device arrays in a round, NumPy arrays while a batch is assembled.
Array = Any


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> np.ndarray:
    """Host copy of the round's sampled client ids (`schedule.sample_clients`), sorted `[n]` int32."""
    return np.asarray(_sample_jit(int(seed), int(round_index), num_clients, per_round))


_sample_jit = jax.jit(schedule.sample_clients, static_argnums=(2, 3))


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
      momentum: `[R, N, d]` every client's worker momentum (DSGD: `m_i <- b m_i + (1 - b) g_i`,
        kept across rounds, zero at the start); None for FedAvg (no leaf: its programs and memory
        are those without it).
    """

    w: Array
    stage_state: Any
    round: Array
    active: Array
    momentum: Array | None = None


class ServerHparams(NamedTuple):
    """The server's per-run numbers (`[R]` arrays in a batch; scalars for one run).

    Attributes:
      tolerated_f: int32, the Byzantine count the pre-aggregators and rule are told; -1: the real
        one (`Config.tolerated_f`).
      momentum: float32, DSGD's worker momentum `b`.
      lr: float32, DSGD's server step size before decay.
      weight_decay: float32, DSGD's server weight decay.
      lr_decay: float32, the factor applied at each milestone.
      milestones: `[K]` int32 rounds where the step size decays (padded with a round never
        reached; `K` the most milestones of any run of the program group).
    """

    tolerated_f: Array
    momentum: Array
    lr: Array
    weight_decay: Array
    lr_decay: Array
    milestones: Array

    def server_lr(self, round_index) -> Array:
        """The step size of round `round_index`: `lr * lr_decay ** #(milestones <= round)`
        (PyTorch's `MultiStepLR` stepped once a round)."""
        k = (self.milestones <= round_index).sum()
        return self.lr * self.lr_decay ** k.astype(jnp.float32)


class RunConsts(NamedTuple):
    """What stays fixed over a group's rounds; every leaf has a leading run axis `R`.

    Attributes:
      seed: `[R]` int32 run seeds.
      num_byzantine: `[R]` int32, the Byzantine client ids are `0 .. num_byzantine - 1` (SPEC §2).
      index: `[R, N, max_m]` int32 client index tables (`data.ClientData.index`, padded).
      counts: `[R, N]` int32 client sample counts.
      local: `LocalHparams` of `[R]` float32.
      end_round: `[R]` int32, the run's total rounds.
      server: `ServerHparams` of `[R]` (`[R, K]` milestones).
    """

    seed: Array
    num_byzantine: Array
    index: Array
    counts: Array
    local: LocalHparams
    end_round: Array
    server: ServerHparams | None = None


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
      local_steps: every client holding data takes this many steps instead of `local_epochs`
        epochs (`schedule.client_orders`); None: epochs.
      augment: the plan draws a random horizontal flip of every training image
        (`schedule.client_orders`, `Config.augmentation`).
      per_client: the "vmap" layout (one device): the clients in chunks of `lanes`, one lane each,
        padded to `lane_steps` (`training.packed.make_client_train`) instead of packed lanes.
      batch_order: "round" or "epochs" (`schedule.client_orders`, `Config.batch_order`).
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
    local_steps: int | None = None
    augment: bool = False
    per_client: bool = False
    batch_order: str = "round"

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

    metrics: Any  # strike_jax.server.RoundMetrics
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
      flipped: `[R, n, d]` each client's gradient at the global model on its round's first batch
        with flipped labels, in eval mode (ByzFL's LabelFlipping: `make_flipped_gradients`), or
        None when the attack does not need them.
      honest_mean: `[R, d]` the mean of the honest rows of `updates` (for the round's metrics),
        computed where the matrix is made: the server then reads the unattacked matrix only
        through the attack, whose row writes can go into the donated matrix in place (XLA copies
        the whole matrix when an unordered read of it remains); None: the server computes it.
    """

    updates: Array
    byzantine_mask: Array
    train_loss: Array
    clients: Array
    root_update: Array | None
    overflow: Array
    flipped: Array | None = None
    honest_mean: Array | None = None


def _plan(consts_r: RunConsts, r, shape: RoundShape):
    cb = schedule.client_batches(consts_r.index, consts_r.counts, consts_r.seed, r, per_round=shape.per_round,
                                 batch_size=shape.batch_size, local_epochs=shape.local_epochs,
                                 max_samples=shape.max_samples, include_last=shape.root,
                                 local_steps=shape.local_steps, augment=shape.augment,
                                 batch_order=shape.batch_order)
    return cb, cb.clients < consts_r.num_byzantine


def _split_root(U, byz, loss, clients, shape: RoundShape, overflow, flipped=None):
    """With a root set (the table's last client, always trained last), its row is the root update."""
    n = shape.per_round
    if not shape.root:
        return TrainOutput(U, byz, loss, clients, None, overflow, flipped, jax.vmap(_honest_mean)(U, byz))
    return TrainOutput(U[:, :n], byz[:, :n], loss[:, :n], clients[:, :n], U[:, n], overflow,
                       None if flipped is None else flipped[:, :n], jax.vmap(_honest_mean)(U[:, :n], byz[:, :n]))


def _honest_mean(U, byz):
    return ops.masked_mean(U, ~byz)


def make_device_train(model, local_cfg: LocalConfig, shape: RoundShape, unravel: Callable, *,
                      flip_byzantine: bool, mesh=None, flipped_rows: bool = False) -> Callable:
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

    With `flipped_rows` (ByzFL's LabelFlipping, DSGD), the output also holds every trained client's
    flipped-label gradient on its first batch (`TrainOutput.flipped`, `make_flipped_gradients`).

    Returns:
      `train_round(w [R, d], round [R], consts, x_train, y_train) -> TrainOutput`, jitted; where
      `writes_into(shape, mesh)`, `train_round(..., out)` writes the `[R, n, d]` matrix into the
      donated `out` (None: a fresh one).
    """
    if mesh is not None:
        if flipped_rows:
            raise ValueError("flipped_rows (ByzFL's LabelFlipping) runs on one device; got a mesh.")
        return _make_sharded_train(model, local_cfg, shape, unravel, flip_byzantine=flip_byzantine, mesh=mesh)
    flipped_fn = make_flipped_gradients(model, local_cfg) if flipped_rows else None
    if shape.per_client:
        return _make_client_train(model, local_cfg, shape, unravel, flip_byzantine=flip_byzantine,
                                  flipped_fn=flipped_fn)
    train = make_packed_train(model, local_cfg)

    def plan_one(consts_r: RunConsts, r):
        cb, byz = _plan(consts_r, r, shape)
        plan, makespan, idx, mask = schedule.lane_schedule(cb, lanes=shape.lanes, lane_steps=shape.lane_steps,
                                                           batch_size=shape.batch_size, slots=shape.batch_slots)
        first = schedule.padded_schedule(cb, batch_size=shape.batch_size, num_steps=1) if flipped_rows else None
        return plan, makespan, idx, mask, byz, cb.clients, first

    def train_round(w, rounds, consts: RunConsts, x_train, y_train):
        plan, makespan, idx, mask, byz, clients, first = jax.vmap(plan_one)(consts, rounds)
        # One loop for the whole batch, as long as its longest makespan (training.packed).
        steps = jnp.minimum(makespan.max(), shape.lane_steps)
        variables = jax.vmap(unravel)(w)
        U, stats = train(variables, x_train, y_train, plan, idx, mask, byz & flip_byzantine, consts.local, steps)
        flipped = None
        if flipped_fn is not None:
            flipped = jax.vmap(flipped_fn, in_axes=(0, None, None, 0, 0))(
                variables, x_train, y_train, first[0][:, :, 0], first[1][:, :, 0])
        return _split_root(U, byz, stats.loss, clients, shape, makespan > shape.lane_steps, flipped)

    return jax.jit(train_round)


def _make_client_train(model, local_cfg: LocalConfig, shape: RoundShape, unravel: Callable, *,
                       flip_byzantine: bool, flipped_fn: Callable | None = None) -> Callable:
    """`make_device_train` for the "vmap" layout (`shape.per_client`): the per-client schedule
    padded to `shape.lane_steps`, trained in chunks of `shape.lanes` clients; `flipped_fn`
    (`make_flipped_gradients`) adds the flipped-label rows on each client's first batch."""
    train = make_client_train(model, local_cfg)

    def plan_one(consts_r: RunConsts, r):
        cb, byz = _plan(consts_r, r, shape)
        idx, mask = schedule.padded_schedule(cb, batch_size=shape.batch_size, num_steps=shape.lane_steps,
                                             slots=shape.batch_slots)
        return idx, mask, cb.steps.max(), byz, cb.clients

    def train_round(w, rounds, consts: RunConsts, x_train, y_train, out=None):
        idx, mask, longest, byz, clients = jax.vmap(plan_one)(consts, rounds)
        variables = jax.vmap(unravel)(w)
        U, stats = train(variables, x_train, y_train, idx, mask, byz & flip_byzantine, consts.local,
                         shape.lanes, jnp.minimum(longest.max(), shape.lane_steps), out)
        flipped = None
        if flipped_fn is not None:
            flipped = jax.vmap(flipped_fn, in_axes=(0, None, None, 0, 0))(
                variables, x_train, y_train, idx[:, :, 0], mask[:, :, 0])
        return _split_root(U, byz, stats.loss, clients, shape, longest > shape.lane_steps, flipped)

    # Every row is written: the matrix can go into a recycled buffer (`writes_into`).
    return jax.jit(train_round, donate_argnums=(5,) if writes_into(shape) else ())


def writes_into(shape: RoundShape, mesh=None) -> bool:
    """Whether `make_device_train(...)` for this shape takes a sixth argument `out`, a donated
    `[R, n, d]` float32 buffer its update matrix is written into (the "vmap" layout on one device
    without a root set, where every row is overwritten). A large round then allocates no fresh
    matrix: on XLA:CPU a fresh 4 GB output costs ~1 s of first-touch page faults per GB, more than
    the training of a one-step MLP round (issue 24, `experiments/bench_scale.py`)."""
    return shape.per_client and not shape.root and mesh is None


def _make_sharded_train(model, local_cfg: LocalConfig, shape: RoundShape, unravel: Callable, *,
                        flip_byzantine: bool, mesh) -> Callable:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    train = make_packed_train(model, local_cfg)
    D, b, rows = shape.devices, shape.block, shape.trained
    if mesh.shape[sharding.CLIENTS_AXIS] != D:
        raise ValueError(f"the mesh has {mesh.shape[sharding.CLIENTS_AXIS]} devices on {sharding.CLIENTS_AXIS!r}, "
                         f"the round's shape {D}.")

    def plan_one(consts_r: RunConsts, r, dev):
        clients = schedule.round_clients(consts_r.index.shape[0], consts_r.seed, r, per_round=shape.per_round,
                                         include_last=shape.root)
        clients = jnp.pad(clients, (0, b * D - rows))
        mine = jax.lax.dynamic_slice_in_dim(clients, dev * b, b)
        valid = dev * b + jnp.arange(b) < rows
        cb = schedule.client_orders(consts_r.index, consts_r.counts, mine, consts_r.seed, r,
                                    batch_size=shape.batch_size, local_epochs=shape.local_epochs,
                                    max_samples=shape.max_samples, valid=valid, local_steps=shape.local_steps,
                                    augment=shape.augment, batch_order=shape.batch_order)
        plan, makespan, idx, mask = schedule.lane_schedule(cb, lanes=shape.lanes, lane_steps=shape.lane_steps,
                                                           batch_size=shape.batch_size, slots=shape.batch_slots)
        byz = (mine < consts_r.num_byzantine) & valid
        if shape.root:  # the root set is trained but never Byzantine
            byz = byz & (dev * b + jnp.arange(b) < shape.per_round)
        return plan, makespan, idx, mask, byz, mine

    def local(w, rounds, consts: RunConsts, x_train, y_train):
        dev = jax.lax.axis_index(sharding.CLIENTS_AXIS)
        plan, makespan, idx, mask, byz, clients = jax.vmap(plan_one, in_axes=(0, 0, None))(consts, rounds, dev)
        # This device's own loop: as long as the longest makespan of its lanes (over the runs).
        steps = jnp.minimum(makespan.max(), shape.lane_steps)
        U, stats = train(jax.vmap(unravel)(w), x_train, y_train, plan, idx, mask, byz & flip_byzantine,
                         consts.local, steps)
        overflow = jax.lax.pmax((makespan > shape.lane_steps).astype(jnp.int32), sharding.CLIENTS_AXIS) > 0
        return U, byz, stats.loss, clients, overflow

    rows_spec = P(None, sharding.CLIENTS_AXIS)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(), P()),
                            out_specs=(rows_spec, rows_spec, rows_spec, rows_spec, P()), check_vma=False)

    def train_round(w, rounds, consts: RunConsts, x_train, y_train):
        U, byz, loss, clients, overflow = sharded(w, rounds, consts, x_train, y_train)
        if b * D != rows:  # drop the padding rows of the last block
            U, byz, loss, clients = U[:, :rows], byz[:, :rows], loss[:, :rows], clients[:, :rows]
        return _split_root(U, byz, loss, clients, shape, overflow)

    # Sharded by rows when the sampled clients split evenly; else (a few rows) XLA's choice.
    rows_sharding = NamedSharding(mesh, P(None, sharding.CLIENTS_AXIS)) if shape.per_round % D == 0 else None
    out = TrainOutput(rows_sharding, rows_sharding, rows_sharding, rows_sharding,
                      NamedSharding(mesh, P()) if shape.root else None, NamedSharding(mesh, P()), None,
                      NamedSharding(mesh, P()))
    return jax.jit(train_round, out_shardings=out)
