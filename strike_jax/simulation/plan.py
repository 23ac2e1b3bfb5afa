"""Planning a run before anything compiles: its partition, its clients' local steps, lanes,
capacities, the training strategy, and whether the round fits in memory (SPEC §2, §3).

A run's plan depends on its own config only (never on the runs that share its batch), so it
computes the same alone or batched, and the resolved strategy and lanes are recorded in its
checkpoint and result: a resumed run keeps them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import data as data_lib
from strike_jax import models as model_lib
from strike_jax import training
from strike_jax.config import Config
from strike_jax.errors import InputError
from strike_jax.simulation import components, store
from strike_jax.simulation.settings import Settings
from strike_jax.training import schedule


@dataclasses.dataclass
class Run:
    """One run: its config and run directory, its plan, and what it has done so far."""

    config: Config
    run_dir: str | None
    history: list
    diverged_round: int | None = None
    start_round: int = 0
    result: dict | None = None
    compile_rounds: list = dataclasses.field(default_factory=list)  # rounds whose time includes compiling
    table: Any = None          # data.ClientData of the run's partition
    steps: Any = None          # [k, n] real steps of the sampled clients over the planning horizon
    lanes: int = 1             # L of the packed path, chosen from this run alone
    root: bool = False         # the server trains on a root set every round (FLTrust)
    d: int = 0                 # the flat model's size
    strategy: str = "packed"   # the resolved training strategy (recorded in checkpoint and result)
    backend: Any = None        # ops.Backend of its server step (`components.server_backend`)
    fingerprints: dict = dataclasses.field(default_factory=dict)  # the user objects it names
    validation: Any = None     # [V] int64 training indices held out for validation (V = 0: none)


def plan_rounds(config: Config, settings: Settings) -> tuple[int, bool]:
    """`(k, truncated)`: the rounds whose samples size the lanes (`plan_steps`). One under full
    participation (every round trains the same clients), else `max(rounds, plan_horizon)` (so the
    lane length does not depend on the number of rounds), cut to `plan_budget // n` for large `n`
    (`truncated`: the capacity then comes from the worst case, not from the plan)."""
    n = config.clients_per_round
    if n == config.num_clients:
        return 1, False
    k = max(config.rounds, settings.plan_horizon)
    if k * n <= settings.plan_budget:
        return k, False
    return max(1, settings.plan_budget // n), True


def plan_steps(table, config: Config, settings: Settings) -> np.ndarray:
    """`[k, n]` real local steps of the sampled clients in rounds `0..k-1` of a run (device draw of the
    sampling), `k` from `plan_rounds` (the root set's steps appended as a last column)."""
    n = config.clients_per_round
    k = plan_rounds(config, settings)[0]
    counts = table.counts[:config.num_clients]  # a root set is the table's extra last row
    out = np.asarray(_round_steps_impl(jnp.asarray(counts), config.seed, jnp.arange(k, dtype=jnp.int32), n,
                                       config.batch_size, config.local_epochs, config.local_steps))
    if table.num_clients > config.num_clients:
        root = int(schedule.local_step_counts(np.int64(table.counts[-1]), config.batch_size, config.local_epochs,
                                              config.local_steps))
        out = np.concatenate([out, np.full((k, 1), root, out.dtype)], axis=1)
    return out


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _round_steps_impl(counts, seed, rounds, n, batch_size, epochs, local_steps):
    def one(r):
        clients = schedule.sample_clients(seed, r, counts.shape[0], n)
        return schedule.local_step_counts(counts[clients], batch_size, epochs, local_steps)

    return jax.vmap(one)(rounds)


def device_blocks(steps: np.ndarray, devices: int) -> np.ndarray:
    """`[k * D, b]`: each planned round's trained rows (`[k, rows]`) cut into the `D` devices' blocks
    (`RoundShape.block`; the last block padded with steps 0), as `make_device_train` spreads them."""
    k, rows = steps.shape
    b = -(-rows // devices)
    padded = np.zeros((k, b * devices), steps.dtype)
    padded[:, :rows] = steps
    return padded.reshape(k * devices, b)


def lane_capacity_bound(table, config: Config, rows: int, lanes: int) -> int:
    """An upper bound on any round's longest lane: a device trains at most its block's `b` rows,
    whose steps sum to at most the `b` largest clients' (the root set's included), and longest-first
    packing ends within `sum / L + max` (a client starts on the least-loaded lane)."""
    steps = np.sort(schedule.local_step_counts(np.asarray(table.counts, np.int64), config.batch_size,
                                               config.local_epochs, config.local_steps))[::-1]
    b = -(-rows // config.num_devices)
    return int(-(-int(steps[:b].sum()) // lanes) + int(steps[0]))


def uniform_steps(table, config: Config) -> bool:
    """Whether every client of the table that holds data (the root set included) takes the same
    number of local steps a round: a property of the config and its partition, never of a round's
    sample (`training.resolve_auto`'s `uniform_steps`)."""
    steps = schedule.local_step_counts(np.asarray(table.counts, np.int64), config.batch_size, config.local_epochs,
                                       config.local_steps)
    return np.unique(np.asarray(steps)[np.asarray(steps) > 0]).size <= 1


def longest_client(table, config: Config, rows: int, lanes: int) -> int:
    """An upper bound on any client's local steps in any round (the "vmap" layout's capacity; the
    signature of `lane_capacity_bound`)."""
    del rows, lanes
    steps = schedule.local_step_counts(np.asarray(table.counts, np.int64), config.batch_size, config.local_epochs,
                                       config.local_steps)
    return int(np.max(steps, initial=1))


def resolve_strategy(config: Config, *, d: int, input_size: int, is_conv: bool,
                     recorded: str | None = None, uniform: bool = False) -> str:
    """The run's training strategy: the config's, or for "auto" a deterministic choice from the
    model, shapes and platform (`training.resolve_auto`), never a timing; a resumed run keeps the
    strategy recorded in its checkpoint. "measure" times the candidates (an explicit opt-in whose
    choice may differ between machines; it is recorded like any other)."""
    if recorded is not None:
        return recorded
    if config.strategy not in ("auto", "measure"):
        return config.strategy
    if config.num_devices > 1:
        return "packed"  # several devices: the device path
    if config.strategy == "measure":
        return "measure"  # resolved by timing when the batch is built (`programs.build_programs`)
    return training.resolve_auto(platform=jax.default_backend(), model=config.model, d=d, input_size=input_size,
                                 batch_size=config.batch_size, lanes=config.lanes or 1, is_conv=is_conv,
                                 uniform_steps=uniform)


def prepare(run: Run, settings: Settings) -> None:
    """Plans a run from its own config: its partition, its clients' steps, its lanes, its strategy
    and server forms. A run's plan never depends on which other runs share its batch, so it computes
    the same alone or batched."""
    cfg = run.config
    ds = components.load_dataset(cfg)
    components.check_augmentation(cfg, ds)
    run.root = bool(components.make_pipeline(cfg).info.get("needs_root_update", False))
    root = components.root_set(cfg, ds) if run.root else None
    part, run.validation = components.make_split(cfg, ds, exclude=root)
    clients = list(part.indices) + ([root] if run.root else [])
    run.table = data_lib.make_client_data(clients, cfg.batch_size, cfg.local_epochs)
    run.steps = plan_steps(run.table, cfg, settings)
    model = components.make_model(cfg, ds)
    d = model_lib.num_params(model) + model_lib.num_batch_stats(model)
    run.d = d
    check_memory(cfg, d)
    run.backend = components.server_backend(cfg, d)
    meta = None if run.run_dir is None else store.read_checkpoint_meta(os.path.join(run.run_dir, store.CHECKPOINT))
    if meta is not None and cfg.differences(meta["config"], ignore=("rounds",)):
        meta = None  # another config's checkpoint: refused when the batch restores it
    input_size = int(np.prod(ds.x_train.shape[1:]))
    run.strategy = resolve_strategy(cfg, d=d, input_size=input_size, is_conv=bool(model.is_conv),
                                    recorded=None if meta is None else meta.get("strategy"),
                                    uniform=uniform_steps(run.table, cfg))
    if meta is not None and meta.get("lanes") is not None:
        run.lanes = int(meta["lanes"])  # a resumed run keeps its lanes
        return
    # Memory per lane: ~6 model-sized buffers (parameters, momentum, gradient, update row...) and
    # the batch's activations.
    per_lane = 4 * (6 * d + 16 * cfg.batch_size * input_size)
    D = cfg.num_devices
    max_lanes = max(1, memory_budget() // runs_per_program(cfg, settings) // per_lane // D)
    strategy = run.strategy if run.strategy in training.DEVICE_STRATEGIES else "packed"
    blocks = device_blocks(run.steps, D)
    if strategy == "vmap" and D > 1:  # several devices: the packed program, one lane per client of a block
        run.lanes = blocks.shape[1]
        return
    if strategy == "vmap":  # chunks whose temporaries stay small (`training.VMAP_CHUNK_BYTES`)
        max_lanes = min(max_lanes, max(1, training.VMAP_CHUNK_BYTES // (4 * 6 * d)))
    run.lanes = training.strategy_lanes(strategy, blocks, blocks.shape[1], cfg.lanes, max_lanes)[0]


def check_memory(config: Config, d: int) -> None:
    """Refuses, before any training, a round whose `[n, d]` update matrix cannot fit: the matrix and
    the attack's copy of it (float32) against the device's memory (the host's on CPU, where
    host devices share it; per device elsewhere, the matrix being spread over `num_devices`).

    Raises:
      ValueError: one line with the sizes and what to change.
    """
    n = config.clients_per_round
    # DSGD also keeps every client's worker momentum, `[N, d]`.
    need = 2 * 4 * n * d + (4 * config.num_clients * d if config.algorithm == "dsgd" else 0)
    total, per_device = device_memory()
    have = total if per_device is None else per_device * config.num_devices
    if need > have:
        gib = 1 << 30
        raise InputError(
            f"clients_per_round={n} is not allowed with this model (d={d:,}): one round's [n, d] update matrix "
            f"and the attack's copy need {need / gib:.1f} GiB, the {'host' if per_device is None else 'devices'} "
            f"{have / gib:.1f} GiB; allowed: n <= {max(1, have // (8 * d)):,} (or more devices, num_devices).")


def pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def device_memory() -> tuple[int, int | None]:
    """`(host bytes, device bytes or None)`: the physical memory, and a device's own memory where
    the backend reports one (None on CPU, whose devices share the host's)."""
    try:
        host = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        host = 16 << 30
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    return host, (int(stats["bytes_limit"]) if stats.get("bytes_limit") else None)


def memory_budget() -> int:
    host, device = device_memory()
    if device is not None:
        return int(0.5 * device)
    return int(0.25 * host)


def runs_per_program(config: Config, settings: Settings) -> int:
    """How many runs of this config share one batch: the `[R, n, d]` matrices (the update matrix,
    what the attack sends, the rule's temporaries) within the memory budget, and on a CPU within
    `settings.cpu_batch_bytes`."""
    ds = components.load_dataset(config)
    model = components.make_model(config, ds)
    d = model_lib.num_params(model) + model_lib.num_batch_stats(model)
    per_run = 4 * d * (4 * config.clients_per_round + 8 * 16
                       + (config.num_clients if config.algorithm == "dsgd" else 0))  # DSGD's momenta
    cap = int(memory_budget() // max(per_run, 1))
    if jax.default_backend() == "cpu":
        cap = min(cap, settings.cpu_batch_bytes // (4 * d * config.clients_per_round))
    return max(1, cap)
