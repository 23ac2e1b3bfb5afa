"""Resumable sweeps over configs, and the paper's way of turning runs into table cells.

Every config gets its own run directory named by a hash of the config, so an interrupted sweep
started again skips finished runs, resumes the interrupted one from its checkpoint, and never
repeats or loses finished work. A cell of the paper's tables is the mean ± std over seeds of each
run's best test accuracy (SPEC §2.5); STRIKE's cell is its best (lowest) over the `nu` grid (SPEC §8).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from strike_jax import atomic
from strike_jax.config import Config

NU_GRID = tuple(0.25 * i for i in range(1, 9))


def run_id(config: Config) -> str:
    """A stable short name for a config: the SHA-1 of its non-default fields, so adding a field to
    `Config` later does not rename (and recompute) finished runs."""
    return hashlib.sha1(json.dumps(config.non_default(), sort_keys=True).encode()).hexdigest()[:16]


def run_sweep(
    configs: Sequence[Config],
    out_dir: str,
    *,
    progress: bool = True,
    on_result: Callable[[Config, dict], None] | None = None,
    max_runs_per_program: int | None = None,
) -> list[dict[str, Any]]:
    """Runs every config (skipping finished ones, resuming interrupted ones), as batches.

    Configs that differ only in numbers (seed, `nu`, Byzantine ratio, ...) run together as one
    compiled program (`strike_jax.simulation.simulate_many`); each keeps its own run directory.

    Args:
      configs: the runs (duplicates are run once).
      out_dir: one sub-directory per run (`<out_dir>/<run_id>/result.json` + checkpoint).
      progress: progress bars per batch.
      on_result: called after each run (e.g. to print a line).
      max_runs_per_program: cap on the runs batched together (default: what fits in memory).

    Returns:
      The results, in the order of `configs`.
    """
    from strike_jax.simulation import simulate_many

    os.makedirs(out_dir, exist_ok=True)
    unique: dict[str, Config] = {}
    for cfg in configs:
        unique.setdefault(run_id(cfg), cfg)
    ids = list(unique)
    results = simulate_many([unique[i] for i in ids], run_dirs=[os.path.join(out_dir, i) for i in ids],
                            progress=progress, on_result=on_result, max_runs_per_program=max_runs_per_program)
    by_id = dict(zip(ids, results))
    return [by_id[run_id(c)] for c in configs]


def cell(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) std over seeds, ignoring runs that were never evaluated."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())


def group_cells(
    configs: Sequence[Config], results: Sequence[dict], row: Callable[[Config], Any], col: Callable[[Config], Any]
) -> dict[Any, dict[Any, list[float]]]:
    """Groups best accuracies by (row, col) over the remaining fields (seeds)."""
    out: dict[Any, dict[Any, list[float]]] = {}
    for cfg, res in zip(configs, results):
        out.setdefault(row(cfg), {}).setdefault(col(cfg), []).append(res.get("best_accuracy"))
    return out


def best_over(groups: dict[Any, list[float]]) -> tuple[Any, tuple[float, float]]:
    """Among candidate settings (e.g. nu values), the one whose mean best accuracy is lowest."""
    scored = {k: cell(v) for k, v in groups.items()}
    k = min(scored, key=lambda k: (math.inf if math.isnan(scored[k][0]) else scored[k][0]))
    return k, scored[k]


def markdown_table(title: str, rows: Sequence[str], cols: Sequence[str],
                   cells: dict[str, dict[str, tuple[float, float]]], bold_min: bool = True) -> str:
    """A markdown table of `mean ± std` accuracies in percent; the lowest in a column in bold."""
    lines = [f"### {title}", "", "| attack | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    mins = {}
    for c in cols:
        vals = [cells[r][c][0] for r in rows if c in cells.get(r, {}) and not math.isnan(cells[r][c][0])]
        mins[c] = min(vals) if vals else None
    for r in rows:
        parts = []
        for c in cols:
            if c not in cells.get(r, {}):
                parts.append("—")
                continue
            m, s = cells[r][c]
            txt = "n/a" if math.isnan(m) else f"{100 * m:.2f} ± {100 * s:.2f}"
            if bold_min and mins[c] is not None and m == mins[c]:
                txt = f"**{txt}**"
            parts.append(txt)
        lines.append(f"| {r} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str, text: str) -> None:
    atomic.write_text(path, text)


def write_json_atomic(path: str, obj: Any) -> None:
    atomic.write_json(path, obj)
