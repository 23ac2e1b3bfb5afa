"""ByzFL 0.0.11's result layout and summaries, written from strike_jax runs (issue 22, item 4).

`strike_jax.byzfl.run` writes, for every run, what ByzFL's `benchmark/train.py` writes (its
`FileManager`), so that ByzFL's own `evaluate_results` functions read our results unchanged:

    <results_directory>/config.json                            the config (ByzFL's optional defaults in)
    <results_directory>/<folder>/config.json                   the run's expanded setting
    <results_directory>/<folder>/day.txt
    <results_directory>/<folder>/test_accuracy_tr_seed_S_dd_seed_D.txt   one line, "%.4f", comma-separated:
                                                               step 0, delta, 2 delta, ..., and after the last step
    <results_directory>/<folder>/val_accuracy_tr_seed_S_dd_seed_D.txt    the same on the validation split
    <results_directory>/<folder>/train_loss_tr_seed_S_dd_seed_D.txt      one value per step (honest clients' mean)
    <results_directory>/<folder>/train_time_tr_seed_S_dd_seed_D.txt      seconds (the run's share of its batch)

plus ours: `<folder>/strike_jax_tr_seed_S_dd_seed_D/` (the run directory: checkpoint, result.json,
rounds.csv; resumable) and `<results_directory>/strike_jax_summary.json`.

Summaries (`summarize`), computed as ByzFL's `evaluate_results` computes them (written from reading
it; no code shared), into `<results_directory>/best_hyperparameters/` (ByzFL's files) and
`<results_directory>/plots/` (PNG):

- **max-min hyper-parameters** (`find_best_hyperparameters`): for every cell (everything but the
  attack, `lr`, `momentum`, `weight_decay` and the seeds), each `(lr, momentum, weight_decay)`
  scores, per attack, the best over the evaluations of the seed-mean validation accuracy; the
  combination with the largest minimum over attacks wins (the first one on ties, in the config's
  order). Without a validation split (`size_train_set` 1) the first combination is used, as ByzFL.
- **test heatmap** (`test_heatmap`): heterogeneity (rows, the distribution parameter, last on top)
  x `f` (columns), per (pre-aggregators, aggregator, distribution, honest count, tolerated `f`):
  the worst over attacks of the best seed-mean test accuracy, with the chosen hyper-parameters.
  Without a declared `tolerated_f` the columns have `d = f` ("tolerated_f_equal_real").
- **training-loss heatmap** (`loss_heatmap`): the same cells, the worst over attacks of the lowest
  seed-mean training loss.
- **best-defence heatmap** (`aggregated_test_heatmap`): the best over aggregators of the test
  heatmap.
- A diverged run (strike_jax stops it) has NaN after its divergence; the best / lowest values skip
  them (`np.nanmax`), where ByzFL would go on training a NaN model.
- **accuracy curves** (`test_accuracy_curve`): per cell, one curve per attack: the seed mean of the
  test accuracy with a 95% interval `1.96 std / sqrt(seeds)` (`np.std`, ddof 0).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from strike_jax import atomic

SUMMARY_JSON = "strike_jax_summary.json"


def tag(spec) -> str:
    """ByzFL's per-seed file suffix."""
    return f"tr_seed_{spec.seed}_dd_seed_{spec.data_seed}"


def run_dir(results_directory: str, spec) -> str:
    """Our run directory of a ByzFL run (inside its ByzFL folder)."""
    return os.path.join(results_directory, spec.folder, f"strike_jax_{tag(spec)}")


def eval_steps(steps: int, delta: int) -> list[int]:
    """The steps after which ByzFL evaluates: 0, delta, 2 delta, ... below `steps`, then `steps`
    (`1 + ceil(steps / delta)` of them)."""
    return list(range(0, steps, delta)) + [steps]


def _series(result: Mapping[str, Any], key: str, spec) -> np.ndarray:
    """A run's evaluations of `key` at ByzFL's steps (NaN after a divergence)."""
    want = eval_steps(spec.steps, spec.eval_every)
    by_step = {int(h["round"]) + 1: h[key] for h in result["rounds"] if h.get(key) is not None}
    return np.array([by_step.get(s, math.nan) for s in want], dtype=float)


def run_arrays(result: Mapping[str, Any], spec, val_key: str | None) -> dict[str, np.ndarray]:
    """ByzFL's per-run arrays from one of our results: test (and validation) accuracy at ByzFL's
    evaluation steps, the training loss of every step."""
    loss = np.full(spec.steps, math.nan)
    for h in result["rounds"]:
        if 0 <= h["round"] < spec.steps and h.get("train_loss") is not None:
            loss[h["round"]] = h["train_loss"]
    out = {"test": _series(result, "accuracy", spec), "loss": loss}
    if val_key is not None:
        out["val"] = _series(result, val_key, spec)
    return out


def _line(path: str, values) -> None:
    # ByzFL's `write_array_in_file`: np.savetxt([array], fmt="%.4f", delimiter=",").
    atomic.write_text(path, ",".join(f"{v:.4f}" for v in np.atleast_1d(values)) + "\n")


def write_run(results_directory: str, spec, result: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """One run's files in ByzFL's layout (see the module docstring) and its result JSON."""
    folder = os.path.join(results_directory, spec.folder)
    os.makedirs(folder, exist_ok=True)
    atomic.write_text(os.path.join(folder, "day.txt"), datetime.date.today().strftime("%d_%m_%y"))
    atomic.write_json(os.path.join(folder, "config.json"), spec.setting, indent=4)
    if spec.evaluate_on_test:
        _line(os.path.join(folder, f"test_accuracy_{tag(spec)}.txt"), arrays["test"])
    if "val" in arrays:
        _line(os.path.join(folder, f"val_accuracy_{tag(spec)}.txt"), arrays["val"])
    _line(os.path.join(folder, f"train_loss_{tag(spec)}.txt"), arrays["loss"])
    _line(os.path.join(folder, f"train_time_{tag(spec)}.txt"), [float(result.get("wall_time_s") or 0.0)])


# ------------------------------------------------------------------------------------ summaries


def _cell_key(spec, *, with_agg: bool = True) -> tuple:
    s = spec.setting
    dd = s["benchmark_config"].get("data_distribution", {"name": "iid"})
    key = (s["model"].get("dataset_name"), s["model"].get("name"), spec.num_honest, spec.f, spec.tolerated_f,
           dd.get("name", "iid"), _dist_param(spec), "_".join(p["name"] for p in s["pre_aggregators"]))
    return key + ((s["aggregator"]["name"],) if with_agg else ())


def _dist_param(spec):
    dd = spec.setting["benchmark_config"].get("data_distribution", {"name": "iid"})
    return None if dd.get("name", "iid") in ("iid", "extreme_niid") else dd.get("distribution_parameter", 1.0)


def _hyper(spec) -> tuple[float, float, float]:
    return (spec.lr, spec.momentum, spec.weight_decay)


def _mean(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(arrays), axis=0)


def summarize(results_directory: str, specs: Sequence, arrays: Sequence[Mapping[str, np.ndarray]],
              *, declared: bool, plots: bool = True) -> dict[str, Any]:
    """ByzFL's summaries of a finished grid (see the module docstring).

    Args:
      results_directory: where the runs' files are; `best_hyperparameters/` and `plots/` go there.
      specs: the runs (`strike_jax.byzfl.RunSpec`), in ByzFL's order.
      arrays: each run's `run_arrays`.
      declared: whether the config declares `tolerated_f` (ByzFL's file names differ).
      plots: draw the figures (matplotlib); the numbers are returned either way.

    Returns:
      {"hyperparameters": [...], "test_heatmaps": [...], "loss_heatmaps": [...],
       "best_defence_heatmaps": [...], "curves": [...]}: the numbers behind every file.
    """
    # Seeds pooled per (cell, hyper-parameters, attack): ByzFL averages over training x data seeds.
    pooled: dict[tuple, dict[str, list]] = {}
    attacks: dict[tuple, list[str]] = {}
    hypers: dict[tuple, list[tuple]] = {}
    for spec, arr in zip(specs, arrays):
        cell, hp, att = _cell_key(spec), _hyper(spec), spec.setting["attack"]["name"]
        for k, v in arr.items():
            pooled.setdefault((cell, hp, att), {}).setdefault(k, []).append(v)
        attacks.setdefault(cell, [])
        if att not in attacks[cell]:
            attacks[cell].append(att)
        hypers.setdefault(cell, [])
        if hp not in hypers[cell]:
            hypers[cell].append(hp)
    first = {_cell_key(s): s for s in reversed(specs)}

    # Max-min hyper-parameters on the validation accuracy.
    chosen: dict[tuple, tuple] = {}
    hp_out = []
    for cell, hps in hypers.items():
        have_val = all("val" in pooled[(cell, hp, a)] for hp in hps for a in attacks[cell])
        best, best_val = hps[0], -1.0
        steps_at: dict[str, float] = {}
        if have_val:
            for hp in hps:
                per_attack = {a: _mean(pooled[(cell, hp, a)]["val"]) for a in attacks[cell]}
                worst = min(float(np.nanmax(v)) for v in per_attack.values())
                if worst > best_val:
                    best, best_val = hp, worst
                    steps_at = {a: float(np.nanargmax(v)) * first[cell].eval_every for a, v in per_attack.items()}
            _write_hyper(results_directory, first[cell], best, steps_at)
        chosen[cell] = best
        hp_out.append({"cell": list(cell), "lr": best[0], "momentum": best[1], "weight_decay": best[2],
                       "by_validation": have_val, "min_over_attacks_val_acc": best_val if have_val else None,
                       "best_step": steps_at})

    def worst_test(cell):
        vals = [float(np.nanmax(_mean(pooled[(cell, chosen[cell], a)]["test"]))) for a in attacks[cell]]
        return min(vals)

    def worst_loss(cell):
        vals = [float(np.nanmin(_mean(pooled[(cell, chosen[cell], a)]["loss"]))) for a in attacks[cell]]
        return max(vals)

    # Heatmaps: one per (dataset, model, distribution, pre-aggregators, aggregator, honest, declared f).
    maps: dict[tuple, dict] = {}
    for cell in hypers:
        ds, model, honest, f, d, dname, dparam, pre, agg = cell
        group = (ds, model, dname, pre, agg, honest, d if declared else None)
        m = maps.setdefault(group, {"rows": [], "cols": [], "test": {}, "loss": {}})
        if dparam not in m["rows"]:
            m["rows"].append(dparam)
        if f not in m["cols"]:
            m["cols"].append(f)
        if spec_has_test(pooled, cell, chosen[cell], attacks[cell]):
            m["test"].setdefault(dparam, {})[f] = worst_test(cell)
        m["loss"].setdefault(dparam, {})[f] = worst_loss(cell)
    test_out, loss_out, best_out = [], [], []
    plots_dir = os.path.join(results_directory, "plots")
    best_maps: dict[tuple, dict] = {}
    for group, m in maps.items():
        ds, model, dname, pre, agg, honest, d = group
        rows, cols = list(reversed(m["rows"])), sorted(m["cols"])
        end = "tolerated_f_equal_real" if d is None else f"tolerated_f_{d}"
        stem = f"{ds}_{model}_{dname}_{pre}_{agg}_nb_honest_clients_{honest}_{end}"
        test_out.append({"file": f"test_{stem}.png", "rows": rows, "cols": cols,
                         "values": _table(m["test"], rows, cols)})
        loss_out.append({"file": f"train_loss_{stem}.png", "rows": rows, "cols": cols,
                         "values": _table(m["loss"], rows, cols)})
        b = best_maps.setdefault((ds, model, dname, pre, honest, d), {"rows": rows, "cols": cols, "values": {}})
        for r, by_f in m["test"].items():
            for c, v in by_f.items():
                cur = b["values"].setdefault(r, {}).get(c)
                b["values"][r][c] = v if cur is None else max(cur, v)
    for (ds, model, dname, pre, honest, d), b in best_maps.items():
        end = "tolerated_f_equal_real" if d is None else f"tolerated_f_{d}"
        best_out.append({"file": f"best_test_{ds}_{model}_{dname}_{pre}_nb_honest_clients_{honest}_{end}.png",
                         "rows": b["rows"], "cols": b["cols"], "values": _table(b["values"], b["rows"], b["cols"])})

    curves_out = []
    for cell in hypers:
        spec = first[cell]
        hp = chosen[cell]
        if not spec_has_test(pooled, cell, hp, attacks[cell]):
            continue
        x = eval_steps(spec.steps, spec.eval_every)
        lines = {}
        for a in attacks[cell]:
            runs = np.stack(pooled[(cell, hp, a)]["test"])
            lines[a] = {"mean": runs.mean(axis=0).tolist(),
                        "ci95": (1.96 * runs.std(axis=0) / math.sqrt(len(runs))).tolist(), "seeds": len(runs)}
        ds, model, honest, f, d, dname, dparam, pre, agg = cell
        name = (f"{ds}_{model}_n_{spec.num_clients}_f_{f}_d_{d}_{dname}_{dparam}_{agg}_{pre}_"
                f"lr_{hp[0]}_mom_{hp[1]}_wd_{hp[2]}_plot.png")
        curves_out.append({"file": name, "steps": x, "attacks": lines})

    summary = {"hyperparameters": hp_out, "test_heatmaps": test_out, "loss_heatmaps": loss_out,
               "best_defence_heatmaps": best_out, "curves": curves_out}
    atomic.write_json(os.path.join(results_directory, SUMMARY_JSON), summary)
    if plots:
        _draw(plots_dir, summary)
    return summary


def spec_has_test(pooled, cell, hp, atts) -> bool:
    return all("test" in pooled[(cell, hp, a)] for a in atts)


def _table(values: Mapping, rows: Sequence, cols: Sequence) -> list[list[float | None]]:
    return [[values.get(r, {}).get(c) for c in cols] for r in rows]


def _write_hyper(results_directory: str, spec, hp: tuple, steps_at: Mapping[str, float]) -> None:
    """ByzFL's `best_hyperparameters/hyperparameters/<cell>.txt` ([lr, momentum, wd], one a line)
    and `better_step/<cell>_<attack>.txt`, which its plotting functions read."""
    ds, model, honest, f, d, dname, dparam, pre, agg = _cell_key(spec)
    base = os.path.join(results_directory, "best_hyperparameters")
    stem = f"{ds}_{model}_n_{spec.num_clients}_f_{f}_d_{d}_{dname}_{dparam}_{pre}_{agg}"
    os.makedirs(os.path.join(base, "hyperparameters"), exist_ok=True)
    os.makedirs(os.path.join(base, "better_step"), exist_ok=True)
    atomic.write_text(os.path.join(base, "hyperparameters", stem + ".txt"),
                      "".join(f"{v:.18e}\n" for v in hp))
    for a, step in steps_at.items():
        atomic.write_text(os.path.join(base, "better_step", f"{stem}_{a}.txt"), f"{step:.18e}\n")


def _draw(plots_dir: str, summary: Mapping[str, Any]) -> None:
    from strike_jax import report

    plt = report.pyplot()
    if plt is None:
        return
    os.makedirs(plots_dir, exist_ok=True)

    def grid(h):
        return {r: {c: (math.nan if v is None else v) for c, v in zip(h["cols"], row)}
                for r, row in zip(h["rows"], h["values"])}

    for kind, scale, label in (("test_heatmaps", 100.0, "worst-case test accuracy (%)"),
                               ("best_defence_heatmaps", 100.0, "best defence's worst-case test accuracy (%)")):
        for h in summary[kind]:
            vals = {r: {c: v * scale for c, v in row.items()} for r, row in grid(h).items()}
            report.heatmap(os.path.join(plots_dir, h["file"]), h["file"][:-4], h["rows"], h["cols"], vals,
                           row_label=str, col_label=lambda c: f"f={c}", cbar_label=label)
    for h in summary["loss_heatmaps"]:
        # Coloured by -loss (green: low loss), each cell printed as the loss itself.
        vals = {r: {c: -v for c, v in row.items()} for r, row in grid(h).items()}
        finite = [v for row in vals.values() for v in row.values() if math.isfinite(v)]
        labels = {r: {c: f"{-v:.2f}" for c, v in row.items() if math.isfinite(v)} for r, row in vals.items()}
        report.heatmap(os.path.join(plots_dir, h["file"]), h["file"][:-4], h["rows"], h["cols"], vals,
                       labels=labels, row_label=str, col_label=lambda c: f"f={c}",
                       vmin=min(finite, default=-1.0), vmax=max(finite, default=0.0),
                       cbar_label="- worst-case lowest training loss")
    for c in summary["curves"]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for a, line in c["attacks"].items():
            m, e = np.array(line["mean"]), np.array(line["ci95"])
            ax.plot(c["steps"], m, marker="o", markersize=3, label=a)
            ax.fill_between(c["steps"], m - e, m + e, alpha=0.25)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(c["file"][:-9], fontsize=7)
        report.save_figure(fig, os.path.join(plots_dir, c["file"]))


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


__all__ = ["SUMMARY_JSON", "eval_steps", "run_arrays", "run_dir", "summarize", "tag", "write_run"]
