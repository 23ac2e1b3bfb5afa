"""Worst case over attacks, per defence (the ByzFL protocol): every defence of the library against
every attack, each defence's worst accuracy and the attack that causes it (issue 11, part 3).

Rows are every rule of the registry (`strike_jax.registry.names("rule")`), columns every attack of
the registry, each at its registered defaults, with these variants and exclusions:

* `none` is not an attack: it is run as the reference column ("no attack") and is never a worst case.
* STRIKE: its cell is its lowest over a small ν grid (default {0.5, 1, 2}), as in Table 1.
* Fang: two columns, the trim attack (`target="trmean"`; `target="median"` is the same attack, so
  it is not run twice) and the Krum attack (`target="krum"`).
* Gradient, Opt-LIE, Opt-IPM (issue 10's white-box optimisers, a search through the defence every
  round) are columns only when named with `--attacks`.
* AGR-tailored (`perturbation="std"`): it attacks the round's real defence (the pipeline hands the
  attack its downstream chain), so one column is the defence-specific attack for every row.
* MoNNA trusts the last row (`idx = n - 1`), not its default `idx=0`: the simulation's Byzantine
  clients are ids `0 .. f-1` and the rows are in client order, so row 0 is a Byzantine client and
  MoNNA would trust the attacker (ByzFL's own order puts the honest clients first).
* FLTrust gets its root set and FoolsGold its client ids from the simulation, like any rule.
* A rule the setting cannot run is left out, and the table says why: a rule that refuses the
  setting's number of Byzantine clients (at Fashion-MNIST's n = 50, f = 10, MDA and SMEA, whose
  exact subset search the library caps, refuse f above 3). Rules and attacks named explicitly with
  `--defences` / `--attacks` are never left out: a refusal then stops the script (exit code 2).

A cell is the project's number (README): each run's best test accuracy over the rounds, mean over
seeds. A defence's worst case is its lowest cell over the attacks; a cell where some seed diverged
(the aggregate became non-finite, e.g. Mean under NonFinite) counts as worse than any accuracy.
Every `--preagg` pre-aggregation goes in front of every rule (e.g. `--preagg arc`, `--preagg nnm`).

  python -m experiments.worst_case                             # digits: 20 rounds, 1 seed, 340 runs
  python -m experiments.worst_case --quick                     # 5 rounds, STRIKE at nu = 1; experiments/scratch
  python -m experiments.worst_case --dataset fashion_mnist --rounds 10
  python -m experiments.worst_case --defences median,krum --attacks lie,fang_krum --rounds 2

Cost: one compiled program per cell (attack x rule; seeds and STRIKE's ν share it), so compiling,
not the rounds, dominates at local scale: the digits default took ~90 min on the shared 2-core
development machine (load average 9-20), a third of it AGR-tailored against SMEA, whose λ search
runs SMEA's exact subset search at every step (~80-110 s per round there). `--quick` saves the
rounds only; to cut the compiles, name fewer `--defences` / `--attacks`.

Outputs: experiments/results/worst_case_<dataset>[_<preagg>].md / .json / .png (the heatmap:
defences x attacks, accuracy, each defence's worst attack outlined).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Hashable, Mapping, Sequence

from strike_jax import registry, report, sweep
from strike_jax.config import Config
from strike_jax.errors import InputError

#: STRIKE's default ν grid here (its cell is the lowest); `--nu-grid` changes it.
NU_GRID = (0.5, 1.0, 2.0)
#: `--quick`: rounds and ν grid (unless given), results under experiments/scratch.
QUICK_ROUNDS = 5
QUICK_NU_GRID = (1.0,)
#: A rule "breaks" under an attack when its cell is within this many points of chance accuracy
#: (or the run diverged); it is "degraded" when the cell is this many points below its no-attack cell.
BROKEN_ABOVE_CHANCE = 0.10
DEGRADED_DROP = 0.20

#: Attacks run in more than one form: label -> (registry name, hyper-parameters).
SPLIT_ATTACKS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "fang": {"fang": ("fang", {"target": "trmean"}), "fang_krum": ("fang", {"target": "krum"})},
}
#: Rule hyper-parameters that differ from the registry's defaults in this setting (see the docstring).
RULE_PARAMS = {"monna": lambda base: {"idx": base.clients_per_round - 1}}
#: Attacks that run an optimisation through the defence every round (issue 10's white-box attacks):
#: columns only when named with `--attacks` (each is a search per round, and the committed table
#: predates them).
OPT_IN = ("gradient", "opt_lie", "opt_ipm")
VARIANT_DISPLAY = {"fang": "Fang (trim)", "fang_krum": "Fang (Krum)"}


def attack_variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every column: `{label: (attack name, hyper-parameters)}`, in registry order (see the module
    docstring; `none`, the reference, is not among them)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in registry.names("attack"):
        out.update(SPLIT_ATTACKS.get(name, {name: (name, {})}))
    return out


def default_attacks() -> tuple[str, ...]:
    """The columns run when `--attacks` is not given: every variant but `OPT_IN`."""
    return tuple(k for k, (name, _) in attack_variants().items() if name not in OPT_IN)


def label(key: Hashable) -> str:
    return VARIANT_DISPLAY.get(key, report.display(key)) if isinstance(key, str) else str(key)


def build_parser():
    variants = attack_variants()
    p = sweep.make_parser(__file__, __doc__, paper_dataset="cifar10")
    p.add_argument("--attacks", type=sweep.names_type(tuple(variants)),
                   help=f"comma-separated (default: all but {','.join(OPT_IN)}: {','.join(default_attacks())})")
    p.add_argument("--defences", "--defenses", dest="defences", type=sweep.names_type("rule"),
                   help="comma-separated (default: every registered rule the setting can run)")
    p.add_argument("--nu-grid", dest="nu_grid", type=sweep.parse_floats,
                   help="STRIKE's nu values; its cell is the lowest (default: 0.5,1,2)")
    p.add_argument("--preagg", type=sweep.names_type(registry.names("preaggregator")), default=(),
                   help="pre-aggregators in front of every rule, comma-separated (default: none)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_ROUNDS} rounds and STRIKE at nu = 1 (unless --rounds / --nu-grid are given), "
                        "results under experiments/scratch (unless --results-dir is given); compiling (one "
                        "program per cell) still dominates: name fewer --defences / --attacks to cut it")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        if "rounds" not in vars(args):  # not given (Config options are absent unless given)
            args.rounds = QUICK_ROUNDS
        if args.nu_grid is None:
            args.nu_grid = QUICK_NU_GRID
        if args.results_dir == parser.get_default("results_dir"):
            args.results_dir = os.path.join(args.experiments_dir, "scratch")
    if args.nu_grid is None:
        args.nu_grid = NU_GRID
    if args.seeds is None and args.scale == "local":
        args.seeds = (0,)  # one seed: 20 rules x 16 attacks is already ~350 runs
    return sweep.finish_args(args)


def runnable(config: Config) -> str | None:
    """None when the server pipeline accepts `config`, else the first line of its refusal."""
    from strike_jax.simulation import check_config

    try:
        check_config(config)
    except InputError as e:
        return str(e).splitlines()[0]
    return None


def worst_attack(cells: Mapping[Hashable, Mapping[str, Any]]) -> Hashable | None:
    """The key of the worst cell: a cell with a diverged seed before any other (the lowest mean among
    those), else the lowest mean (ties: the first key); None when no cell has a value or diverged."""
    diverged = {k: c for k, c in cells.items() if c.get("diverged")}
    if diverged:
        k = report.lowest(diverged)
        return next(iter(diverged)) if k is None else k
    return report.lowest(cells)


def verdicts(cell: Mapping[str, Any], ref: Mapping[str, Any] | None, chance: float) -> list[str]:
    """"broken" (diverged, or within `BROKEN_ABOVE_CHANCE` of chance) and/or "degraded" (at least
    `DEGRADED_DROP` below the no-attack cell `ref`)."""
    out = []
    m = cell.get("mean")
    if cell.get("diverged") or (m is not None and not math.isnan(m) and m <= chance + BROKEN_ABOVE_CHANCE):
        out.append("broken")
    if (ref is not None and m is not None and not math.isnan(m) and ref.get("mean") is not None
            and not math.isnan(ref["mean"]) and ref["mean"] - m >= DEGRADED_DROP):
        out.append("degraded")
    return out


def cell_text(cell: Mapping[str, Any] | None) -> str:
    """`report.format_cell`, but "diverged" for a cell whose runs diverged before any evaluation."""
    if cell is not None and cell.get("diverged") and (cell["mean"] is None or math.isnan(cell["mean"])):
        return "diverged"
    return report.format_cell(cell)


def summary_table(title: str, defences: Sequence[str], worst: Mapping[str, Hashable | None],
                  cells: Mapping[Hashable, Mapping[str, Mapping[str, Any]]]) -> str:
    """Defence | no attack | worst-case accuracy | worst attack | drop, rows as given."""
    lines = [f"### {title}", "", "| defence | no attack | worst case | worst attack | drop (points) |",
             "|---|---|---|---|---|"]
    for d in defences:
        ref = cells.get("none", {}).get(d)
        a = worst[d]
        cell = cells[a][d] if a is not None else None
        drop = "—"
        if cell is not None and ref is not None and not math.isnan(cell["mean"]) and not math.isnan(ref["mean"]):
            drop = f"{100 * (ref['mean'] - cell['mean']):.1f}"
        what = "—" if a is None else label(a) + (f" (ν={cell['nu']:g})" if cell.get("nu") is not None else "")
        lines.append(f"| {report.display(d)} | {cell_text(ref)} | {cell_text(cell)} | {what} "
                     f"| {drop} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    preagg = tuple(args.preagg)
    base = sweep.base_config(args, preaggregation=preagg)
    variants = attack_variants()
    attacks = tuple(args.attacks) if args.attacks else default_attacks()
    # The columns' configs for one rule and seed (STRIKE once per nu), labelled.
    def configs_for(defence: str, seed: int) -> list[tuple[str, Config]]:
        rule = {"defence_params": RULE_PARAMS[defence](base)} if defence in RULE_PARAMS else {}
        out = [("none", sweep.attack_config(base, "none", defence, seed=seed, **rule))]
        for a in attacks:
            name, params = variants[a]
            if name == "strike":
                out += [(a, sweep.attack_config(base, "strike", defence, nu=nu, seed=seed, **rule))
                        for nu in args.nu_grid]
            else:
                out.append((a, base.replace(attack=name, attack_params=dict(params), defence=defence, seed=seed,
                                            **rule)))
        return out

    excluded: dict[str, str] = {}
    if args.defences:
        defences = tuple(args.defences)
    else:
        defences = ()
        for d in registry.names("rule"):
            why = next((w for _, c in configs_for(d, args.seeds[0]) if (w := runnable(c)) is not None), None)
            if why is None:
                defences += (d,)
            else:
                excluded[d] = why
                print(f"{args.script}: leaving out {d}: {why}", file=sys.stderr, flush=True)
    if not defences:
        sweep.usage_error(args.script, "no defence can run in this setting: " + "; ".join(excluded.values()))
    suffix = "".join("_" + p for p in preagg)
    stem = report.result_stem(args, "worst_case", suffix)
    spec = {"scale": args.scale, "dataset": args.dataset, "seeds": list(args.seeds), "nu_grid": list(args.nu_grid),
            "attacks": {a: {"attack": variants[a][0], "params": variants[a][1]} for a in attacks},
            "defences": list(defences), "excluded": excluded, "preaggregation": list(preagg), "base_config": base,
            "rule_params": {d: RULE_PARAMS[d](base) for d in defences if d in RULE_PARAMS}}
    report.check_results(stem, spec, args)

    labelled = [lc for d in defences for s in args.seeds for lc in configs_for(d, s)]
    configs = [c for _, c in labelled]
    results, stats = sweep.run_configs(configs, args)

    # Cells per column: `attack_cells` on each column's runs (STRIKE: the lowest over nu).
    cells: dict[Hashable, dict[str, dict]] = {}
    for col in ("none",) + attacks:
        idx = [i for i, (lab, _) in enumerate(labelled) if lab == col]
        by_attack = report.attack_cells([configs[i] for i in idx], [results[i] for i in idx])
        cells[col] = next(iter(by_attack.values()))
    worst = {d: worst_attack({a: cells[a][d] for a in attacks}) for d in defences}

    from strike_jax.simulation import load_dataset

    chance = 1.0 / load_dataset(base).num_classes

    def worst_mean(d: str) -> tuple[int, float]:
        c = cells[worst[d]][d] if worst[d] is not None else None
        if c is None:
            return (0, -math.inf)
        return (0 if c.get("diverged") else 1, -math.inf if math.isnan(c["mean"]) else c["mean"])

    ranked = sorted(defences, key=worst_mean, reverse=True)  # most robust first; ties keep registry order
    setting = report.describe(base, args)
    pre = f" with {'+'.join(report.display(p) for p in preagg)} in front" if preagg else ""
    md = summary_table(f"Worst case over {len(attacks)} attacks, per defence{pre}: {setting}", ranked, worst, cells)
    md += ("\nWorst case: the lowest cell over the attacks (a diverged run counts as worse than any accuracy); "
           "rows from the most to the least robust.\n\n")
    md += report.markdown_table(f"Every attack x every defence{pre} (bold: each defence's worst attack by mean)",
                                "attack", ("none",) + attacks, list(ranked), cells, row_label=label,
                                reference_rows=("none",))
    md += report.strike_nu_note(cells, ranked, args.nu_grid)
    md += "\nn/a†: every seed diverged (non-finite aggregate) before its first evaluation.\n"
    found: dict[str, list[str]] = {"broken": [], "degraded": []}
    for d in ranked:
        for a in attacks:
            for v in verdicts(cells[a][d], cells["none"].get(d), chance):
                found[v].append(f"{report.display(d)} under {label(a)} ({cell_text(cells[a][d])})")
    md += (f"\n**Broken** (within {100 * BROKEN_ABOVE_CHANCE:.0f} points of chance = {100 * chance:.0f}%, or "
           f"diverged): {'; '.join(found['broken']) or 'none'}.\n\n"
           f"**Degraded** (at least {100 * DEGRADED_DROP:.0f} points below the rule's no-attack accuracy): "
           f"{'; '.join(found['degraded']) or 'none'}.\n")
    if excluded:
        md += "\nLeft out (the setting cannot run them): " + "; ".join(
            f"{report.display(d)}: {why}" for d, why in excluded.items()) + "\n"
    md += report.run_footer(stats)
    report.write_results(stem, md, {**spec, "experiment": "worst case over attacks", "setting": setting,
                                    "chance": chance, "cells": cells, "worst": worst, "ranking": list(ranked),
                                    "broken": found["broken"], "degraded": found["degraded"], "stats": stats})
    if args.plot:
        cols = ("none",) + attacks
        values = {d: {a: 100 * cells[a][d]["mean"] for a in cols} for d in ranked}
        labels = {d: {a: "div" for a in cols if cells[a][d].get("diverged")} for d in ranked}
        report.heatmap(stem + ".png", f"Worst case over attacks{pre}: {args.dataset}, {base.rounds} rounds, "
                       f"seeds {','.join(map(str, args.seeds))} (outlined: each defence's worst)",
                       list(ranked), list(cols), values, marked=worst, labels=labels, col_label=label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
