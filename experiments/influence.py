"""Per-row influence on the aggregate under STRIKE versus no attack (issue 10, part 6).

On a recorded digits round (`_recorded.py`: 20 clients, the first 4 Byzantine, d = 9,610) and for
a few rules, `strike_jax.analysis.influence` gives every row's sensitivity `||J_i||_F / sqrt(d)`
(its effective weight in the aggregate; estimated from 32 random projections, since the exact
Jacobian would be 20 x 9,610^2) and the share of the aggregate's deviation from the honest mean
that the Byzantine rows cause (first-order Euler decomposition, exact for the equivariant rules).
"No attack": the Byzantine clients send their honestly computed updates; "STRIKE": the attack's
rows (nu = 1).

  python -m experiments.influence          # ~1-2 min
  python -m experiments.influence --rules median,multikrum --source fashion_mnist

Outputs: experiments/results/influence_<source>.md / .json / .png.
"""

from __future__ import annotations

import os
import sys

# One OpenBLAS thread: jaxlib's CPU eigh (DnC) calls scipy's OpenBLAS from XLA's own threads, and
# with OpenBLAS's thread pool on top a vmapped search once deadlocked here (every thread waiting).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from experiments import _recorded as R  # noqa: E402
from strike_jax import report, sweep  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from strike_jax import aggregators, attacks  # noqa: E402
from strike_jax.analysis import influence  # noqa: E402

RULES = ("median", "trmean", "multikrum", "rfa", "dnc")


def build_parser():
    p = sweep.make_parser(__file__, __doc__)
    p.add_argument("--source", choices=tuple(R.SOURCES), default="digits")
    p.add_argument("--rules", type=sweep.names_type("rule"), default=RULES)
    p.add_argument("--probes", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p


def spec_of(args) -> dict:
    return {"settings": {"source": args.source, "rules": list(args.rules), "probes": args.probes, "seed": args.seed}}


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    stem = os.path.join(args.results_dir, f"influence_{args.source}")
    report.check_results(stem, spec_of(args), args)
    if args.dry_run:
        print(f"influence: {len(args.rules)} rules x (no attack, STRIKE) on a recorded {args.source} round")
        return 0
    rec = R.record(args.source)
    honest, own, f = rec["honest"], rec["own"], rec["f"]
    clean = jnp.asarray(np.concatenate([own, honest]))
    n, d = clean.shape
    mask = jnp.arange(n) < f
    attacked, _ = attacks.get("strike").apply(clean, mask, ())
    key = jax.random.PRNGKey(args.seed)
    spread = float(((honest.astype(np.float64) - honest.mean(0)) ** 2).sum(1).mean())
    results = {}
    for rule_name in args.rules:
        rule = aggregators.get(rule_name)
        results[rule_name] = {}
        for label, u in (("none", clean), ("strike", attacked)):
            inf = influence(rule, u, f=f, key=key, byzantine_mask=mask, exact=False, probes=args.probes)
            sens = np.asarray(inf.sensitivity, np.float64)
            results[rule_name][label] = {
                "sensitivity": sens.tolist(), "sensitivity_se": np.asarray(inf.sensitivity_se).tolist(),
                "byzantine_weight": float(sens[:f].sum() / max(sens.sum(), 1e-30)),
                "byzantine_share": float(inf.byzantine_share), "euler_residual": float(inf.euler_residual),
                "counterfactual_share": float(inf.counterfactual_share),
                "ratio": float(inf.deviation) ** 2 / spread,
            }
            print(f"{rule_name:10s} {label:7s} Byzantine weight {results[rule_name][label]['byzantine_weight']:.3f} "
                  f"share of deviation {float(inf.byzantine_share):.3f} counterfactual "
                  f"{float(inf.counterfactual_share):.3f} ratio {results[rule_name][label]['ratio']:.4g}",
                  flush=True)
    lines = [f"# Per-row influence: STRIKE vs no attack ({args.source}, round {rec['round']}, n = {n}, f = {f}, "
             f"d = {d})", "",
             "Sensitivity `s_i = ||J_i||_F / sqrt(d)` from 32 Gaussian probes (relative standard error of "
             "`s_i^2` at most sqrt(2/32) = 0.25, far less for coordinate-wise rules); *Byzantine weight* = "
             "sum of the Byzantine rows' `s_i` / sum of all; *share* = the Byzantine rows' share of the "
             "aggregate's deviation from the honest mean (first-order Euler decomposition, residual in the last "
             "column: it credits rows for what their own values contribute, so an attack acting through the "
             "selection gets no share); *counterfactual* = the part of the squared deviation that disappears "
             "when the Byzantine rows are set to the honest mean (their global effect, selection included); "
             "*ratio* = (f, κ) ratio of the aggregate.", "",
             "| rule | Byzantine weight: none | STRIKE | share of deviation: none | STRIKE | counterfactual: none "
             "| STRIKE | ratio: none | STRIKE | Euler residual (STRIKE) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r, v in results.items():
        a, b = v["none"], v["strike"]
        lines.append(f"| {report.DISPLAY.get(r, r)} | {a['byzantine_weight']:.3f} | {b['byzantine_weight']:.3f} | "
                     f"{a['byzantine_share']:.3f} | {b['byzantine_share']:.3f} | {a['counterfactual_share']:.3f} | "
                     f"{b['counterfactual_share']:.3f} | {a['ratio']:.4g} | {b['ratio']:.4g} | "
                     f"{b['euler_residual']:.1e} |")
    report.write_results(stem, "\n".join(lines) + "\n", {**spec_of(args), "n": n, "f": f, "d": d, "results": results})
    if not args.plot:
        return 0
    plt = report.pyplot()
    if plt is None:
        return 0
    fig, axes = plt.subplots(1, len(args.rules), figsize=(3.2 * len(args.rules), 3.0), sharey=False, squeeze=False)
    x = np.arange(n)
    for ax, r in zip(axes[0], args.rules):
        for off, label, color in ((-0.2, "none", "tab:gray"), (0.2, "strike", "crimson")):
            s = np.asarray(results[r][label]["sensitivity"])
            se = np.asarray(results[r][label]["sensitivity_se"])
            bars = ax.bar(x + off, s, 0.4, yerr=se, color=color, label="no attack" if label == "none" else "STRIKE",
                          error_kw={"lw": 0.5})
            for i in range(f):
                bars[i].set_hatch("///")
        ax.axvspan(-0.5, f - 0.5, color="gold", alpha=0.15, lw=0)
        ax.set_title(f"{report.DISPLAY.get(r, r)}: Byz share {results[r]['none']['byzantine_share']:.2f} → "
                     f"{results[r]['strike']['byzantine_share']:.2f}", fontsize=8)
        ax.set_xlabel("row (shaded: Byzantine)", fontsize=8)
        ax.set_xticks(range(0, n, 2))
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("sensitivity ||J_i||_F / sqrt(d)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    report.save_figure(fig, stem + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
