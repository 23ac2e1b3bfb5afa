"""Sweeps as one batch vs one run after another: wall time with compilation, per-round times.

Two sweeps of the paper's kind, on the local data sets:
  * `nu8`: STRIKE with the 8 values of Figure 7's ν grid against one defence, one seed;
  * `seeds4_f2`: STRIKE (ν = 1) with 4 seeds x 2 Byzantine ratios.
Each is run three ways, every way in a fresh Python process (so each pays its own compilation):
  * `batched`: `strike_jax.simulate_many(configs)` — the runs that differ only in numbers share one
    compiled round, global models `[R, d]`, updates `[R, n, d]`;
  * `sequential`: `for c in configs: strike_jax.simulate(c)` in one process (programs are reused
    between the runs, as a sweep script's loop did);
  * `baseline` (with `--baseline-src DIR`): the same loop with another checkout of strike_jax (e.g.
    the code before vectorised runs), for the before/after comparison.
Reported: wall time including compilation and data loading, the first round's time (compilation),
the steady per-round time, the strategy, lanes and padded fraction of the batched program.
Writes `experiments/results/bench_sweep_<backend>.{md,json}`.

  python -m experiments.bench_sweep                               # all cases
  python -m experiments.bench_sweep --cases digits_mlp --sweeps nu8
  python -m experiments.bench_sweep --baseline-src /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

NU_GRID = tuple(0.25 * i for i in range(1, 9))
CASES = {
    # name: preset and overrides (rounds kept short where a round is slow on a CPU)
    "digits_mlp": dict(preset="digits", overrides=dict(model="mlp")),
    "fmnist_mlp": dict(preset="fashion_mnist", overrides=dict(model="mlp", rounds=10)),
    "fmnist_cnn": dict(preset="fashion_mnist", overrides=dict(model="small_cnn", rounds=3)),
    # GPU: synthetic data of CIFAR-10's shape, the paper's AlexNet round (50 clients x ~1,000 samples).
    "synthetic_cifar_alexnet": dict(preset=None, overrides=dict(
        dataset="synthetic", dataset_params={"num_clients": 50, "samples_per_client": 1000, "num_test": 2000,
                                             "image_shape": [32, 32, 3], "num_classes": 10},
        model="alexnet_cifar", num_clients=50, clients_per_round=50, batch_size=128, lr=0.1, rounds=3,
        max_test_samples=2000), slow=True),
}
SWEEPS = ("nu8", "seeds4_f2")


def configs_for(case: str, sweep: str, defence: str, strategy: str | None):
    from strike_jax.config import Config, preset

    spec = CASES[case]
    over = dict(spec["overrides"], attack="strike", defence=defence)
    if strategy:
        over["strategy"] = strategy
    base = preset(spec["preset"], **over) if spec["preset"] else Config(**over)
    if sweep == "nu8":
        return [base.replace(attack_params={"nu": nu}, seed=0) for nu in NU_GRID]
    return [base.replace(attack_params={"nu": 1.0}, seed=s, byzantine_ratio=r) for r in (0.1, 0.2) for s in range(4)]


def worker(mode: str, case: str, sweep: str, defence: str, strategy: str | None) -> dict:
    """Runs one way of one sweep in this process and returns its measurements."""
    t0 = time.perf_counter()
    import strike_jax

    configs = configs_for(case, sweep, defence, strategy)
    if mode == "batched":
        results = strike_jax.simulate_many(configs)
    else:
        results = [strike_jax.simulate(c) for c in configs]
    wall = time.perf_counter() - t0
    first = [r["rounds"][0]["time_round_s"] * r.get("batch", {}).get("runs", 1) for r in results]
    steady = [r["mean_round_time_s"] for r in results if r.get("mean_round_time_s")]
    batch = results[0].get("batch", {})
    return dict(mode=mode, case=case, sweep=sweep, runs=len(configs), rounds=configs[0].rounds, wall_s=wall,
                first_round_s=max(first), steady_round_s_per_run=sum(steady) / max(len(steady), 1),
                strategy=batch.get("strategy"), lanes=batch.get("lanes"),
                padded_fraction=batch.get("padded_fraction"), runs_per_program=batch.get("runs"),
                best_accuracy=[r["best_accuracy"] for r in results])


def run_worker(mode, case, sweep, defence, strategy, src=None, timeout=None):
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.path.abspath(src)
    cmd = [sys.executable, "-m", "experiments.bench_sweep", "--worker", mode, case, sweep, "--defence", defence]
    if strategy:
        cmd += ["--strategy", strategy]
    if src:  # an old checkout has no experiments package: run this file with its tree on the path
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, case, sweep, "--defence", defence]
        if strategy:
            cmd += ["--strategy", strategy]
    out = subprocess.run(cmd, cwd=src or ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def to_markdown(rows, meta) -> str:
    lines = [f"# Sweeps: one batch vs one run after another ({meta['backend']}: {meta['device']})", "",
             f"Generated by `{meta['command']}`; machine load at the start: {meta['load']}. Each way runs in a "
             "fresh process: wall time includes data loading and every compilation. `first round` = the slowest "
             "run's first round (compilation); `steady` = seconds per round per run after it.", "",
             "| case | sweep | runs x rounds | way | wall s | speed-up vs sequential | first round s | steady s/round/run "
             "| strategy | lanes | padded |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault((r["case"], r["sweep"]), {})[r["mode"]] = r
    for (case, sweep), modes in by.items():
        seq = modes.get("sequential", {}).get("wall_s")
        for mode in ("batched", "sequential", "baseline"):
            r = modes.get(mode)
            if r is None:
                continue
            speed = f"{seq / r['wall_s']:.2f}x" if seq else "—"
            pad = "—" if r.get("padded_fraction") is None else f"{r['padded_fraction']:.1%}"
            lines.append(f"| {case} | {sweep} | {r['runs']} x {r['rounds']} | {mode} | {r['wall_s']:.1f} | {speed} | "
                         f"{r['first_round_s']:.2f} | {r['steady_round_s_per_run']:.3f} | {r.get('strategy') or '—'} | "
                         f"{r.get('lanes') or '—'} | {pad} |")
    lines += ["", "`baseline` is the same loop of `simulate` calls run with another checkout "
              f"({meta.get('baseline_src') or 'not run'}).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", choices=list(CASES), help="default: every case but the slow ones")
    ap.add_argument("--sweeps", nargs="*", default=list(SWEEPS), choices=list(SWEEPS))
    ap.add_argument("--defence", default="median")
    ap.add_argument("--strategy", help="force a strategy (default: the configs' auto)")
    ap.add_argument("--modes", nargs="*", default=["batched", "sequential"], choices=["batched", "sequential"])
    ap.add_argument("--baseline-src", help="a checkout of strike_jax to run the sequential loop with (before/after)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--suffix", default="")
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "CASE", "SWEEP"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        mode, case, sweep = args.worker
        print(json.dumps(worker("sequential" if mode == "baseline" else mode, case, sweep, args.defence,
                                args.strategy) | {"mode": mode}))
        return 0
    import jax

    from strike_jax import atomic

    cases = args.cases or [c for c in CASES if not CASES[c].get("slow")]
    meta = dict(backend=jax.default_backend(), device=jax.devices()[0].device_kind, jax=jax.__version__,
                load=", ".join(f"{x:.2f}" for x in os.getloadavg()), baseline_src=args.baseline_src,
                command="python -m experiments.bench_sweep " + " ".join(argv if argv is not None else sys.argv[1:]))
    rows = []
    for case in cases:
        for sweep in args.sweeps:
            modes = list(args.modes) + (["baseline"] if args.baseline_src else [])
            for mode in modes:
                src = args.baseline_src if mode == "baseline" else None
                r = run_worker(mode, case, sweep, args.defence, args.strategy, src)
                rows.append(r)
                print(f"{case:12s} {sweep:10s} {mode:10s} wall {r['wall_s']:7.1f} s  first round {r['first_round_s']:6.2f} s"
                      f"  steady {r['steady_round_s_per_run']:.3f} s/round/run  ({r.get('strategy')}, "
                      f"lanes {r.get('lanes')}, padded {r.get('padded_fraction')})", flush=True)
    base = os.path.join(args.out, f"bench_sweep_{meta['backend']}{args.suffix}")
    atomic.write_json(base + ".json", dict(meta=meta, rows=rows))
    atomic.write_text(base + ".md", to_markdown(rows, meta))
    print(f"wrote {base}.md and {base}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
