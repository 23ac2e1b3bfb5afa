"""Figure 7: STRIKE's accuracy for each `nu` in {0.25, ..., 2.0} against the seven defences, with the
best (lowest) baseline attack of each defence as a reference line (paper App. D.2, SPEC §8).

The baselines are the six other attacks of Table 1 with the same settings: with the same `--out-dir`
as `table1.py` these runs (and STRIKE's) are shared, not repeated.

  python -m experiments.figure7_nu                                # digits, 20 rounds, 2 seeds
  python -m experiments.figure7_nu --nu-grid 0.5,1.0,2.0 --seeds 1
  python -m experiments.figure7_nu --scale paper --dataset imagenet12 --data-dir /data/imagenet12

Outputs: experiments/results/figure7_nu_<dataset>.md / .json / .png.
"""

from __future__ import annotations

import math
import sys

from strike_jax import report, sweep


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="imagenet12")
    p.add_argument("--defences", "--defenses", dest="defences", type=sweep.names_type("rule"),
                   default=sweep.DEFENCES, help=f"comma-separated (default: {','.join(sweep.DEFENCES)})")
    p.add_argument("--baselines", type=sweep.names_type("attack"), default=sweep.BASELINE_ATTACKS,
                   help=f"the reference attacks (default: {','.join(sweep.BASELINE_ATTACKS)}); "
                        "'--baselines none' skips them")
    p.add_argument("--nu-grid", dest="nu_grid", type=sweep.parse_floats, default=sweep.NU_GRID,
                   help="STRIKE's nu values (default: 0.25,0.5,...,2.0)")
    return p


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    base = sweep.base_config(args)
    baselines = tuple(a for a in args.baselines if a != "none")
    stem = report.result_stem(args, "figure7_nu")
    spec = {"scale": args.scale, "dataset": args.dataset, "seeds": list(args.seeds), "nu_grid": list(args.nu_grid),
            "defences": list(args.defences), "baseline_attacks": list(baselines), "base_config": base}
    report.check_results(stem, spec, args)
    configs = sweep.grid(base, baselines, args.defences, args.seeds)
    configs += sweep.grid(base, ("strike",), args.defences, args.seeds, nu_grid=args.nu_grid)
    results, stats = sweep.run_configs(configs, args)

    # STRIKE per nu: rows = nu, columns = defences.
    strike = report.collect(configs, results,
                            lambda c: (sweep.nu_of(c), c.defence) if c.attack == "strike" else None)
    cells = {nu: {} for nu in args.nu_grid}
    for key, runs in strike.items():
        if key is not None:
            cells[key[0]][key[1]] = report.make_cell(runs)
    base_cells = report.attack_cells([c for c in configs if c.attack != "strike"],
                                     [r for c, r in zip(configs, results) if c.attack != "strike"])
    reference = {}
    for d in args.defences:
        a = report.lowest({a: base_cells[a][d] for a in baselines if d in base_cells.get(a, {})})
        if a is not None:
            reference[d] = dict(base_cells[a][d], attack=a)
    rows = list(args.nu_grid) + (["best baseline"] if reference else [])
    if reference:
        cells["best baseline"] = reference
    setting = report.describe(base, args)
    md = report.markdown_table(f"Figure 7 (STRIKE vs ν): {setting}", "ν", rows, list(args.defences), cells,
                               row_label=lambda r: f"STRIKE ν={r:g}" if isinstance(r, float) else str(r),
                               reference_rows=("best baseline",))
    if reference:
        md += ("\nbest baseline = the lowest of " + ", ".join(report.display(a) for a in baselines)
               + " for each defence: " + ", ".join(f"{report.display(d)}: {report.display(c['attack'])}"
                                                    for d, c in reference.items()) + ".\n")
    md += report.run_footer(stats)
    report.write_results(stem, md, {
        **spec, "experiment": "Figure 7", "setting": setting,
        "strike_by_nu": {f"{nu:g}": cells[nu] for nu in args.nu_grid}, "best_baseline": reference,
        "baselines": {a: base_cells.get(a, {}) for a in baselines}, "stats": stats})
    if args.plot:
        plot(stem + ".png", args, cells, reference)
    return 0


def plot(path, args, cells, reference) -> None:
    plt = report.pyplot()
    if plt is None:
        return
    k = len(args.defences)
    ncols = min(4, k)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.7 * nrows), squeeze=False)
    for ax, d in zip(axes.flat, args.defences):
        xs = [nu for nu in args.nu_grid if d in cells[nu]]
        ys = [100 * cells[nu][d]["mean"] for nu in xs]
        es = [100 * cells[nu][d]["std"] for nu in xs]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color="crimson", label="STRIKE")
        if d in reference:
            ax.axhline(100 * reference[d]["mean"], color="gray", linestyle="--",
                       label=f"best baseline ({report.display(reference[d]['attack'])})")
        ax.set_title(report.display(d), fontsize=10)
        ax.set_xlabel("ν")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.suptitle(f"Figure 7: STRIKE vs ν, {args.dataset} ({args.scale} scale)", fontsize=11)
    fig.tight_layout()
    report.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
