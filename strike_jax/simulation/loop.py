"""The host loop over a batch's rounds: dispatch, read metrics, evaluate, checkpoint, progress, Ctrl-C.

The host stays out of the round's critical path: round `t + 1` (and round `t`'s evaluation) is
dispatched before round `t`'s metrics are read, so the device never waits for Python. The loop
drains (reads every dispatched round) only where it must: before a checkpoint (every
`checkpoint_every` rounds, at a run's end, after `checkpoint_seconds`, at `stop_after`, on Ctrl-C),
so a checkpoint always holds the state of the rounds its history records. A run that diverged or
finished is inactive on the device: a round dispatched after it changes nothing of it.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import jax
import numpy as np

from strike_jax import server, sharding
from strike_jax.simulation import store
from strike_jax.simulation.batch import Batch


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `simulate` / `simulate_many`: every run's last completed round was checkpointed.

    Attributes:
      message: what was saved and how to resume (one line per run directory).
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InterruptGuard:
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


def _due_eval(run, round_index: int) -> bool:
    return (round_index + 1) % run.config.eval_every == 0 or round_index + 1 == run.config.rounds


def run_batch(batch: Batch, programs, *, checkpoint_every: int, checkpoint_seconds: float | None, progress: bool,
              stop_after: int | None, on_updates) -> None:
    """Runs a batch to its end (or `stop_after`, or Ctrl-C), updating each run's history."""
    runs, cfg = batch.runs, batch.cfg
    R = len(runs)
    rounds_left = max(r.config.rounds - r.start_round if r.diverged_round is None else 0 for r in runs)
    done = [r.start_round for r in runs]          # rounds read back so far, per run
    planned = list(done)                          # rounds dispatched so far, per run (if still active)
    live = [r.diverged_round is None and r.start_round < r.config.rounds for r in runs]
    bar = _progress_bar(batch) if progress and sharding.writes_files() else None
    state: dict[str, Any] = {"first": True, "t_prev": time.perf_counter(), "t_checkpoint": time.perf_counter()}
    pending: list = []
    # The initial model's evaluation (`Config.eval_at_start`), before the first round donates the
    # state: a run that starts from round 0 without it (a resumed run has it in its history).
    initial = [i for i in range(R) if live[i] and runs[i].config.eval_at_start and runs[i].start_round == 0
               and not any(h["round"] == -1 for h in runs[i].history)]
    for i, values in _read_evaluation(batch, _dispatch_evaluation(batch, programs, initial)).items():
        runs[i].history.insert(0, {"round": -1, **values})

    def read(item) -> None:
        out, evals, rounds_now, timings = item
        ran = sharding.to_host(out.ran)
        if sharding.to_host(out.overflow).any():
            raise RuntimeError("internal error: a round's clients did not fit the planned lanes "
                               f"(L={batch.shape.lanes}, T={batch.shape.lane_steps}); please report it.")
        metrics = sharding.to_host(out.metrics)
        acc = _read_evaluation(batch, evals)
        if on_updates is not None:
            U, byz, sent = sharding.to_host((out.updates, out.byzantine_mask, out.sent))
        t_now = time.perf_counter()
        for i, r in enumerate(runs):
            if not ran[i]:
                live[i] = False
                continue
            m = jax.tree_util.tree_map(lambda a, i=i: a[i], metrics)
            rec = {"round": int(rounds_now[i]), "n": cfg.clients_per_round, **server.metrics_to_dict(m)}
            told = runs[i].config.tolerated_f
            if batch.limit is not None and (rec["num_byzantine"] if told is None else told) > batch.limit:
                rec["f_above_limit"] = True  # the rules clamped f to their limit this round
            if not rec["finite"]:
                r.diverged_round = rec["round"]
                live[i] = False
            elif i in acc:
                rec.update(acc[i])
            if timings is not None:
                rec["time_train_s"], rec["time_server_s"] = timings[0] / R, timings[1] / R
            rec["time_round_s"] = (t_now - state["t_prev"]) / R
            if state["first"]:
                r.compile_rounds.append(rec["round"])
            r.history.append(rec)
            done[i] = rec["round"] + 1
            if done[i] >= r.config.rounds:
                live[i] = False
            if on_updates is not None:
                on_updates(rec["round"], U[i], byz[i], sent[i])
        if bar is not None:
            _advance(bar, batch, done, state["first"], t_now - state["t_prev"])
        state["first"] = False
        state["t_prev"] = t_now

    with InterruptGuard() as interrupt:
        for _ in range(rounds_left):
            if not any(live):
                break
            rounds_now = np.asarray(planned)
            # The state is donated to the round: nothing reads it after the call.
            batch.state, out, timings = programs.round_step(batch.state, batch.consts, batch.x_train, batch.y_train)
            evals = [i for i in range(R) if live[i] and _due_eval(runs[i], planned[i])]
            evaluation = _dispatch_evaluation(batch, programs, evals)
            planned = [p + 1 if live[i] else p for i, p in enumerate(planned)]
            pending.append((out, evaluation, rounds_now, timings))
            # Read the previous round while this one runs; drain where a checkpoint is due.
            scheduled = any(live[i] and (planned[i] % checkpoint_every == 0 or planned[i] >= runs[i].config.rounds)
                            for i in range(R))
            stop = stop_after is not None and min(p for p in planned) >= stop_after
            timed = (checkpoint_seconds is not None
                     and time.perf_counter() - state["t_checkpoint"] >= checkpoint_seconds)
            if scheduled or stop or timed or interrupt.requested or on_updates is not None:
                while pending:
                    read(pending.pop(0))
                due = [i for i in range(R) if runs[i].history and (
                    done[i] % checkpoint_every == 0 or done[i] >= runs[i].config.rounds
                    or runs[i].diverged_round is not None or stop or timed or interrupt.requested)]
                if due:
                    checkpoint(batch, due, done)
                    state["t_checkpoint"] = time.perf_counter()
                if interrupt.requested:
                    if bar is not None:
                        bar.close()
                    raise Interrupted(resume_message(batch, done))
                if stop:
                    break
            elif len(pending) > 1:
                read(pending.pop(0))
        while pending:
            read(pending.pop(0))
        last = [i for i in range(R) if runs[i].history and runs[i].diverged_round is not None]
        if last:
            checkpoint(batch, last, done)
    if bar is not None:
        bar.close()


def resume_message(batch: Batch, done_rounds: list[int]) -> str:
    lines = []
    for r, done in zip(batch.runs, done_rounds):
        where = (f"checkpoint saved in {r.run_dir} after round {done} of {r.config.rounds}; run the same "
                 "command again to resume") if r.run_dir else "no run directory: nothing saved"
        lines.append(f"{r.config.attack}/{r.config.defence} seed {r.config.seed}: {where}")
    return "interrupted. " + "\n".join(lines)


def _progress_bar(batch: Batch):
    from tqdm.auto import tqdm

    runs, cfg = batch.runs, batch.cfg
    label = f"{cfg.attack}/{cfg.defence}" + (f" x{len(runs)} runs" if len(runs) > 1 else "")
    return tqdm(total=max(r.config.rounds for r in runs), initial=min(r.start_round for r in runs), desc=label,
                unit="round", leave=True, dynamic_ncols=True, smoothing=0)


def _advance(bar, batch: Batch, done_rounds: list[int], first: bool, seconds: float) -> None:
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


def _dispatch_evaluation(batch: Batch, programs, which: list[int]) -> Any:
    """Starts evaluating the current models on the test set and, with validation sets, on each
    run's own hold-out (device arrays, not read yet)."""
    if not which:
        return None
    w = batch.state.w
    if programs.device:
        test = programs.evaluate(w, batch.x_test, batch.y_test)
        val = None if programs.validate is None else programs.validate(w, batch.x_train, batch.y_train,
                                                                        batch.val_index)
        return which, test, val
    test = {i: programs.evaluate(batch.unravel(w[i]), batch.x_test, batch.y_test) for i in which}
    index = batch.val_index
    val = None if programs.validate is None or index is None else {
        i: programs.validate(batch.unravel(w[i]), batch.x_train, batch.y_train, index[i]) for i in which}
    return which, test, val


#: The history keys of an evaluation: test accuracy and loss, then the validation set's.
EVAL_KEYS = ("accuracy", "loss", "val_accuracy", "val_loss")


def _read_evaluation(batch: Batch, evaluation) -> dict[int, dict[str, float]]:
    """`{run: {"accuracy", "loss"[, "val_accuracy", "val_loss"]}}` of a dispatched evaluation."""
    if evaluation is None:
        return {}
    which, *parts = evaluation
    out: dict[int, dict[str, float]] = {i: {} for i in which}
    for names, values in zip((EVAL_KEYS[:2], EVAL_KEYS[2:]), parts):
        if values is None:
            continue
        if isinstance(values, dict):
            for i, (a, lo) in values.items():
                out[i].update({names[0]: float(a), names[1]: float(lo)})
        else:
            acc, loss = sharding.to_host(values)
            for i in which:
                out[i].update({names[0]: float(acc[i]), names[1]: float(loss[i])})
    return out


def checkpoint(batch: Batch, which: list[int], done_rounds: list[int]) -> None:
    """Writes the checkpoint and rounds.csv of runs `which` (the state must be drained)."""
    import os

    which = [i for i in which if batch.runs[i].run_dir is not None]
    if not which:
        return
    w, stage_state, momentum = sharding.to_host((batch.state.w, batch.state.stage_state, batch.state.momentum))
    if not sharding.writes_files():
        return
    for i in which:
        r = batch.runs[i]
        assert r.run_dir is not None  # `which` holds runs with a directory
        store.save_checkpoint(os.path.join(r.run_dir, store.CHECKPOINT), r.config, done_rounds[i], w[i],
                              batch.run_stage_state(stage_state, i), r.history, r.compile_rounds,
                              extra={"strategy": r.strategy, "lanes": r.lanes, "user_objects": r.fingerprints},
                              momentum=None if momentum is None else momentum[i])
        store.write_rounds_csv(os.path.join(r.run_dir, store.ROUNDS_CSV), r.history)
