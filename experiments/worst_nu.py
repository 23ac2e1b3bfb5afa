"""STRIKE's worst nu by gradient versus the grid of Figure 7 (issue 10, part 5), on real rounds.

For a recorded round (digits f = 4, Fashion-MNIST/MLP f = 10; `_recorded.py`) and each defence of
Table 1, `strike_jax.analysis.worst_nu` maximises the aggregate's squared deviation from the honest
mean, `phi(nu) = ||F(U_nu) - mean(H)||^2`, over STRIKE's `nu` by gradient (STRIKE with its
closed-form alpha, differentiated through STRIKE and the rule): from every point of the paper's
grid {0.25, ..., 2.0} and, alone, from nu = 1. The table gives `phi` as a ratio to the honest
spread `(1/h) sum ||H_i - mean(H)||^2` (the (f, kappa) ratio of the round), the grid's best nu,
the gradient's, the derivative `phi'(1)`, and the figure `phi` on a fine grid of nu.

Resumable: results per (source, defence) in `<out-dir>/<source>.json`.

  python -m experiments.worst_nu                          # digits and fashion_mnist (~5 min)
  python -m experiments.worst_nu --sources digits

Outputs: experiments/results/worst_nu.md / .json / .png.
"""

from __future__ import annotations

import json
import os
import sys
import time

# One OpenBLAS thread: jaxlib's CPU eigh (DnC) calls scipy's OpenBLAS from XLA's own threads, and
# with OpenBLAS's thread pool on top a vmapped search once deadlocked here (every thread waiting).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from experiments import _recorded as R  # noqa: E402
from strike_jax import report, sweep  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from strike_jax import aggregators  # noqa: E402
from strike_jax.analysis import nu_deviation, worst_nu  # noqa: E402
from strike_jax.analysis.nu_gradient import nu_objective  # noqa: E402
from strike_jax.atomic import write_json  # noqa: E402

DEFENCES = sweep.DEFENCES  # Table 1's seven
FINE = np.round(np.linspace(0.05, 4.0, 80), 4)


def build_parser():
    p = sweep.make_parser(__file__, __doc__)
    p.add_argument("--sources", type=sweep.names_type(tuple(R.SOURCES)), default=tuple(R.SOURCES))
    p.add_argument("--defences", type=sweep.names_type("rule"), default=DEFENCES)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    return p


def spec_of(args) -> dict:
    return {"settings": {"sources": list(args.sources), "defences": list(args.defences), "steps": args.steps,
                         "seed": args.seed}}


def run_one(source: str, defence: str, args) -> dict:
    rec = R.record(source)
    honest, own, f = rec["honest"], rec["own"], rec["f"]
    u = jnp.asarray(np.concatenate([own, honest]))
    mask = jnp.arange(u.shape[0]) < f
    rule = aggregators.get(defence)
    key = jax.random.PRNGKey(args.seed)
    fn = lambda x: rule.aggregate(x, rule.init(x), f=f, key=key)[0]
    spread = float(((honest.astype(np.float64) - honest.mean(0)) ** 2).sum(1).mean())
    t0 = time.perf_counter()
    res = jax.jit(lambda u: worst_nu(fn, u, mask, steps=args.steps))(u)
    val1, der1 = jax.jit(lambda u: nu_deviation(fn, u, mask, 1.0))(u)
    phi = nu_objective(fn, u, mask)
    curve = jax.jit(lambda nus: jax.lax.map(phi, nus, batch_size=8))(jnp.asarray(FINE, u.dtype))
    out = {
        "f": f, "n": int(u.shape[0]), "d": int(u.shape[1]), "spread": spread,
        "grid": list(map(float, np.asarray(res.grid))),
        "grid_ratio": [float(v) / spread for v in np.asarray(res.grid_deviation_sq)],
        "grid_nu": float(res.grid_nu), "grid_best_ratio": float(res.grid_best_deviation_sq) / spread,
        "gradient_nu": float(res.nu), "gradient_ratio": float(res.deviation_sq) / spread,
        "from_one_nu": float(res.from_default_nu), "from_one_ratio": float(res.from_default_deviation_sq) / spread,
        "ratio_at_1": float(val1) / spread, "derivative_at_1": float(der1) / spread,
        "fine_nu": FINE.tolist(), "fine_ratio": [float(v) / spread for v in np.asarray(curve)],
        "seconds": time.perf_counter() - t0,
    }
    return out


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    stem = os.path.join(args.results_dir, "worst_nu")
    report.check_results(stem, spec_of(args), args)
    if args.dry_run:
        print(f"worst_nu: {len(args.sources) * len(args.defences)} searches in {args.out_dir}")
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    results = {}
    for s in args.sources:
        path = os.path.join(args.out_dir, f"{s}.json")
        results[s] = json.load(open(path)) if os.path.exists(path) else {}
        for dfn in args.defences:
            key = f"{dfn}|steps={args.steps}|seed={args.seed}"
            if key in results[s]:
                continue
            results[s][key] = run_one(s, dfn, args)
            write_json(path, results[s])
            r = results[s][key]
            if not args.quiet:
                print(f"{s:14s} {dfn:10s} grid nu={r['grid_nu']:.2f} ratio={r['grid_best_ratio']:.4g} | gradient "
                      f"nu={r['gradient_nu']:.3f} ratio={r['gradient_ratio']:.4g} | from 1: nu={r['from_one_nu']:.3f} "
                      f"ratio={r['from_one_ratio']:.4g} ({r['seconds']:.1f} s)", flush=True)
    lines = ["# STRIKE's worst nu: gradient vs the grid of Figure 7", "",
             "phi(nu) = ||F(U_nu) - mean(H)||^2 / ((1/h) sum ||H_i - mean(H)||^2) on a recorded round (round 2), "
             f"STRIKE with the closed-form alpha; gradient ascent ({args.steps} steps, nu in [0.05, 4]) from every "
             "grid point (multi-start) and from nu = 1 alone. phi'(1) is the derivative through STRIKE and the rule.",
             ""]
    for s in args.sources:
        lines += [f"## {s}", "", "| defence | phi(1) | phi'(1) | grid best nu | grid best phi | gradient nu "
                  "(multi-start) | phi | from nu=1: nu | phi | gain over grid |", "|---|---|---|---|---|---|---|---|---|---|"]
        for dfn in args.defences:
            r = results[s].get(f"{dfn}|steps={args.steps}|seed={args.seed}")
            if r is None:
                continue
            gain = r["gradient_ratio"] / r["grid_best_ratio"] - 1 if r["grid_best_ratio"] > 0 else float("nan")
            lines.append(f"| {report.DISPLAY.get(dfn, dfn)} | {r['ratio_at_1']:.4g} | {r['derivative_at_1']:.3g} | "
                         f"{r['grid_nu']:.2f} | {r['grid_best_ratio']:.4g} | {r['gradient_nu']:.3f} | "
                         f"{r['gradient_ratio']:.4g} | {r['from_one_nu']:.3f} | {r['from_one_ratio']:.4g} | "
                         f"{100 * gain:+.1f}% |")
        lines.append("")
    report.write_results(stem, "\n".join(lines), {**spec_of(args), "results": results})
    if not args.plot:
        return 0
    plt = report.pyplot()
    if plt is None:
        return 0
    fig, axes = plt.subplots(len(args.sources), len(args.defences), figsize=(2.6 * len(args.defences),
                                                                              2.4 * len(args.sources)), squeeze=False)
    for i, s in enumerate(args.sources):
        for j, dfn in enumerate(args.defences):
            ax = axes[i][j]
            r = results[s].get(f"{dfn}|steps={args.steps}|seed={args.seed}")
            if r is None:
                ax.axis("off")
                continue
            ax.plot(r["fine_nu"], r["fine_ratio"], color="gray", lw=1)
            ax.scatter(r["grid"], r["grid_ratio"], color="tab:blue", s=12, label="Fig. 7 grid", zorder=3)
            ax.scatter([r["gradient_nu"]], [r["gradient_ratio"]], color="crimson", marker="*", s=70,
                       label="gradient", zorder=4)
            ax.set_title(f"{s} / {report.DISPLAY.get(dfn, dfn)}", fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("phi / spread", fontsize=8)
            if i == len(args.sources) - 1:
                ax.set_xlabel("nu", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    report.save_figure(fig, stem + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
