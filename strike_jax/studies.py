"""Whole experiments: configs -> runs -> cells -> table, JSON and figure (SPEC §8).

`attack_table` (Tables 1 and 2: attacks x defences), `vary_experiment` (Figures 8-10: every attack
against one defence as one setting varies) and `grid_study` (`strike-jax sweep`: any grid of
`Config` fields and hyper-parameters) each check that they will not replace a result computed with
another setting (`report.check_results`), run or reuse every config (`sweep.run_configs`:
resumable, one run directory per run id), then write the tables through `strike_jax.report`'s
writers (`<stem>.md`, `<stem>.json`, and a figure where there is one).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Hashable, Mapping, Sequence

from strike_jax import options, report, sweep
from strike_jax.config import Config


def attack_table(args: argparse.Namespace, base: Config, *, name: str, what: str, attacks: Sequence[str],
                 defences: Sequence[str], nu_grid: Sequence[float], suffix: str = "",
                 col_label: Callable[[Hashable], str] = report.display, spec: Mapping[str, Any] | None = None) -> int:
    """Attacks x defences (Tables 1 and 2): every (attack, defence, seed), STRIKE for each `nu`; a
    table (rows: attacks, "none" a reference row; columns: defences), its JSON and a bar plot.

    Args:
      args: the parsed options (`strike_jax.sweep.make_parser`).
      base: the starting config.
      name, suffix: the result files' stem (`<results-dir>/<name>_<dataset><suffix>.*`).
      what: the paper's table, for captions ("Table 1").
      attacks, defences, nu_grid: the grid.
      col_label: a column header for a defence.
      spec: more identifying entries of the result JSON (e.g. the pre-aggregation).

    Returns:
      0 (the process's exit code).
    """
    stem = report.result_stem(args, name, suffix)
    setting = report.describe(base, args)
    spec = {"scale": args.scale, "dataset": args.dataset, "seeds": list(args.seeds), "nu_grid": list(nu_grid),
            "attacks": list(attacks), "defences": list(defences), "base_config": base, **(spec or {})}
    report.check_results(stem, spec, args)
    configs = sweep.grid(base, attacks, defences, args.seeds, nu_grid=nu_grid)
    results, stats = sweep.run_configs(configs, args)
    cells = report.attack_cells(configs, results)
    md = report.markdown_table(f"{what}: {setting}", "attack", list(attacks), list(defences), cells,
                        col_label=col_label, reference_rows=("none",))
    md += report.strike_nu_note(cells, defences, nu_grid) + report.run_footer(stats)
    report.write_results(stem, md, {**spec, "experiment": what, "setting": setting, "cells": cells, "stats": stats})
    if args.plot:
        report.bar_plot(stem + ".png", f"{what}: {args.dataset} ({args.scale} scale)",
                 [a for a in attacks if a != "none"], list(defences), cells)
    return 0


def vary_experiment(args: argparse.Namespace, base: Config, *, name: str, figure: str, xlabel: str,
                    values: Sequence[Any], make: Callable[[Config, Any], Config], label: Callable[[Any], str] = str,
                    attacks: Sequence[str] = sweep.ATTACKS, defence: str = "dnc", nu: float = 1.0,
                    setting: str | None = None) -> int:
    """Every attack (STRIKE at one `nu`) against one defence for each value of a setting (Figures
    8-10): a table (rows: attacks, columns: values), its JSON and a line plot (one line per attack).

    Args:
      args: the parsed options (`strike_jax.sweep.make_parser`).
      base: the starting config.
      name: the result files' stem (`<results-dir>/<name>_<dataset>.*`).
      figure: the paper's figure, for captions.
      xlabel: the varied setting, in words.
      values: its values; `make(base, value)` returns the config for one value (before the attack,
        defence and seed are set).
      label: a column / tick label for a value.
      setting: the caption's description of the setting (default: `describe(base, args)`).

    Returns:
      0 (the process's exit code).
    """
    setting = setting or report.describe(base, args)
    cols = [label(v) for v in values]
    stem = report.result_stem(args, name)
    spec = {"scale": args.scale, "dataset": args.dataset, "seeds": list(args.seeds), "attacks": list(attacks),
            "defence": defence, "nu": nu, "values": cols, "configs": {label(v): make(base, v) for v in values}}
    report.check_results(stem, spec, args)
    configs, column = [], []
    for v in values:
        for c in sweep.grid(make(base, v), attacks, (defence,), args.seeds, nu_grid=(nu,)):
            configs.append(c)
            column.append(label(v))
    results, stats = sweep.run_configs(configs, args)
    col_of = {id(c): col for c, col in zip(configs, column)}
    cells: dict[str, dict[str, dict]] = {}
    for (a, col), runs in report.collect(configs, results, lambda c: (c.attack, col_of[id(c)])).items():
        cells.setdefault(a, {})[col] = report.make_cell(runs)
    title = f"{figure}: all attacks vs {report.display(defence)} (STRIKE ν={nu:g}) as {xlabel} varies; {setting}"
    md = report.markdown_table(title, "attack", list(attacks), cols, cells) + report.run_footer(stats)
    report.write_results(stem, md, {**spec, "experiment": figure, "setting": setting, "varied": xlabel, "cells": cells,
                             "stats": stats})
    if args.plot:
        report.line_plot(stem + ".png", f"{figure}: vs {report.display(defence)}, {args.dataset} ({args.scale} scale)",
                  xlabel, cols, {a: cells.get(a, {}) for a in attacks}, xticklabels=cols)
    return 0


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{'ν' if k == 'nu' else k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(params.items()))


def attack_label(config: Config) -> str:
    """A table row of `grid_study`: the attack and its hyper-parameters (`STRIKE (ν=0.5)`)."""
    p = _params_text(config.attack_params)
    return report.display(config.attack) + (f" ({p})" if p else "")


def defence_label(config: Config) -> str:
    """A table column of `grid_study`: pre-aggregators, the rule and their hyper-parameters
    (`NNM+Bucketing(s=3)+CClip (tau=5)`)."""
    pres = []
    for name in config.preaggregation:
        p = _params_text(config.preaggregation_params.get(name, {}))
        pres.append(report.display(name) + (f"({p})" if p else ""))
    p = _params_text(config.defence_params)
    return "+".join(pres + [report.display(config.defence) + (f" ({p})" if p else "")])


#: Fields a `grid_study` table has as rows, columns or cells (seeds); any other varied field
#: splits the results into one table per value.
_TABLE_FIELDS = ("attack", "attack_params", "defence", "defence_params", "preaggregation", "preaggregation_params",
                 "seed")


def grid_study(args: argparse.Namespace, base: Config, configs: Sequence[Config], axes: Sequence[options.Axis], *,
               name: str = "sweep") -> int:
    """Any grid of configs (`strike-jax sweep`): tables of attacks (rows) x defences (columns), a
    cell per (attack, defence) over seeds (`report.make_cell`), one table per value of every other
    field the grid varies; `<args.results_dir>/<name>.md` and `.json` (also every run's best
    accuracy and run id). `args.dry_run` lists the runs (run id, done or to run, setting) and stops.

    Args:
      args: `results_dir`, `out_dir` (run directories), `script`, `root`, `dry_run`, `quiet`,
        `overwrite`.
      base: the config the grid starts from (recorded: a later call with another base or grid is
        refused unless `--overwrite`).
      configs: the runs (`options.grid_configs(base, axes)`).
      axes: the grid, recorded in the result.
      name: the result files' stem.

    Returns:
      0 (the process's exit code).
    """
    stem = os.path.join(args.results_dir, name)
    spec = {"grid": {a.key: list(a.values) for a in axes}, "base_config": base}
    report.check_results(stem, spec, args)
    if args.dry_run:
        sweep.check_configs(configs, args.script)
        for c in configs:
            done = "done" if sweep.finished(c, args.out_dir) else "to run"
            print(f"{sweep.run_id(c)}  {done:6s}  {sweep.run_setting(c)}", flush=True)
    results, stats = sweep.run_configs(configs, args)
    default = base.to_dict()
    varied = sorted({k for c in configs for k, v in c.to_dict().items() if v != default[k]}
                    | {a.name for a in axes if a.kind == "field"})
    split = [k for k in varied if k not in _TABLE_FIELDS]

    def group(c: Config) -> str:
        return ", ".join(f"{k}={getattr(c, k)}" for k in split)

    cells: dict[str, dict[str, dict[str, dict]]] = {}
    order: dict[str, tuple[list[str], list[str]]] = {}
    for c in configs:
        rows, cols = order.setdefault(group(c), ([], []))
        for lst, label in ((rows, attack_label(c)), (cols, defence_label(c))):
            if label not in lst:
                lst.append(label)
    for (g, r, col), runs in report.collect(configs, results,
                                            lambda c: (group(c), attack_label(c), defence_label(c))).items():
        cells.setdefault(g, {}).setdefault(r, {})[col] = report.make_cell(runs)
    seeds = sorted({c.seed for c in configs})
    grid_text = "; ".join(f"{a.key}={','.join(str(v) for v in a.values)}" for a in axes) or "none"
    setting = (f"{base.dataset} ({base.model}), N={base.num_clients} clients, n={base.clients_per_round} per round, "
               f"{base.rounds} rounds, seeds {','.join(map(str, seeds))}; grid: {grid_text}")
    md = ""
    none_rows = tuple(attack_label(c) for c in configs if c.attack == "none")
    for g, (rows, cols) in order.items():
        title = f"strike-jax sweep: {setting}" + (f"; {g}" if g else "")
        md += report.markdown_table(title, "attack", rows, cols, cells[g], row_label=str, col_label=str,
                                    reference_rows=none_rows) + "\n"
    md += report.run_footer(stats)
    run_records = [{"run_id": sweep.run_id(c), "config": c.non_default(), "best_accuracy": r.get("best_accuracy"),
             "diverged": bool(r.get("diverged"))} for c, r in zip(configs, results)]
    tables = {g: {"rows": rows, "cols": cols, "cells": cells[g]} for g, (rows, cols) in order.items()}
    report.write_results(stem, md, {**spec, "experiment": "strike-jax sweep", "setting": setting, "split_by": split,
                                    "tables": tables, "runs": run_records, "stats": stats})
    return 0
