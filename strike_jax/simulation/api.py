"""The public entry points: `simulate(config)` and `simulate_many(configs)`.

One round (SPEC §2): sample clients from (seed, round) -> every sampled client trains locally from the
global model -> the attack replaces the Byzantine rows -> NNM / bucketing / rule -> `w += g` ->
metrics; evaluation every `eval_every` rounds.

`simulate_many` groups configs that differ only in numbers (seed, `beta`, Byzantine ratio, learning
rate and the other optimizer numbers, the numeric hyper-parameters of the attack and the rules) into
batches: global models `[R, d]`, updates `[R, n, d]`, one compiled round for the whole batch.
Batches that differ in their attack or rule but train alike (same model, data, clients,
pre-aggregation) form a *program group*: they share the training and evaluation programs and one
server program holding each of the group's attacks and rules once. `simulate(config)` is the
batch of one.

Determinism: the partition, the model's initialisation, the sampled clients, the batch schedules and
the server's keys are all derived from `config.seed` (and the round); the training strategy and
lanes are resolved from the config and the platform (never by timing, unless asked) and recorded;
so the same config gives the same history alone or in any batch, and a run resumed from its
checkpoint continues exactly as if never interrupted. Each run keeps its own run directory
(`checkpoint.npz`, `result.json`, `rounds.csv`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from strike_jax import sharding
from strike_jax.config import Config
from strike_jax.errors import InputError
from strike_jax.simulation import components, loop, plan, store
from strike_jax.simulation.batch import Batch, Grid
from strike_jax.simulation.programs import PROGRAMS, ProgramCache, batch_programs, program_keys, submit_programs
from strike_jax.simulation.settings import DEFAULT, Settings


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
    settings: Settings | None = None,
    programs: ProgramCache | None = None,
    dataset: Any = None,
    model: Any = None,
    attack: Any = None,
    defence: Any = None,
) -> list[dict[str, Any]]:
    """Runs many configs; those that differ only in numbers run as one batch, and batches that differ
    only in their attack or rule share one compiled server program (each attack and rule compiled
    once: `server.ServerGrid`).

    Args:
      configs: the runs.
      run_dirs: one run directory per config (or None entries): `checkpoint.npz`, `result.json` and
        `rounds.csv` live there; a finished run is returned as stored, an interrupted one resumes
        exactly, and a run stored with fewer rounds than asked is continued.
      progress: a progress bar per batch (seconds per round after compiling, the best current accuracy).
      checkpoint_every: rounds between checkpoints (also written at the end and on divergence).
      checkpoint_seconds: also checkpoint when this many seconds passed since the last one (None: off).
      max_runs_per_program: cap on the runs batched together (default: what fits in memory; on a CPU,
        runs whose update matrices total at most `settings.cpu_batch_bytes`).
      stop_after: stop (after checkpointing) once every run of a batch has done this many rounds in
        total, as if interrupted; used to test resume.
      on_updates: called every round of every run as `on_updates(round, updates [n, d],
        byzantine_mask [n], sent [n, d])` (host copies; costs transfers). Only with one config.
      on_result: called as `on_result(config, result)` when a run is done (stored ones first).
      settings: how the engine runs (`simulation.Settings`; default `settings.DEFAULT`).
      programs: the compiled-program cache (default: the process's, `programs.PROGRAMS`).
      dataset, model, attack, defence: a user's own objects (`data.from_arrays`, `models.from_flax`,
        `stages.from_function`), which the configs name (`Config(dataset="my_data", ...)`): they
        are registered under their names, and every result and checkpoint records their
        fingerprints, so a run directory refuses to resume with a different object.

    Returns:
      One dict per config, in order: exactly what `simulate` returns for it.

    Raises:
      ValueError: before any work, for a bad name, hyper-parameter, data argument, a Byzantine count
        above the pipeline's limit (without `allow_beyond_breakdown`), or a run directory that is a
        file or not writable.
      Interrupted: on Ctrl-C, after the current round and a checkpoint of every run of the batch.
    """
    settings = DEFAULT if settings is None else settings
    programs = PROGRAMS if programs is None else programs
    configs = list(configs)
    for c in configs:
        if not isinstance(c, Config):
            raise TypeError(f"simulate_many takes strike_jax.config.Config objects, got {type(c).__name__}.")
    if run_dirs is None:
        run_dirs = [None] * len(configs)
    run_dirs = list(run_dirs)
    if len(run_dirs) != len(configs):
        raise InputError(f"run_dirs has {len(run_dirs)} entries for {len(configs)} configs.")
    if on_updates is not None and len(configs) != 1:
        raise InputError("on_updates is supported for a single config (simulate).")
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise InputError(f"checkpoint_every={checkpoint_every!r} is not allowed; allowed: an int >= 1.")
    if checkpoint_seconds is not None and not checkpoint_seconds > 0:
        raise InputError(f"checkpoint_seconds={checkpoint_seconds!r} is not allowed; allowed: a number > 0 or None.")
    components.register_user_objects(configs, {"dataset": dataset, "model": model, "attack": attack,
                                               "defence": defence})
    for c, d in zip(configs, run_dirs):  # bad input fails here, before any data loads
        components.check_config(c)
        store.check_run_dir(d)
    runs = [plan.Run(c, d, [], fingerprints=components.user_fingerprints(c)) for c, d in zip(configs, run_dirs)]
    todo = []
    for r in runs:
        r.result = store.stored_result(r.config, r.run_dir, r.fingerprints)
        if r.result is None:
            todo.append(r)
        elif on_result is not None:
            on_result(r.config, r.result)
    for r in todo:
        plan.prepare(r, settings)
    # Program groups (shared programs), then batches within them (shared state).
    program_groups: dict[Any, list[plan.Run]] = {}
    for r in todo:
        program_groups.setdefault((components.program_key(r.config), r.backend), []).append(r)
    work = []
    for (_, backend), members in program_groups.items():
        grid = Grid([r.config for r in members], backend)
        batches: dict[Any, list[plan.Run]] = {}
        for r in members:
            batches.setdefault((components.group_key(r.config), r.lanes, r.strategy), []).append(r)
        for part_runs in batches.values():
            cap = max_runs_per_program or plan.runs_per_program(part_runs[0].config, settings)
            k = math.ceil(len(part_runs) / cap)
            size = math.ceil(len(part_runs) / k)
            for b in range(k):
                work.append((part_runs[b * size:(b + 1) * size], members, grid))

    def build(item) -> Batch:
        part, members, grid = item
        return Batch(part, group=members, grid=grid, settings=settings, programs=programs,
                     with_updates=on_updates is not None)

    def build_and_submit(item) -> Batch:
        b = build(item)
        b.new_program = any(k not in programs for k in program_keys(b).values())
        if settings.compile_ahead:
            submit_programs(b, programs)
        return b

    nxt: Batch | None = build_and_submit(work[0]) if work else None
    for w_i in range(len(work)):
        batch = nxt
        assert batch is not None  # built one step ahead for every item of `work`
        t0 = time.perf_counter()
        progs = batch_programs(batch, programs)
        # The next batch's programs compile while this one runs.
        nxt = build_and_submit(work[w_i + 1]) if w_i + 1 < len(work) else None
        loop.run_batch(batch, progs, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                       progress=progress, stop_after=stop_after, on_updates=on_updates)
        wall = time.perf_counter() - t0
        for r in batch.runs:
            r.result = summarize(r.config, r.history, r.diverged_round, r.compile_rounds)
            if r.fingerprints:
                r.result["user_objects"] = r.fingerprints
            r.result["wall_time_s"] = wall / len(batch.runs)
            r.result["batch"] = {**batch.describe(), "new_program": batch.new_program}
            if r.run_dir is not None and sharding.writes_files():
                store.write_json(os.path.join(r.run_dir, store.RESULT), r.result)
                store.write_rounds_csv(os.path.join(r.run_dir, store.ROUNDS_CSV), r.history)
            if on_result is not None:
                on_result(r.config, r.result)
    return [r.result for r in runs if r.result is not None]  # every run has its result by now


def simulate(
    config: Config,
    *,
    run_dir: str | None = None,
    checkpoint_every: int = 10,
    checkpoint_seconds: float | None = 300.0,
    progress: bool = False,
    stop_after: int | None = None,
    on_updates: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    settings: Settings | None = None,
    dataset: Any = None,
    model: Any = None,
    attack: Any = None,
    defence: Any = None,
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
      `final_accuracy` (with `validation_fraction`: `val_accuracy`/`val_loss` on the evaluated rounds,
      `best_val_accuracy`, `final_val_accuracy`), `diverged` (a non-finite aggregate ended the run), `diverged_round`,
      `completed_rounds`, `finished`, `mean_round_time_s`, `wall_time_s`, `batch` (how it ran).
    """
    return simulate_many([config], run_dirs=[run_dir], progress=progress, checkpoint_every=checkpoint_every,
                         checkpoint_seconds=checkpoint_seconds, stop_after=stop_after, on_updates=on_updates,
                         settings=settings, dataset=dataset, model=model, attack=attack, defence=defence)[0]


def summarize(config: Config, history: list[dict[str, Any]], diverged_round: int | None,
              compile_rounds: Sequence[int] = ()) -> dict[str, Any]:
    """The result of a run from its round records. `mean_round_time_s` leaves out the rounds whose
    time includes compiling (the first round of every invocation, listed in `compile_rounds`)."""
    accs = [h["accuracy"] for h in history if "accuracy" in h]
    completed = sum(h["round"] >= 0 for h in history)  # the initial evaluation (round -1) is no round
    steady = [h["time_round_s"] for h in history if "time_round_s" in h and h["round"] not in set(compile_rounds)]
    out = {
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
    if config.validation_fraction > 0:
        vals = [h["val_accuracy"] for h in history if "val_accuracy" in h]
        out["best_val_accuracy"] = max(vals) if vals else None
        out["final_val_accuracy"] = vals[-1] if vals else None
    return out


def best_accuracy(result: Mapping[str, Any]) -> float:
    """The paper's number of a run: the best test accuracy over all rounds (NaN if never evaluated)."""
    b = result.get("best_accuracy")
    return math.nan if b is None else float(b)
