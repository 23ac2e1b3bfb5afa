"""A run directory: `checkpoint.npz` (resume), `result.json` (a finished run), `rounds.csv`.

Every file is written atomically (`strike_jax.atomic`: a temporary file, fsynced, renamed), so an
interrupted write never leaves a half-written file that a resume would trust. A checkpoint carries
a format version and the tree structure, shapes and dtypes of the state it holds; restoring one
that does not match what the run expects fails with one line naming the file and what differs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from strike_jax import atomic
from strike_jax.config import Config
from strike_jax.errors import InputError

CHECKPOINT = "checkpoint.npz"
RESULT = "result.json"
ROUNDS_CSV = "rounds.csv"
#: Version of the checkpoint layout; a checkpoint of another version is refused (one line).
CHECKPOINT_FORMAT = 2


class CheckpointError(InputError):
    """A checkpoint that cannot be restored for this run (corrupt, another format, another state)."""


def write_json(path: str, obj: Any) -> None:
    atomic.write_json(path, obj)


def _leaf_specs(tree) -> list[list]:
    return [[list(np.shape(x)), str(np.asarray(x).dtype)] for x in jax.tree_util.tree_leaves(tree)]


def _momentum_spec(momentum) -> list | None:
    return None if momentum is None else _leaf_specs(np.asarray(momentum))[0]


def save_checkpoint(path: str, config: Config, next_round: int, w, stage_state, history, compile_rounds=(),
                    extra: dict | None = None, momentum=None) -> None:
    """Writes a run's state after `next_round` rounds: the flat model `w [d]`, the server
    pipeline's state (its leaves in order, with their structure, shapes and dtypes), DSGD's worker
    momenta `momentum [N, d]` (None for FedAvg), the history so far and `extra` (JSON: e.g. the
    resolved training strategy)."""
    arrays: dict[str, Any] = {"w": np.asarray(w)}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(stage_state)):
        arrays[f"stage_{i}"] = np.asarray(leaf)
    if momentum is not None:
        arrays["momentum"] = np.asarray(momentum)
    meta = json.dumps({"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "next_round": next_round,
                       "history": history, "compile_rounds": list(compile_rounds),
                       "structure": str(jax.tree_util.tree_structure(stage_state)),
                       "leaves": _leaf_specs(stage_state), "w": _leaf_specs(np.asarray(w))[0],
                       "momentum": _momentum_spec(momentum), **(extra or {})})
    arrays["meta"] = np.frombuffer(meta.encode(), dtype=np.uint8)
    atomic.atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _describe_differences(diff: dict) -> str:
    return "; ".join(f"{k}: {old!r} there, {new!r} requested" for k, (old, new) in sorted(diff.items()))


def _read_meta(z, path: str) -> dict:
    try:
        meta = json.loads(bytes(z["meta"]).decode())
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"The checkpoint {path} is corrupt (no readable metadata: {e}); delete it to start "
                              "the run over.") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"The checkpoint {path} has format {meta.get('format')!r}; this version reads format "
                              f"{CHECKPOINT_FORMAT}; delete it (or use another run directory) to start the run over.")
    return meta


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _open(path: str):
    """`np.load(path)`, a corrupt file refused in one line."""
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"The checkpoint {path} is corrupt ({_first_line(e)}); "
                              "delete it to start the run over.") from None


def load_checkpoint(path: str, config: Config, stage_state, w_like, momentum_like=None) -> tuple:
    """Restores a run from its checkpoint.

    Args:
      path: the `checkpoint.npz`.
      config: the run's config (must equal the stored one, `rounds` aside: a run may be extended).
      stage_state: a state of the structure the run expects (its leaves' shapes and dtypes too).
      w_like: an array of the flat model's shape and dtype.
      momentum_like: an array of the worker momenta's shape and dtype (DSGD), or None (FedAvg).

    Returns:
      `(w, stage_state, next_round, history, compile_rounds, meta, momentum)` (`momentum` None
      when `momentum_like` is).

    Raises:
      CheckpointError: one line naming the file and what differs (another config, more rounds done
        than asked, another format, another state structure, shape or dtype, a corrupt file).
    """
    with _open(path) as z:
        meta = _read_meta(z, path)
        diff = config.differences(meta["config"], ignore=("rounds",))
        if diff:
            raise CheckpointError(f"The checkpoint {path} belongs to another config ({_describe_differences(diff)}); "
                                  "use another run directory or delete it.")
        if meta["next_round"] > config.rounds:
            raise CheckpointError(f"The checkpoint {path} has {meta['next_round']} rounds done, more than the "
                                  f"{config.rounds} requested; use another run directory or ask for at least "
                                  f"{meta['next_round']} rounds.")
        leaves, treedef = jax.tree_util.tree_flatten(stage_state)
        want = {"structure": str(treedef), "leaves": _leaf_specs(stage_state), "w": _leaf_specs(np.asarray(w_like))[0],
                "momentum": _momentum_spec(momentum_like)}
        for field, expected in want.items():
            if meta.get(field) != expected:
                raise CheckpointError(f"The checkpoint {path} holds another state ({field}: {meta.get(field)!r} there, "
                                      f"{expected!r} expected); delete it or use another run directory.")
        try:
            stored = [np.asarray(z[f"stage_{i}"]) for i in range(len(leaves))]
            w = np.asarray(z["w"])
            momentum = None if momentum_like is None else np.asarray(z["momentum"])
        except (KeyError, ValueError, OSError) as e:
            raise CheckpointError(f"The checkpoint {path} is corrupt ({_first_line(e)}); "
                              "delete it to start the run over.") from None
        for i, (have, like) in enumerate(zip(stored, leaves)):
            if have.shape != np.shape(like) or have.dtype != np.asarray(like).dtype:
                raise CheckpointError(f"The checkpoint {path} holds another state (leaf {i}: {have.shape} "
                                      f"{have.dtype} there, {np.shape(like)} {np.asarray(like).dtype} expected).")
        if momentum is not None and (momentum.shape != np.shape(momentum_like)
                                     or momentum.dtype != np.asarray(momentum_like).dtype):
            raise CheckpointError(f"The checkpoint {path} holds another state (momentum: {momentum.shape} "
                                  f"{momentum.dtype} there, {np.shape(momentum_like)} expected).")
        restored = jax.tree_util.tree_unflatten(treedef, stored)
        return (w, restored, meta["next_round"], meta["history"], meta.get("compile_rounds", []), meta, momentum)


def read_checkpoint_meta(path: str) -> dict | None:
    """A checkpoint's `{"config", "next_round", "history", ...}` (None if there is no checkpoint)."""
    if not os.path.exists(path):
        return None
    with _open(path) as z:
        return _read_meta(z, path)


def check_fingerprints(path: str, stored: dict, fingerprints: dict) -> None:
    """Refuses a run directory whose run used other user objects under the same names."""
    if stored != fingerprints:
        diff = sorted(set(stored) | set(fingerprints))
        what = "; ".join(f"{k}: {stored.get(k)} there, {fingerprints.get(k)} now" for k in diff
                         if stored.get(k) != fingerprints.get(k))
        raise CheckpointError(f"{path} was run with other user objects under the same names ({what}); use another "
                              "run directory or delete it.")


def stored_result(config: Config, run_dir: str | None, fingerprints: dict | None = None):
    """The finished result stored in `run_dir` for exactly this config (and the same user objects,
    `fingerprints`), else None (a run stored with fewer rounds is continued from its checkpoint)."""
    if run_dir is None:
        return None
    path = os.path.join(run_dir, RESULT)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        stored = json.load(fh)
    if config.same_run(stored.get("config", {})) and stored.get("finished"):
        check_fingerprints(path, stored.get("user_objects", {}), fingerprints or {})
        return stored
    return None


def check_run_dir(run_dir: str | None) -> None:
    """Refuses, before any work, a run directory that is a file or cannot be written (one line)."""
    if run_dir is None:
        return
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise InputError(f"run directory {run_dir!r} is a file; allowed: a directory (created if missing).")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise InputError(f"run directory {run_dir!r} cannot be created ({e.strerror}); allowed: a writable "
                         "directory.") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise InputError(f"run directory {run_dir!r} is not writable; allowed: a writable directory.")


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


