"""`simulate(config)` and `simulate_many(configs)`: federated runs, batched, checkpointed, resumable.

One round (SPEC §2): sample clients from (seed, round) -> every sampled client trains locally from the
global model -> the attack replaces the Byzantine rows -> NNM / bucketing / rule -> `w += g` ->
metrics; evaluation every `eval_every` rounds.

`simulate_many` groups configs that differ only in numbers (seed, `beta`, Byzantine ratio, learning
rate and the other optimizer numbers, the numeric hyper-parameters of the attack and the rules) and
runs each group as one batch: global models `[R, d]`, updates `[R, n, d]`, one compiled round for the
whole batch (`strike_jax.training.round`). Configs that differ in structure (attack or defence name,
model, dataset, clients per round, ...) form separate groups. `simulate(config)` is the batch of one.

Determinism: the partition, the model's initialisation, the sampled clients, the batch schedules and
the server's keys are all derived from `config.seed` (and the round), so the same config gives the
same history alone or in any batch, and a run resumed from its checkpoint continues exactly as if
never interrupted. Each run keeps its own run directory (`checkpoint.npz`, `result.json`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import atomic
from strike_jax import data as data_lib
from strike_jax import models as model_lib
from strike_jax import registry, stages, training
from strike_jax.config import Config
from strike_jax.training import round as round_lib
from strike_jax.training import schedule
from strike_jax.training.local import LocalHparams

CHECKPOINT = "checkpoint.npz"
RESULT = "result.json"
ROUNDS_CSV = "rounds.csv"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `simulate` / `simulate_many`: every run's last completed round was checkpointed.

    Attributes:
      message: what was saved and how to resume (one line per run directory).
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _InterruptGuard:
    """While active, the first Ctrl-C only sets `requested` (the loop finishes its round, checkpoints
    and raises `Interrupted`); a second one stops at once. Outside the main thread it does nothing."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstrike-jax: interrupted; finishing the current round and saving checkpoints "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: keep Python's default handling
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False

# Config fields that are per-run numbers inside a group, or only steer the host loop (everything
# else is structure: it shapes the compiled round).
RUN_NUMBERS = ("seed", "beta", "byzantine_ratio", "lr", "momentum", "weight_decay", "clip_norm",
               "attack_params", "defence_params", "preaggregation_params", "rounds", "eval_every")
# Partial participation: lanes are sized for the worst of the first rounds (at least this many)...
PLAN_HORIZON = 1000
# ... while the plan's sampled client-rounds stay below this (the planning is a host-side LPT per
# round: 1,000 rounds of 10,000 clients took minutes); beyond, fewer rounds choose the lanes and
# the lanes' capacity is the packing's worst case over any sample (`_lane_capacity_bound`).
PLAN_BUDGET = 200_000


# ---------------------------------------------------------------------------------------------
# Data and model (cached per process: sweeps load a dataset once).

_DATA_CACHE: dict[Any, Any] = {}


def load_dataset(config: Config):
    """The config's dataset (cached per process)."""
    key = (config.dataset, config.data_dir, json.dumps(config.dataset_params, sort_keys=True))
    if key not in _DATA_CACHE:
        kwargs = dict(config.dataset_params)
        if config.data_dir:
            kwargs["data_dir"] = config.data_dir
        _DATA_CACHE[key] = data_lib.load(config.dataset, **kwargs)
    return _DATA_CACHE[key]


ROOT_TAG = 5


def root_set(config: Config, ds) -> np.ndarray:
    """The server's clean root set (FLTrust): `root_samples` training samples drawn from
    `(seed, ROOT_TAG)`, sorted; they are excluded from the clients' partition."""
    n = len(ds.y_train)
    if config.root_samples >= n:
        raise ValueError(f"root_samples={config.root_samples} is not allowed; allowed: fewer than the {n} "
                         f"training samples of {config.dataset!r}.")
    rng = np.random.default_rng([config.seed, ROOT_TAG])
    return np.sort(rng.choice(n, size=config.root_samples, replace=False))


def make_partition(config: Config, ds, exclude: np.ndarray | None = None):
    """The run's split of the training set (SPEC §4), from its seed, over the samples not in
    `exclude` (the root set)."""
    keep = np.arange(len(ds.y_train)) if exclude is None else np.setdiff1d(np.arange(len(ds.y_train)), exclude)
    if config.partition == "dirichlet":
        part = data_lib.dirichlet(ds.y_train[keep], config.num_clients, config.beta, seed=config.seed)
    elif config.partition == "iid":
        part = data_lib.iid(len(keep), config.num_clients, seed=config.seed)
    else:
        if ds.client_ids is None:
            raise ValueError(f"partition='natural' needs a dataset with client ids; {config.dataset!r} has none.")
        part = data_lib.natural(np.asarray(ds.client_ids)[keep])
        if part.num_clients != config.num_clients:
            raise ValueError(
                f"num_clients={config.num_clients} but the natural partition of {config.dataset!r} has "
                f"{part.num_clients} clients; set num_clients={part.num_clients}."
            )
    if exclude is None:
        return part
    return part._replace(indices=tuple(keep[a] for a in part.indices))


def make_model(config: Config, ds):
    """The config's model; raw (uint8) stored data is normalised on the device inside `apply`."""
    model = model_lib.get(config.model, num_classes=ds.num_classes, input_shape=tuple(ds.x_train.shape[1:]))
    if not ds.preprocessing.applied:
        raw_apply = model.apply

        def apply(variables, x, train, mask=None):
            return raw_apply(variables, ds.normalize(x), train, mask)

        model = model._replace(apply=apply)
    return model


def init_variables(model, seed: int):
    """The run's initial model, from `key(seed, INIT_TAG)` (one compiled initialiser per model)."""
    init = _cached(("init", model.name, model.num_classes, model.input_shape, model.module),
                   lambda: jax.jit(lambda s: model.init(jax.random.fold_in(jax.random.PRNGKey(s), schedule.INIT_TAG))))
    return init(jnp.asarray(seed, jnp.uint32))


def defence_params(config: Config) -> dict:
    """The rule's hyper-parameters, filled in from the config where the rule has them and the config
    leaves them out: `num_clients` (a rule keeping per-client state: FoolsGold), and MoNNA's trusted
    row `idx`, set to the last row: the simulation puts the Byzantine clients in rows `0 .. f-1`, so
    the rule's own default (row 0) would trust an attacker."""
    params = dict(config.defence_params)
    spec = registry.hparam_spec("rule", config.defence)
    if "num_clients" in spec and params.get("num_clients") is None:
        params["num_clients"] = config.num_clients
    if config.defence == "monna" and params.get("idx") is None:
        params["idx"] = config.clients_per_round - 1
    return params


def make_pipeline(config: Config, *, inject: bool = False):
    """The run's server pipeline `stages.chain(attack, nnm, bucketing, rule)` (`stages.server_pipeline`);
    with `inject`, the numeric hyper-parameters live in its state (runs of a group stack them)."""
    return stages.server_pipeline(
        config.defence, attack=config.attack, preaggregation=config.preaggregation,
        attack_params=config.attack_params, defence_params=defence_params(config),
        preaggregation_params=config.preaggregation_params, inject=inject)


def _static_hparams(kind: str, name: str, params) -> tuple:
    """A stage's hyper-parameters that shape its program (the traceable ones are per-run numbers)."""
    spec = registry.hparam_spec(kind, name)
    values = registry.validate(kind, name, params)
    return (kind, name, tuple(sorted((k, repr(v)) for k, v in values.items() if not spec[k].traceable)))


def pipeline_structure(config: Config) -> tuple:
    """What of the server pipeline must be equal for runs to share a program."""
    out = [] if config.attack in ("none", None) else [_static_hparams("attack", config.attack, config.attack_params)]
    out += [_static_hparams("preaggregator", p, config.preaggregation_params.get(p, {}))
            for p in config.preaggregation]
    out.append(_static_hparams("rule", config.defence, defence_params(config)))
    return tuple(out)


def round_f_to_check(config: Config) -> int:
    """The Byzantine count checked against the pipeline's limit: the exact `f` under full
    participation, the expected one under partial participation (a sampled round may hold more;
    the rules then clamp it, as the reference does, and the round records `f_above_limit`)."""
    num_byz = config.num_byzantine if config.attack not in ("none", None) else 0
    if config.clients_per_round == config.num_clients:
        return num_byz
    return min(config.clients_per_round, math.ceil(config.clients_per_round * num_byz / config.num_clients))


def check_config(config: Config):
    """Everything about a config that can be refused before any data loads: names, hyper-parameters,
    the pipeline's limit on `f` (`stages.check_f`). Returns the (non-injected) pipeline."""
    kwargs = dict(config.dataset_params)
    if config.data_dir:
        kwargs["data_dir"] = config.data_dir
    data_lib.check_load_args(config.dataset, **kwargs)
    if config.model not in model_lib.names():
        raise ValueError(f"model {config.model!r} is not allowed; allowed: {', '.join(model_lib.names())}.")
    if config.num_devices > jax.device_count():
        raise ValueError(
            f"num_devices={config.num_devices} is not allowed; allowed: 1 .. {jax.device_count()} (the "
            f"{jax.default_backend()} devices jax sees; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before jax is imported; across hosts call strike_jax.distributed.initialize first).")
    pipe = make_pipeline(config)
    stages.check_f(pipe, config.clients_per_round, round_f_to_check(config),
                   allow_beyond_breakdown=config.allow_beyond_breakdown)
    return pipe


def group_key(config: Config) -> tuple:
    """Configs with equal keys run as one batch (they differ only in per-run numbers)."""
    d = config.to_dict()
    structure = {k: v for k, v in d.items() if k not in RUN_NUMBERS}
    local = training.LocalConfig(config.lr, config.momentum, config.weight_decay, config.clip_norm, 1)
    return (json.dumps(structure, sort_keys=True, default=str), local.structure(), pipeline_structure(config))


# ---------------------------------------------------------------------------------------------
# Checkpoints: written atomically (`strike_jax.atomic`), so an interrupted write never leaves a
# half-written file that a resume would trust.


def write_json(path: str, obj: Any) -> None:
    atomic.write_json(path, obj)


def _save_checkpoint(path, config, next_round, w, stage_state, history, compile_rounds=()):
    arrays = {"w": np.asarray(w)}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(stage_state)):
        arrays[f"stage_{i}"] = np.asarray(leaf)
    meta = json.dumps({"config": config.to_dict(), "next_round": next_round, "history": history,
                       "compile_rounds": list(compile_rounds)})
    arrays["meta"] = np.frombuffer(meta.encode(), dtype=np.uint8)
    atomic.atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _describe_differences(diff: dict) -> str:
    return "; ".join(f"{k}: {old!r} there, {new!r} requested" for k, (old, new) in sorted(diff.items()))


def _load_checkpoint(path, config, stage_state):
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        # A run may be extended to more rounds: the number of rounds is the only field allowed to differ.
        diff = config.differences(meta["config"], ignore=("rounds",))
        if diff:
            raise ValueError(f"The checkpoint {path} belongs to another config ({_describe_differences(diff)}); "
                             "use another run directory or delete it.")
        if meta["next_round"] > config.rounds:
            raise ValueError(f"The checkpoint {path} has {meta['next_round']} rounds done, more than the "
                             f"{config.rounds} requested; use another run directory or ask for at least "
                             f"{meta['next_round']} rounds.")

        leaves, treedef = jax.tree_util.tree_flatten(stage_state)
        restored = jax.tree_util.tree_unflatten(treedef, [np.asarray(z[f"stage_{i}"]) for i in range(len(leaves))])
        return (np.asarray(z["w"]), restored, meta["next_round"], meta["history"], meta.get("compile_rounds", []))


def read_checkpoint_meta(path: str) -> dict | None:
    """A checkpoint's `{"config", "next_round", "history", ...}` (None if there is no checkpoint)."""
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        return json.loads(bytes(z["meta"]).decode())


def _stored_result(config: Config, run_dir: str | None):
    """The finished result stored in `run_dir` for exactly this config, else None (a run stored with
    fewer rounds is continued from its checkpoint)."""
    if run_dir is None:
        return None
    path = os.path.join(run_dir, RESULT)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        stored = json.load(fh)
    if config.same_run(stored.get("config", {})) and stored.get("finished"):
        return stored
    return None


def check_run_dir(run_dir: str | None) -> None:
    """Refuses, before any work, a run directory that is a file or cannot be written (one line)."""
    if run_dir is None:
        return
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"run directory {run_dir!r} is a file; allowed: a directory (created if missing).")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"run directory {run_dir!r} cannot be created ({e.strerror}); allowed: a writable "
                         "directory.") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ValueError(f"run directory {run_dir!r} is not writable; allowed: a writable directory.")


def write_rounds_csv(path: str, history: list[dict[str, Any]]) -> None:
    """One row per round (`round`, `accuracy`, `loss`, the metrics, timings), atomically."""
    import csv
    import io

    columns: list[str] = []
    for rec in history:
        columns += [k for k in rec if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rec in history:
        writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    atomic.write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Planning: lanes and strategy.


def plan_rounds(config: Config) -> tuple[int, bool]:
    """`(k, truncated)`: the rounds whose samples size the lanes (`plan_steps`). One under full
    participation (every round trains the same clients), else `max(rounds, PLAN_HORIZON)` (so the
    lane length does not depend on the number of rounds), cut to `PLAN_BUDGET // n` for large `n`
    (`truncated`: the capacity then comes from the worst case, not from the plan)."""
    n = config.clients_per_round
    if n == config.num_clients:
        return 1, False
    k = max(config.rounds, PLAN_HORIZON)
    if k * n <= PLAN_BUDGET:
        return k, False
    return max(1, PLAN_BUDGET // n), True


def plan_steps(table, config: Config) -> np.ndarray:
    """`[k, n]` real local steps of the sampled clients in rounds `0..k-1` of a run (device draw of the
    sampling), `k` from `plan_rounds` (the root set's steps appended as a last column)."""
    n = config.clients_per_round
    k = plan_rounds(config)[0]
    counts = table.counts[:config.num_clients]  # a root set is the table's extra last row
    out = np.asarray(_round_steps_impl(jnp.asarray(counts), config.seed, jnp.arange(k, dtype=jnp.int32), n,
                                       config.batch_size, config.local_epochs))
    if table.num_clients > config.num_clients:
        root = config.local_epochs * -(-int(table.counts[-1]) // config.batch_size)
        out = np.concatenate([out, np.full((k, 1), root, out.dtype)], axis=1)
    return out


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _round_steps_impl(counts, seed, rounds, n, batch_size, epochs):
    def one(r):
        clients = schedule.sample_clients(seed, r, counts.shape[0], n)
        return epochs * (-(-counts[clients] // batch_size))

    return jax.vmap(one)(rounds)


# ---------------------------------------------------------------------------------------------
# One batch of runs.


@dataclasses.dataclass
class _Run:
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


def device_blocks(steps: np.ndarray, devices: int) -> np.ndarray:
    """`[k * D, b]`: each planned round's trained rows (`[k, rows]`) cut into the `D` devices' blocks
    (`RoundShape.block`; the last block padded with steps 0), as `make_device_train` spreads them."""
    k, rows = steps.shape
    b = -(-rows // devices)
    padded = np.zeros((k, b * devices), steps.dtype)
    padded[:, :rows] = steps
    return padded.reshape(k * devices, b)


def _lane_capacity_bound(table, config: Config, rows: int, lanes: int) -> int:
    """An upper bound on any round's longest lane: a device trains at most its block's `b` rows,
    whose steps sum to at most the `b` largest clients' (the root set's included), and longest-first
    packing ends within `sum / L + max` (a client starts on the least-loaded lane)."""
    steps = np.sort(config.local_epochs * -(-np.asarray(table.counts, np.int64) // config.batch_size))[::-1]
    b = -(-rows // config.num_devices)
    return int(-(-int(steps[:b].sum()) // lanes) + int(steps[0]))


def _prepare(run: _Run) -> None:
    """Plans a run from its own config: its partition, its clients' steps, its lane count. A run's
    lanes never depend on which other runs share its batch, so it computes the same alone or batched."""
    cfg = run.config
    ds = load_dataset(cfg)
    run.root = bool(make_pipeline(cfg).info.get("needs_root_update", False))
    root = root_set(cfg, ds) if run.root else None
    clients = list(make_partition(cfg, ds, exclude=root).indices) + ([root] if run.root else [])
    run.table = data_lib.make_client_data(clients, cfg.batch_size, cfg.local_epochs)
    run.steps = plan_steps(run.table, cfg)
    model = make_model(cfg, ds)
    d = model_lib.num_params(model) + model_lib.num_batch_stats(model)
    check_memory(cfg, d)
    # Memory per lane: ~6 model-sized buffers (parameters, momentum, gradient, update row...) and
    # the batch's activations.
    per_lane = 4 * (6 * d + 16 * cfg.batch_size * int(np.prod(ds.x_train.shape[1:])))
    D = cfg.num_devices
    max_lanes = max(1, _memory_budget() // _runs_per_program(cfg) // per_lane // D)
    strategy = "packed" if cfg.strategy in ("auto", "steps", "loop") else cfg.strategy
    blocks = device_blocks(run.steps, D)
    run.lanes = training.strategy_lanes(strategy, blocks, blocks.shape[1], cfg.lanes, max_lanes)[0]


def check_memory(config: Config, d: int) -> None:
    """Refuses, before any training, a round whose `[n, d]` update matrix cannot fit: the matrix and
    the attack's copy of it (float32) against the device's memory (the host's on CPU, where
    host devices share it; per device elsewhere, the matrix being spread over `num_devices`).

    Raises:
      ValueError: one line with the sizes and what to change.
    """
    n = config.clients_per_round
    need = 2 * 4 * n * d
    total, per_device = _device_memory()
    have = total if per_device is None else per_device * config.num_devices
    if need > have:
        gib = 1 << 30
        raise ValueError(
            f"clients_per_round={n} is not allowed with this model (d={d:,}): one round's [n, d] update matrix "
            f"and the attack's copy need {need / gib:.1f} GiB, the {'host' if per_device is None else 'devices'} "
            f"{have / gib:.1f} GiB; allowed: n <= {max(1, have // (8 * d)):,} (or more devices, num_devices).")


_PROGRAM_CACHE: dict[Any, Any] = {}


class _Batch:
    """A batch of runs of one group: data, model, consts, state and the compiled round."""

    def __init__(self, runs: list[_Run], *, group: list[_Run] | None = None, on_updates=None):
        self.runs = runs
        # Shapes come from the whole group (every batch of it), so its batches share one program.
        self.group = group or runs
        cfg = runs[0].config
        self.cfg = cfg
        ds = load_dataset(cfg)
        self.ds = ds
        self.model = make_model(cfg, ds)
        # Several devices: one mesh; every array the round reads is placed on all of them.
        self.mesh = None if cfg.num_devices == 1 else round_lib.make_mesh(cfg.num_devices)
        put = jnp.asarray if self.mesh is None else functools.partial(_put_replicated, self.mesh)
        tables = [r.table for r in runs]
        # Padded to a power of two: later calls whose partitions differ a little reuse the program too.
        width = _pow2(max(r.table.index.shape[1] for r in self.group))
        self.width = width
        index = np.stack([np.pad(t.index, ((0, 0), (0, width - t.index.shape[1]))) for t in tables])
        counts = np.stack([t.counts for t in tables])
        pipes = [make_pipeline(r.config, inject=True) for r in runs]
        self.pipeline = pipes[0]  # every run's has the same `update`; the numbers are in the states
        self.limit = self.pipeline.max_f(cfg.clients_per_round)
        self.local_cfg = training.LocalConfig(
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm,
            num_classes=ds.num_classes, label_map=self.pipeline.info.get("label_map"))
        local_hp = LocalHparams(*(jnp.asarray([0.0 if v is None else v for v in vals], jnp.float32) for vals in zip(
            *[(r.config.lr, r.config.momentum, r.config.weight_decay, r.config.clip_norm) for r in runs])))
        self.consts = jax.tree_util.tree_map(put, round_lib.RunConsts(
            seed=np.asarray([r.config.seed for r in runs], np.int32),
            num_byzantine=np.asarray([r.config.num_byzantine if cfg.attack != "none" else 0 for r in runs], np.int32),
            index=np.asarray(index), counts=np.asarray(counts), local=jax.device_get(local_hp),
            end_round=np.asarray([r.config.rounds for r in runs], np.int32)))
        self.x_train, self.y_train = put(ds.x_train), put(ds.y_train)
        x_test, y_test = ds.x_test, ds.y_test
        if cfg.max_test_samples is not None:
            x_test, y_test = x_test[: cfg.max_test_samples], y_test[: cfg.max_test_samples]
        self.x_test, self.y_test = put(x_test), put(y_test)

        # Initial state, then each run's checkpoint where it has one.
        flat0 = [training.flatten_variables(init_variables(self.model, r.config.seed)) for r in runs]
        self.unravel = flat0[0][1]
        d = flat0[0][0].shape[0]
        self.d = d
        n = cfg.clients_per_round
        shape_struct = jax.ShapeDtypeStruct((n, d), jnp.float32)
        states = []
        for i, r in enumerate(runs):
            stage_state = pipes[i].init(shape_struct)
            w = np.asarray(flat0[i][0])
            ckpt = None if r.run_dir is None else os.path.join(r.run_dir, CHECKPOINT)
            if ckpt is not None and os.path.exists(ckpt):
                w, stage_state, r.start_round, r.history, r.compile_rounds = _load_checkpoint(ckpt, r.config, stage_state)
                r.diverged_round = next((h["round"] for h in r.history if not h["finite"]), None)
            states.append((w, stage_state))
        stack = lambda *xs: np.stack([np.asarray(x) for x in xs])  # noqa: E731
        self.state = jax.tree_util.tree_map(put, round_lib.RunState(
            w=stack(*[s[0] for s in states]),
            stage_state=jax.tree_util.tree_map(stack, *[s[1] for s in states]),
            round=np.asarray([r.start_round for r in runs], np.int32),
            active=np.asarray([r.diverged_round is None and r.start_round < r.config.rounds for r in runs])))
        self.flip = bool(self.pipeline.info.get("data_level", False))
        self._build_round(on_updates is not None)
        self.evaluate = _cached(("eval", self.strategy == "packed", cfg.model, cfg.dataset, cfg.data_dir,
                                 json.dumps(cfg.dataset_params, sort_keys=True), tuple(self.x_test.shape)),
                                lambda: jax.jit(_vmapped_eval(training.make_evaluate(self.model), self.unravel))
                                if self.strategy == "packed" else training.make_evaluate(self.model))

    def _build_round(self, with_updates: bool):
        cfg, n = self.cfg, self.cfg.clients_per_round
        D = cfg.num_devices
        steps = device_blocks(np.concatenate([r.steps for r in self.runs]), D)
        strategy = cfg.strategy
        trained = self.runs[0].steps.shape[1]  # n, plus the root set
        L, _, padded = training.choose_lanes(steps, steps.shape[1], self.runs[0].lanes)
        group_steps = device_blocks(np.concatenate([r.steps for r in self.group]), D)
        T = training.choose_lanes(group_steps, steps.shape[1], L)[1]
        if plan_rounds(cfg)[1]:  # the plan saw a few rounds only: any round fits the worst case
            T = max(T, max(_lane_capacity_bound(r.table, r.config, trained, L) for r in self.group))
        # Capacities rounded up to a power of two, so that later calls whose partitions differ a
        # little reuse the program (a round runs its own makespan, not the capacity).
        shape = round_lib.RoundShape(n, cfg.batch_size, cfg.local_epochs, L, _pow2(T), _pow2(int(group_steps.max())),
                                     int(self.ds.x_train.shape[0]), self.runs[0].root,
                                     schedule.batch_slots(cfg.batch_size, self.width), D)
        self.calibration = None
        if strategy == "auto" and D > 1:
            strategy = "packed"  # several devices: the device path
        if strategy == "auto":
            self.calibration = training.measure_strategies(
                self.model, self.local_cfg, self.x_train, self.y_train, batch_size=cfg.batch_size, lanes=L,
                lane_steps=int(training.makespans(steps, L).max()), total_steps=int(steps.sum(axis=1).max()))
            strategy = training.choose_strategy(self.calibration)
        self.strategy = strategy
        self.shape = shape
        self.padded_fraction = padded if strategy in training.DEVICE_STRATEGIES else 0.0
        self.device = strategy in training.DEVICE_STRATEGIES
        key = (group_key(self.cfg), shape, len(self.runs), strategy, with_updates, self.flip,
               tuple(self.consts.index.shape[1:]))
        self.new_program = not _is_cached(key)
        server_key = (group_key(self.cfg), len(self.runs), self.flip, cfg.skew_metrics, with_updates)
        if self.device:
            # The optimizer's numbers are per-run arrays: only its structure shapes the program.
            local = (self.local_cfg.structure(), self.local_cfg.num_classes, self.local_cfg.clip_eps,
                     self.local_cfg.label_map)
            devices = None if self.mesh is None else tuple(d.id for d in self.mesh.devices.flat)
            train_key = ("train", cfg.model, cfg.dataset, cfg.data_dir, json.dumps(cfg.dataset_params, sort_keys=True),
                         local, shape, len(self.runs), self.flip, tuple(self.consts.index.shape[1:]), devices)
            server_key = server_key + (devices,)
            self.new_program = not (_is_cached(train_key) and _is_cached(("server",) + server_key))
            train_round = _cached(train_key, lambda: round_lib.make_device_train(
                self.model, self.local_cfg, shape, self.unravel, flip_byzantine=self.flip, mesh=self.mesh))
            server_round = _cached(("server",) + server_key, lambda: round_lib.make_device_server(
                self.pipeline, with_skew=cfg.skew_metrics, with_updates=with_updates, mesh=self.mesh,
                layout=SERVER_LAYOUT))
            self.round_step = round_lib.make_device_round(train_round, server_round)
        else:
            client_updates = _cached(("clients", self.cfg.model, self.cfg.dataset, self.local_cfg, strategy,
                                      json.dumps(cfg.dataset_params, sort_keys=True), cfg.data_dir),
                                     lambda: training.make_client_updates(self.model, self.local_cfg, strategy))
            self.round_step = _cached(key, lambda: round_lib.make_host_round(
                client_updates, self.pipeline, shape, self.unravel, flip_byzantine=self.flip,
                with_skew=cfg.skew_metrics, with_updates=with_updates))


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


# How the server step lays out the sharded update matrix with several devices
# (`round_lib.make_device_server`; see experiments/bench_scale.py for the measurement).
SERVER_LAYOUT = "rows"


def _put_replicated(mesh, x):
    """A host array placed whole on every device of `mesh` (a global array under jax.distributed:
    every process passes the same value)."""
    return jax.device_put(np.asarray(x), round_lib.replicated(mesh))


def to_host(tree):
    """Host (NumPy) copies of device arrays; arrays spread over several processes
    (`jax.distributed`) are gathered (every process must call this at the same point)."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if a.is_fully_replicated:
                return np.asarray(a.addressable_data(0))
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(one, tree)


def _writes_files() -> bool:
    """Only the first process writes run files under `jax.distributed` (they all hold the same values)."""
    return jax.process_index() == 0


def _cached(key, build):
    if key not in _PROGRAM_CACHE:
        _PROGRAM_CACHE[key] = build()
    return _PROGRAM_CACHE[key]


def _is_cached(key) -> bool:
    return key in _PROGRAM_CACHE


def _vmapped_eval(evaluate, unravel):
    return lambda w, x, y: jax.vmap(lambda wi: evaluate(unravel(wi), x, y))(w)


def _device_memory() -> tuple[int, int | None]:
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


def _memory_budget() -> int:
    host, device = _device_memory()
    if device is not None:
        return int(0.5 * device)
    return int(0.25 * host)


def _run_batch(batch: _Batch, *, checkpoint_every: int, checkpoint_seconds: float | None, progress: bool,
               stop_after: int | None, on_updates) -> None:
    runs, cfg = batch.runs, batch.cfg
    R = len(runs)
    rounds_left = max(r.config.rounds - r.start_round if r.diverged_round is None else 0 for r in runs)
    done_rounds = [r.start_round for r in runs]
    bar = _progress_bar(batch) if progress and _writes_files() else None
    first = True
    t_prev = t_checkpoint = time.perf_counter()
    with _InterruptGuard() as interrupt:
        for _ in range(rounds_left):
            state = batch.state
            rounds_now = np.asarray(done_rounds)  # the state is donated to the round: read nothing from it after
            if batch.device:
                batch.state, out = batch.round_step(state, batch.consts, batch.x_train, batch.y_train)
                timings = None
            else:
                batch.state, out, timings = batch.round_step(state, batch.consts, batch.x_train, batch.y_train)
            ran = to_host(out.ran)
            if to_host(out.overflow).any():
                raise RuntimeError("internal error: a round's clients did not fit the planned lanes "
                                   f"(L={batch.shape.lanes}, T={batch.shape.lane_steps}); please report it.")
            if not ran.any():
                break
            evals = [i for i in range(R) if ran[i] and ((rounds_now[i] + 1) % runs[i].config.eval_every == 0
                                                        or rounds_now[i] + 1 == runs[i].config.rounds)]
            acc = _evaluate(batch, evals)
            metrics = to_host(out.metrics)
            if on_updates is not None:
                U, byz, sent = to_host((out.updates, out.byzantine_mask, out.sent))
            t_now = time.perf_counter()
            for i, r in enumerate(runs):
                if not ran[i]:
                    continue
                m = jax.tree_util.tree_map(lambda a: a[i], metrics)
                rec = {"round": int(rounds_now[i]), "n": cfg.clients_per_round, **round_lib.metrics_to_dict(m)}
                if batch.limit is not None and rec["num_byzantine"] > batch.limit:
                    rec["f_above_limit"] = True  # the rules clamped f to their limit this round
                if not rec["finite"]:
                    r.diverged_round = rec["round"]
                elif i in acc:
                    rec["accuracy"], rec["loss"] = acc[i]
                if timings is not None:
                    rec["time_train_s"], rec["time_server_s"] = timings[0] / R, timings[1] / R
                rec["time_round_s"] = (t_now - t_prev) / R
                if first:
                    r.compile_rounds.append(rec["round"])
                r.history.append(rec)
                done_rounds[i] = rec["round"] + 1
                if on_updates is not None:
                    on_updates(rec["round"], U[i], byz[i], sent[i])
            if bar is not None:
                _advance(bar, batch, done_rounds, first, (t_now - t_prev))
            first = False
            t_prev = t_now
            due = [i for i in range(R) if ran[i] and (done_rounds[i] % checkpoint_every == 0
                                                      or done_rounds[i] >= runs[i].config.rounds
                                                      or runs[i].diverged_round is not None)]
            stop = stop_after is not None and min(done_rounds) >= stop_after
            timed = checkpoint_seconds is not None and t_now - t_checkpoint >= checkpoint_seconds
            if stop or timed or interrupt.requested:
                due = [i for i in range(R) if ran[i]]
            if due:
                _checkpoint(batch, due, done_rounds)
                t_checkpoint = time.perf_counter()
            if interrupt.requested:
                if bar is not None:
                    bar.close()
                raise Interrupted(_resume_message(batch, done_rounds))
            if stop:
                break
    if bar is not None:
        bar.close()


def _resume_message(batch: _Batch, done_rounds: list[int]) -> str:
    lines = []
    for r, done in zip(batch.runs, done_rounds):
        where = (f"checkpoint saved in {r.run_dir} after round {done} of {r.config.rounds}; run the same "
                 "command again to resume") if r.run_dir else "no run directory: nothing saved"
        lines.append(f"{r.config.attack}/{r.config.defence} seed {r.config.seed}: {where}")
    return "interrupted. " + "\n".join(lines)


def _progress_bar(batch: _Batch):
    from tqdm.auto import tqdm

    runs, cfg = batch.runs, batch.cfg
    label = f"{cfg.attack}/{cfg.defence}" + (f" x{len(runs)} runs" if len(runs) > 1 else "")
    return tqdm(total=max(r.config.rounds for r in runs), initial=min(r.start_round for r in runs), desc=label,
                unit="round", leave=True, dynamic_ncols=True, smoothing=0)


def _advance(bar, batch: _Batch, done_rounds: list[int], first: bool, seconds: float) -> None:
    """Moves the bar to the slowest run's round; shows seconds per round and the best current
    accuracy. The first round of an invocation compiles: its time is left out of the rate and ETA."""
    bar.update(min(done_rounds) - bar.n)
    if first:  # restart tqdm's clock after compiling, so the ETA is the steady rate's
        # (and of its last print: tqdm's close() skips the final line of a bar it thinks never printed)
        bar.start_t = bar.last_print_t = bar._time()
        bar.initial = bar.n
    accs = [r.history[-1].get("accuracy") for r in batch.runs if r.history]
    accs = [a for a in accs if a is not None]
    post = {"s/round": f"{seconds:.3g}" + (" (compiling)" if first else "")}
    if accs:
        post["acc"] = f"{max(accs):.3f}"
    bar.set_postfix(post, refresh=True)


def _evaluate(batch: _Batch, which: list[int]) -> dict[int, tuple[float, float]]:
    if not which:
        return {}
    if batch.strategy == "packed":
        acc, loss = to_host(batch.evaluate(batch.state.w, batch.x_test, batch.y_test))
        return {i: (float(acc[i]), float(loss[i])) for i in which}
    out = {}
    for i in which:
        a, lo = batch.evaluate(batch.unravel(batch.state.w[i]), batch.x_test, batch.y_test)
        out[i] = (a, lo)
    return {i: (float(a), float(lo)) for i, (a, lo) in out.items()}


def _checkpoint(batch: _Batch, which: list[int], done_rounds: list[int]) -> None:
    which = [i for i in which if batch.runs[i].run_dir is not None]
    if not which:
        return
    w, stage_state = to_host((batch.state.w, batch.state.stage_state))
    if not _writes_files():
        return
    for i in which:
        r = batch.runs[i]
        _save_checkpoint(os.path.join(r.run_dir, CHECKPOINT), r.config, done_rounds[i], w[i],
                         jax.tree_util.tree_map(lambda a: a[i], stage_state), r.history, r.compile_rounds)
        write_rounds_csv(os.path.join(r.run_dir, ROUNDS_CSV), r.history)


# ---------------------------------------------------------------------------------------------
# Public entry points.


def simulate_many(
    configs: Sequence[Config],
    *,
    run_dirs: Sequence[str | None] | None = None,
    progress: bool = False,
    checkpoint_every: int = 10,
    checkpoint_seconds: float | None = 300.0,
    max_runs_per_program: int | None = None,
    stop_after: int | None = None,
    on_updates: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    on_result: Callable[[Config, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Runs many configs, batching those that differ only in numbers into one compiled program.

    Args:
      configs: the runs.
      run_dirs: one run directory per config (or None entries): `checkpoint.npz`, `result.json` and
        `rounds.csv` live there; a finished run is returned as stored, an interrupted one resumes
        exactly, and a run stored with fewer rounds than asked is continued.
      progress: a progress bar per batch (seconds per round after compiling, the best current accuracy).
      checkpoint_every: rounds between checkpoints (also written at the end and on divergence).
      checkpoint_seconds: also checkpoint when this many seconds passed since the last one (None: off).
      max_runs_per_program: cap on the runs batched together (default: what fits in memory; on a CPU,
        runs whose update matrices total at most `CPU_BATCH_BYTES`).
      stop_after: stop (after checkpointing) once every run of a batch has done this many rounds in
        total, as if interrupted; used to test resume.
      on_updates: called every round of every run as `on_updates(round, updates [n, d],
        byzantine_mask [n], sent [n, d])` (host copies; costs transfers). Only with one config.
      on_result: called as `on_result(config, result)` when a run is done (stored ones first).

    Returns:
      One dict per config, in order: exactly what `simulate` returns for it.

    Raises:
      ValueError: before any work, for a bad name, hyper-parameter, data argument, a Byzantine count
        above the pipeline's limit (without `allow_beyond_breakdown`), or a run directory that is a
        file or not writable.
      Interrupted: on Ctrl-C, after the current round and a checkpoint of every run of the batch.
    """
    configs = list(configs)
    for c in configs:
        if not isinstance(c, Config):
            raise TypeError(f"simulate_many takes strike_jax.config.Config objects, got {type(c).__name__}.")
    if run_dirs is None:
        run_dirs = [None] * len(configs)
    run_dirs = list(run_dirs)
    if len(run_dirs) != len(configs):
        raise ValueError(f"run_dirs has {len(run_dirs)} entries for {len(configs)} configs.")
    if on_updates is not None and len(configs) != 1:
        raise ValueError("on_updates is supported for a single config (simulate).")
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every={checkpoint_every!r} is not allowed; allowed: an int >= 1.")
    if checkpoint_seconds is not None and not checkpoint_seconds > 0:
        raise ValueError(f"checkpoint_seconds={checkpoint_seconds!r} is not allowed; allowed: a number > 0 or None.")
    for c, d in zip(configs, run_dirs):  # bad input fails here, before any data loads
        check_config(c)
        check_run_dir(d)
    runs = [_Run(c, d, []) for c, d in zip(configs, run_dirs)]
    todo = []
    for r in runs:
        r.result = _stored_result(r.config, r.run_dir)
        if r.result is None:
            todo.append(r)
        elif on_result is not None:
            on_result(r.config, r.result)
    groups: dict[Any, list[_Run]] = {}
    for r in todo:
        _prepare(r)
        groups.setdefault((group_key(r.config), r.lanes), []).append(r)
    for members in groups.values():
        cap = max_runs_per_program or _runs_per_program(members[0].config)
        k = math.ceil(len(members) / cap)
        size = math.ceil(len(members) / k)
        for b in range(k):
            part = members[b * size:(b + 1) * size]
            t0 = time.perf_counter()
            batch = _Batch(part, group=members, on_updates=on_updates)
            _run_batch(batch, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                       progress=progress, stop_after=stop_after, on_updates=on_updates)
            wall = time.perf_counter() - t0
            for r in part:
                r.result = summarize(r.config, r.history, r.diverged_round, r.compile_rounds)
                r.result["wall_time_s"] = wall / len(part)
                r.result["batch"] = {"runs": len(part), "strategy": batch.strategy, "lanes": batch.shape.lanes,
                                     "devices": batch.shape.devices, "batch_slots": batch.shape.batch_slots,
                                     "lane_steps": batch.shape.lane_steps,
                                     "padded_fraction": round(batch.padded_fraction, 4),
                                     "calibration_s": batch.calibration, "new_program": batch.new_program}
                if r.run_dir is not None and _writes_files():
                    write_json(os.path.join(r.run_dir, RESULT), r.result)
                    write_rounds_csv(os.path.join(r.run_dir, ROUNDS_CSV), r.history)
                if on_result is not None:
                    on_result(r.config, r.result)
    return [r.result for r in runs]


# On a CPU, runs share a batch only while their update matrices stay small (`R n d` floats up to
# this many bytes). Measured on the 2-core development CPU (experiments/bench_sweep.py and a
# 4-round check, quiet machine): digits MLP (n d = 0.7 MiB a run), 8 runs batched took 0.007 s a
# round per run vs 0.010 s one after another; Fashion-MNIST MLP (19 MiB a run), 0.65 s vs 0.48 s.
# Runs of a group that do not share a batch still share its compiled program.
CPU_BATCH_BYTES = 8 << 20


def _runs_per_program(config: Config) -> int:
    """How many runs of this config share one program: the `[R, n, d]` matrices (the update matrix,
    what the attack sends, the rule's temporaries) within the memory budget, and on a CPU within
    `CPU_BATCH_BYTES`."""
    ds = load_dataset(config)
    model = make_model(config, ds)
    d = model_lib.num_params(model) + model_lib.num_batch_stats(model)
    per_run = 4 * d * (4 * config.clients_per_round + 8 * 16)
    cap = int(_memory_budget() // max(per_run, 1))
    if jax.default_backend() == "cpu":
        cap = min(cap, CPU_BATCH_BYTES // (4 * d * config.clients_per_round))
    return max(1, cap)


def simulate(
    config: Config,
    *,
    run_dir: str | None = None,
    checkpoint_every: int = 10,
    checkpoint_seconds: float | None = 300.0,
    progress: bool = False,
    stop_after: int | None = None,
    on_updates: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Runs federated training under attack and returns the history (`simulate_many` of one config).

    Args:
      config: the run (`strike_jax.config.Config`).
      run_dir: where to keep `checkpoint.npz`, `result.json` and `rounds.csv`. With an existing
        checkpoint of the same config the run resumes where it stopped (also to more rounds than it
        had); a finished run is returned as stored.
      checkpoint_every: rounds between checkpoints (also written at the end).
      checkpoint_seconds: also checkpoint when this many seconds passed since the last one.
      progress: show a tqdm progress bar.
      stop_after: stop (after checkpointing) once this many rounds are done in total, as if
        interrupted; used to test resume.
      on_updates: called every round as `on_updates(round, updates [n, d], byzantine_mask [n],
        sent [n, d])` with host copies of the honestly computed updates and of what the server
        received after the attack (for the LLE figures and skew studies). Costs host transfers.

    Returns:
      A dict: `config`, `rounds` (one dict per round: sampled clients' count `n`, `f`, timings, the
      server's `RoundMetrics`, and `accuracy`/`loss` on rounds that were evaluated), `best_accuracy`,
      `final_accuracy`, `diverged` (a non-finite aggregate ended the run), `diverged_round`,
      `completed_rounds`, `finished`, `mean_round_time_s`, `wall_time_s`, `batch` (how it ran).
    """
    return simulate_many([config], run_dirs=[run_dir], progress=progress, checkpoint_every=checkpoint_every,
                         checkpoint_seconds=checkpoint_seconds, stop_after=stop_after, on_updates=on_updates)[0]


def summarize(config: Config, history: list[dict[str, Any]], diverged_round: int | None,
              compile_rounds: Sequence[int] = ()) -> dict[str, Any]:
    """The result of a run from its round records. `mean_round_time_s` leaves out the rounds whose
    time includes compiling (the first round of every invocation, listed in `compile_rounds`)."""
    accs = [h["accuracy"] for h in history if "accuracy" in h]
    completed = len(history)
    steady = [h["time_round_s"] for h in history if h["round"] not in set(compile_rounds)]
    return {
        "config": config.to_dict(),
        "rounds": history,
        "best_accuracy": max(accs) if accs else None,
        "final_accuracy": accs[-1] if accs else None,
        "diverged": diverged_round is not None,
        "diverged_round": diverged_round,
        "completed_rounds": completed,
        "finished": diverged_round is not None or completed >= config.rounds,
        "mean_round_time_s": float(np.mean(steady)) if steady else None,
        "compile_rounds": list(compile_rounds),
    }


def best_accuracy(result: dict[str, Any]) -> float:
    """The paper's number of a run: the best test accuracy over all rounds (NaN if never evaluated)."""
    b = result.get("best_accuracy")
    return math.nan if b is None else float(b)
