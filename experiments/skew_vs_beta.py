"""Gradient skew as a number, against rounds and the non-IID level (SPEC §8; paper §3, App. A).

FedAvg runs (no attack, plain mean) for Dirichlet β ∈ {0.1, 0.2, 0.5, 0.7, 0.9} and an IID split.
Every round the server records, for the honest updates (SPEC §8, `strike_jax.analysis.skew`):

* `skewness`: the Fisher skewness of their coordinates along their first principal component,
  oriented from the lower median towards the mean (positive: the dense bulk lies on the median's
  side, the long tail on the mean's side, as Pearson's rule says);
* `median_mean_distance`: ||lower median - mean||, the length of STRIKE's search direction.

The paper's claim to check: skew is present throughout training and grows as β falls (more
non-IID); it is milder, though not absent, with IID data.

  python -m experiments.skew_vs_beta                               # digits, 20 rounds, 2 seeds
  python -m experiments.skew_vs_beta --dataset fashion_mnist --seeds 1
  python -m experiments.skew_vs_beta --scale paper --dataset cifar10 --data-dir ~/tensorflow_datasets

Outputs: experiments/results/skew_vs_beta_<dataset>.md / .json / .png.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from strike_jax import report, sweep
from strike_jax.simulation import best_accuracy

BETAS = (0.1, 0.2, 0.5, 0.7, 0.9)
METRICS = ("skewness", "median_mean_distance")


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="cifar10")
    p.add_argument("--betas", type=sweep.parse_floats, default=BETAS,
                   help="Dirichlet concentrations (default: 0.1,0.2,0.5,0.7,0.9)")
    p.add_argument("--no-iid", dest="iid", action="store_false", help="skip the IID split")
    return p


def series(result: dict, metric: str, rounds: int) -> np.ndarray:
    """`[rounds]` values of a per-round metric (NaN where missing: a diverged or unfinished run)."""
    out = np.full(rounds, np.nan)
    for h in result["rounds"]:
        v = h.get(metric)
        if v is not None and h["round"] < rounds:
            out[h["round"]] = v
    return out


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    base = sweep.base_config(args, attack="none", defence="mean", skew_metrics=True)
    if base.partition == "natural":
        sweep.usage_error(args.script, f"{args.dataset} is split by writer; pass a Dirichlet-split data set.")
    values = list(args.betas) + (["iid"] if args.iid else [])
    label = {v: ("IID" if v == "iid" else f"{v:g}") for v in values}
    stem = report.result_stem(args, "skew_vs_beta")
    spec = {"scale": args.scale, "dataset": args.dataset, "seeds": list(args.seeds),
            "splits": [label[v] for v in values], "base_config": base}
    report.check_results(stem, spec, args)
    configs, value_of = [], []
    for v in values:
        b = base.replace(partition="iid") if v == "iid" else base.replace(partition="dirichlet", beta=float(v))
        for s in args.seeds:
            configs.append(b.replace(seed=s))
            value_of.append(v)
    results, stats = sweep.run_configs(configs, args)

    T = base.rounds
    curves: dict[str, dict[str, list]] = {m: {} for m in METRICS}
    summary: dict[str, dict[str, dict]] = {}
    for v in values:
        runs = [r for r, vv in zip(results, value_of) if vv == v]
        seeds = [c.seed for c, vv in zip(configs, value_of) if vv == v]
        row = {}
        for m in METRICS:
            arr = np.stack([series(r, m, T) for r in runs])  # [seeds, rounds]
            with np.errstate(all="ignore"):
                curves[m][label[v]] = np.nanmean(arr, axis=0).tolist()
            per_run = [float(np.nanmean(a)) if np.isfinite(a).any() else math.nan for a in arr]
            row[m] = report.make_cell([(s, x, False) for s, x in zip(seeds, per_run)])
        acc = [best_accuracy(r) for r in runs]
        row["best_accuracy"] = report.make_cell([(s, x, bool(r.get("diverged")))
                                                 for s, x, r in zip(seeds, acc, runs)])
        pos = [float(np.nanmean(series(r, "skewness", T) > 0)) for r in runs]
        row["positive_fraction"] = report.make_cell([(s, x, False) for s, x in zip(seeds, pos)])
        summary[label[v]] = row

    split_note = report.describe(base, args, split="split varied")
    lines = [f"### Gradient skew vs non-IID level (FedAvg, no attack): {split_note}", "",
             "| split | skewness (PC1), mean over rounds | rounds with skewness > 0 | ‖median − mean‖, mean over "
             "rounds | best accuracy (%) |", "|---|---|---|---|---|"]
    for v in values:
        row = summary[label[v]]
        sk, pf, md_, ac = row["skewness"], row["positive_fraction"], row["median_mean_distance"], row["best_accuracy"]
        lines.append(f"| {'IID' if v == 'iid' else f'Dirichlet β={v:g}'} | "
                     f"{report.format_cell(sk, scale=1, spec='.3f')} | {100 * pf['mean']:.0f}% | "
                     f"{report.format_cell(md_, scale=1, spec='.4g', std_spec='.2g')} | {report.format_cell(ac)} |")
    lines.append("\nValues: mean ± std over seeds (one seed: its value) of each run's average over its rounds.")
    md = "\n".join(lines) + "\n" + report.run_footer(stats, note="")
    report.write_results(stem, md, {**spec, "experiment": "gradient skew vs beta", "setting": split_note,
                                    "summary": summary, "curves": curves, "stats": stats})
    if args.plot:
        plot(stem + ".png", args, values, label, curves, summary)
    return 0


def plot(path, args, values, label, curves, summary) -> None:
    plt = report.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    cmap = plt.get_cmap("viridis")
    for i, v in enumerate(values):
        color = "black" if v == "iid" else cmap(i / max(1, len(values) - 1))
        for ax, m in zip(axes[:2], METRICS):
            ax.plot(curves[m][label[v]], label=("IID" if v == "iid" else f"β={v:g}"), color=color,
                    linestyle="--" if v == "iid" else "-")
    axes[0].axhline(0.0, color="gray", linewidth=0.8)
    axes[0].set_ylabel("skewness along PC1")
    axes[1].set_ylabel("‖median − mean‖")
    for ax in axes[:2]:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    labels = [label[v] for v in values]
    pos = list(range(len(values)))
    ax = axes[2]
    ax.errorbar(pos, [summary[k]["skewness"]["mean"] for k in labels],
                yerr=[summary[k]["skewness"]["std"] for k in labels], marker="o", capsize=3, label="skewness")
    ax.set_xticks(pos)
    ax.set_xticklabels(labels)
    ax.set_xlabel("Dirichlet β")
    ax.set_ylabel("mean skewness over rounds")
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(pos, [summary[k]["median_mean_distance"]["mean"] for k in labels], marker="s", color="tab:orange",
             label="‖median − mean‖")
    ax2.set_ylabel("mean ‖median − mean‖", color="tab:orange")
    fig.suptitle(f"Gradient skew vs rounds and β: {args.dataset} ({args.scale} scale), FedAvg", fontsize=11)
    fig.tight_layout()
    report.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
