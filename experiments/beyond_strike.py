"""Beyond the paper (issue 23): what stops STRIKE? Defences aimed at skew and at uniformity.

The paper leaves countermeasures to future work. STRIKE sends `f` identical vectors hidden in the
skewed part of the honest distribution; two kinds of defence might stop it:

* GAS (Liu et al., ICML 2023): scores the clients on `p` random coordinate groups against a base
  rule's aggregate of each group (Krum, Bulyan), built for heterogeneous data;
* the uniformity pre-aggregator (`aggregators.uniformity`, in the spirit of ProDiGy's "suspicious
  uniformity"): replaces up to `f` rows that have a near-twin (much closer than the honest spread)
  by the mean of the others, alone (`uniformity + mean`) and in front of DnC and Median;

against STRIKE, the diverse STRIKE (`strike_diverse`: `f` distinct vectors inside the skewed set,
each within the paper's constraint, so the uniformity test cannot simply collapse them) and the
strongest baselines (LIE, IPM, MinMax), with DnC, Median and Multi-Krum as the reference defences.
A cell is each run's best test accuracy over the rounds, mean ± std over seeds; STRIKE's and the
diverse STRIKE's cells are their lowest over the `nu` grid (App. D.1). The no-attack row is the
honest reference of each defence. A short finding, computed from the numbers, closes the file.

  python -m experiments.beyond_strike --seeds 3                  # digits (MLP): beyond_strike_digits
  python -m experiments.beyond_strike --dataset fashion_mnist --seeds 3 --rounds 30
  python -m experiments.beyond_strike --nu-grid 1.0 --seeds 1 --results-dir /tmp/quick   # quick

Outputs: experiments/results/beyond_strike_<dataset>.md / .json / .png.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Hashable, Mapping, Sequence

from strike_jax import report, sweep
from strike_jax.config import Config

#: Attacks (rows): "none" is the honest reference row.
ATTACKS = ("strike", "strike_diverse", "lie", "ipm", "minmax")
#: Attacks whose cell is the lowest over the `nu` grid.
NU_ATTACKS = ("strike", "strike_diverse")
NU_GRID = (0.5, 1.0, 2.0)

#: Defences (columns): `key: (rule, rule hyper-parameters, pre-aggregators)`.
DEFENCES: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "dnc": ("dnc", {}, ()),
    "median": ("median", {}, ()),
    "multikrum": ("multikrum", {}, ()),
    "gas_krum": ("gas", {"base": "krum"}, ()),
    "gas_bulyan": ("gas", {"base": "bulyan"}, ()),
    "uniformity": ("mean", {}, ("uniformity",)),
    "uniformity_dnc": ("dnc", {}, ("uniformity",)),
    "uniformity_median": ("median", {}, ("uniformity",)),
}

DISPLAY = {"strike_diverse": "STRIKE (diverse)", "gas_krum": "GAS (Krum)", "gas_bulyan": "GAS (Bulyan)",
           "uniformity": "Uniformity", "uniformity_dnc": "Uniformity + DnC",
           "uniformity_median": "Uniformity + Median"}


def label(key: Hashable) -> str:
    return DISPLAY.get(key, report.display(key)) if isinstance(key, str) else str(key)


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="cifar10")
    p.add_argument("--attacks", type=sweep.names_type("attack"), default=ATTACKS,
                   help=f"comma-separated (default: {','.join(ATTACKS)}; the no-attack row is always run)")
    p.add_argument("--defences", "--defenses", dest="defences", type=sweep.names_type(tuple(DEFENCES)),
                   default=tuple(DEFENCES), help=f"comma-separated (default: {','.join(DEFENCES)})")
    p.add_argument("--nu-grid", dest="nu_grid", type=sweep.parse_floats, default=NU_GRID,
                   help="nu values of STRIKE and the diverse STRIKE; their cell is the lowest (default 0.5,1,2)")
    p.add_argument("--spread", type=float, default=0.5,
                   help="the diverse STRIKE's spread in [0, 1] (default 0.5)")
    p.add_argument("--gas-p", dest="gas_p", type=int, default=1000,
                   help="GAS's number of coordinate groups (default 1000, the authors' code)")
    p.add_argument("--tau", type=float, default=0.1, help="the uniformity test's threshold (default 0.1)")
    return p


def configs_for(base: Config, attacks: Sequence[str], defences: Sequence[str], seeds: Sequence[int],
                nu_grid: Sequence[float], *, spread: float, gas_p: int, tau: float) -> list[tuple[str, Config]]:
    """Every (defence label, config): each attack (the `nu` ones once per `nu`) and seed."""
    out = []
    for d in defences:
        rule, params, pre = DEFENCES[d]
        params = dict(params, p=gas_p) if rule == "gas" else dict(params)
        pre_params = {"uniformity": {"tau": tau}} if "uniformity" in pre else {}
        for a in ("none",) + tuple(attacks):
            for nu in (nu_grid if a in NU_ATTACKS else (None,)):
                ap = {} if nu is None else {"nu": float(nu)}
                if a == "strike_diverse":
                    ap["spread"] = float(spread)
                for s in seeds:
                    out.append((d, base.replace(attack=a, attack_params=ap, defence=rule, defence_params=params,
                                                preaggregation=pre, preaggregation_params=pre_params, seed=s)))
    return out


def cells_of(labelled: Sequence[tuple[str, Config]], results: Sequence[Mapping[str, Any]]) -> dict:
    """`cells[attack][defence label]`; a `nu` attack's cell is its lowest mean over `nu` (with
    `nu` and `per_nu`)."""
    configs = [c for _, c in labelled]
    col = {id(c): d for d, c in labelled}
    groups = report.collect(configs, results, lambda c: (c.attack, col[id(c)], c.attack_params.get("nu")))
    by: dict = {}
    for (a, d, nu), runs in groups.items():
        by.setdefault(a, {}).setdefault(d, {})[nu] = report.make_cell(runs)
    cells: dict = {}
    for a, per_d in by.items():
        for d, per_nu in per_d.items():
            if a not in NU_ATTACKS:
                cells.setdefault(a, {})[d] = per_nu[None]
                continue
            per_nu = dict(sorted(per_nu.items()))
            best = report.lowest(per_nu)
            best = next(iter(per_nu)) if best is None else best
            cells.setdefault(a, {})[d] = dict(per_nu[best], nu=best,
                                              per_nu={f"{nu:g}": c for nu, c in per_nu.items()})
    return cells


def _pct(cell: Mapping[str, Any] | None) -> float:
    if cell is None or cell.get("mean") is None or math.isnan(cell["mean"]):
        return math.nan
    return 100.0 * cell["mean"]


def findings(cells: Mapping, attacks: Sequence[str], defences: Sequence[str]) -> str:
    """A few sentences computed from the cells: per defence its honest accuracy and the attack
    that hurts it most (and by how much); which defence stops each attack best; STRIKE vs the
    diverse STRIKE on the uniformity defences."""
    lines = ["", "#### Finding (computed from the table)", ""]
    for d in defences:
        honest = _pct(cells.get("none", {}).get(d))
        hit = {a: _pct(cells.get(a, {}).get(d)) for a in attacks}
        hit = {a: v for a, v in hit.items() if not math.isnan(v)}
        if not hit:
            continue
        worst = min(hit, key=hit.get)
        lines.append(f"* {label(d)}: {honest:.1f}% without attack; the strongest attack is {label(worst)} "
                     f"({hit[worst]:.1f}%, {hit[worst] - honest:+.1f} points from the honest run).")
    for a in attacks:
        vals = {d: _pct(cells.get(a, {}).get(d)) for d in defences}
        vals = {d: v for d, v in vals.items() if not math.isnan(v)}
        if not vals:
            continue
        best = max(vals, key=vals.get)
        worst = min(vals, key=vals.get)
        lines.append(f"* {label(a)}: best stopped by {label(best)} ({vals[best]:.1f}%), least by {label(worst)} "
                     f"({vals[worst]:.1f}%).")
    if "strike" in attacks and "strike_diverse" in attacks:
        for d in defences:
            if not d.startswith(("uniformity", "gas")):
                continue
            s, v = _pct(cells.get("strike", {}).get(d)), _pct(cells.get("strike_diverse", {}).get(d))
            if not (math.isnan(s) or math.isnan(v)):
                lines.append(f"* {label(d)}: STRIKE {s:.1f}% vs the diverse STRIKE {v:.1f}% ({v - s:+.1f} points).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    if not 0.0 <= args.spread <= 1.0:
        sweep.usage_error(args.script, f"--spread {args.spread!r} is not allowed; allowed: a number in [0, 1]")
    attacks = tuple(a for a in args.attacks if a != "none")
    defences = tuple(args.defences)
    base = sweep.base_config(args)
    stem = report.result_stem(args, "beyond_strike")
    setting = report.describe(base, args)
    spec = {"scale": args.scale, "dataset": args.dataset, "seeds": list(args.seeds), "nu_grid": list(args.nu_grid),
            "attacks": list(attacks), "defences": {d: list(DEFENCES[d]) for d in defences},
            "spread": args.spread, "gas_p": args.gas_p, "tau": args.tau, "base_config": base}
    report.check_results(stem, spec, args)
    try:
        labelled = configs_for(base, attacks, defences, args.seeds, args.nu_grid, spread=args.spread,
                               gas_p=args.gas_p, tau=args.tau)
    except (TypeError, ValueError) as e:  # e.g. a Config that does not accept the uniformity pre-aggregator
        sweep.usage_error(args.script, str(e))
    results, stats = sweep.run_configs([c for _, c in labelled], args)
    cells = cells_of(labelled, results)
    rows = list(attacks) + ["none"]
    grid = "{" + ", ".join(f"{v:g}" for v in args.nu_grid) + "}"
    md = report.markdown_table(f"Beyond STRIKE: {setting}", "attack", rows, list(defences), cells,
                               row_label=label, col_label=label, reference_rows=("none",))
    md += (f"\nSTRIKE's and the diverse STRIKE's (spread {args.spread:g}) cells are their lowest mean over "
           f"ν ∈ {grid}; the chosen ν: " + "; ".join(
               f"{label(a)}: " + ", ".join(f"{label(d)} ν={cells[a][d]['nu']:g}"
                                           for d in defences if d in cells.get(a, {}))
               for a in NU_ATTACKS if a in cells) + ".\n")
    md += (f"\nGAS: p={args.gas_p} coordinate groups (chunks of ceil(d/p) coordinates, as the authors' code), "
           f"base Multi-Krum (the authors' `agg_krum`) or Bulyan. Uniformity: τ={args.tau:g} (a row is replaced "
           f"when its nearest neighbour is closer than τ times the lower median nearest-neighbour distance; "
           f"at most f rows). \"Uniformity\" alone is `uniformity + mean`.\n")
    md += findings(cells, attacks, defences) + report.run_footer(stats)
    report.write_results(stem, md, {**spec, "experiment": "beyond_strike", "setting": setting, "cells": cells,
                                    "stats": stats})
    if args.plot:
        # bar_plot labels bars with report.display: hand it the cells keyed by this table's labels.
        # (the chained defences' labels shortened, so that neighbouring ticks do not overlap).
        tick = {d: label(d).replace("Uniformity + ", "Unif. + ") for d in defences}
        shown = {label(a): {tick[d]: c for d, c in row.items()} for a, row in cells.items()}
        report.bar_plot(stem + ".png", f"Beyond STRIKE: {args.dataset} ({args.scale} scale)",
                        [label(a) for a in rows], [tick[d] for d in defences], shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
