"""Times one round of local training per execution strategy (`strike_jax.training.strategies`).

For a few models and sizes, with synthetic data of the right shapes, every strategy trains all
sampled clients from the same global model on the same round plan (the device-drawn schedule of
`strike_jax.training.schedule`); the time of a round is the wall time until `U` is ready, the median
over several rounds (each with a fresh plan) after the first (compiling) call, the strategies'
rounds interleaved (`training.make_plan_updates`: every strategy trains from the same
`schedule.ClientBatches`). `auto` is the strategy `training.resolve_auto`'s fixed rule picks for the
case (its row shows which; the rule is read from these tables). Also the padded fraction: the share
of lane steps that are idle (`vmap`: every client padded to the longest; `packed`: the lanes'
slack) — the issue's target is at most 10% for the packed layout on a Dirichlet(0.5) split.
Writes `experiments/results/bench_strategies_<backend>.{json,md}`.

Client sizes: the SPEC §4 Dirichlet split (beta = 0.5) of balanced synthetic labels, so clients
hold different numbers of samples as in real runs; the FEMNIST cases use 10 clients of 128 samples
(the setting of the PyTorch baseline in PERF_NOTES.md).

Usage:
  python -m experiments.bench_strategies                 # all cases but the slow ones
  python -m experiments.bench_strategies --cases fmnist_mlp digits_cnn --rounds 3
  python -m experiments.bench_strategies --cases cifar_alexnet --strategies packed vmap   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import atomic, models, training
from strike_jax.training import schedule

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = {
    # name: model, input shape, classes, samples N, clients n, batch B, sizes ("dirichlet" or an int)
    "digits_mlp": dict(model="mlp", shape=(8, 8, 1), classes=10, N=1797, n=50, B=32, sizes="dirichlet"),
    "digits_cnn": dict(model="small_cnn", shape=(8, 8, 1), classes=10, N=1797, n=50, B=32, sizes="dirichlet"),
    # Fashion-MNIST's 60,000 training images over 50 clients (the case: vmap padded to 38 steps).
    "fmnist_mlp": dict(model="mlp", shape=(28, 28, 1), classes=10, N=60000, n=50, B=64, sizes="dirichlet"),
    # A tenth of Fashion-MNIST over 50 clients (keeps the benchmark short); "map" skipped on CPU
    # (convolutions in a compiled loop, jax#12868: ~55 s per round).
    "fmnist_cnn": dict(model="small_cnn", shape=(28, 28, 1), classes=10, N=6000, n=50, B=64, sizes="dirichlet",
                       skip_cpu=("map",)),
    "femnist_cnn_b32": dict(model="femnist_cnn", shape=(28, 28, 1), classes=62, N=1280, n=10, B=32, sizes=128),
    "femnist_cnn_b128": dict(model="femnist_cnn", shape=(28, 28, 1), classes=62, N=1280, n=10, B=128, sizes=128),
    # The PyTorch baseline's setting (PERF_NOTES.md: 2.1 s per round); "map" skipped on CPU.
    "leaf_cnn_b32": dict(model="leaf_cnn", shape=(28, 28, 1), classes=62, N=1280, n=10, B=32, sizes=128,
                         skip_cpu=("map",)),
    # The paper's CIFAR-10 round: 50 clients, ~1,000 samples each, batch 128 (slow on CPU: opt-in).
    "cifar_alexnet": dict(model="alexnet_cifar", shape=(32, 32, 3), classes=10, N=50000, n=50, B=128,
                          sizes="dirichlet", slow=True, skip_cpu=("map", "loop", "vmap")),
}

STRATEGIES = ("packed", "vmap", "map", "steps", "loop", "auto")


def dirichlet_sizes(rng, N, n, classes, beta=0.5, min_size=10):
    """Client sizes of the SPEC §4 Dirichlet split of N balanced labels (retry until all >= min_size)."""
    per_class = np.full(classes, N // classes)
    per_class[: N % classes] += 1
    while True:
        sizes = np.zeros(n, np.int64)
        for c in range(classes):
            p = rng.dirichlet(np.full(n, beta))
            cuts = np.floor(np.cumsum(p) * per_class[c]).astype(np.int64)
            cuts[-1] = per_class[c]
            sizes += np.diff(np.concatenate([[0], cuts]))
        if sizes.min() >= min_size:
            return sizes


def run_case(name, case, strategies, rounds, seed=0, min_time=2.0, max_rounds=30):
    rng = np.random.default_rng(seed)
    model = models.get(case["model"], case["classes"], case["shape"])
    N, n, B = case["N"], case["n"], case["B"]
    sizes = dirichlet_sizes(rng, N, n, case["classes"]) if case["sizes"] == "dirichlet" else np.full(n, case["sizes"])
    N = int(sizes.sum())
    index = np.zeros((n, int(sizes.max())), np.int32)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for i in range(n):
        index[i, :sizes[i]] = np.arange(starts[i], starts[i + 1])
    steps = -(-sizes // B)
    S = int(steps.max())
    plan = jax.jit(lambda r: schedule.client_batches(jnp.asarray(index), jnp.asarray(sizes, jnp.int32), seed, r,
                                                     per_round=n, batch_size=B, local_epochs=1))
    x = jnp.asarray(rng.normal(size=(N, *case["shape"])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, case["classes"], size=N).astype(np.int32))
    cfg = training.LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-4, clip_norm=2.0, num_classes=case["classes"])
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed))
    d = int(training.flatten_variables(variables)[0].shape[0])
    plans = [plan(r) for r in range(max(rounds, max_rounds) + 1)]
    flip = np.zeros(n, bool)
    real_steps = int(steps.sum())
    padded = {s: training.strategy_lanes(s, steps[None], n)[2] for s in training.DEVICE_STRATEGIES}
    padded.update(steps=0.0, loop=1.0 - real_steps / (n * S))
    print(f"[{name}] model={case['model']} n={n} S={S} B={B} d={d} real steps={real_steps}/{n * S}; padded: "
          + ", ".join(f"{k} {v:.1%}" for k, v in padded.items()), flush=True)
    auto = training.resolve_auto(platform=jax.default_backend(), model=case["model"], d=d,
                                 input_size=int(np.prod(case["shape"])), batch_size=B,
                                 lanes=training.choose_lanes(steps[None], n)[0])
    skip = case.get("skip_cpu", ()) if jax.default_backend() == "cpu" else ()
    names = [s for s in strategies if s not in skip]
    fns, first, err = {}, {}, {}
    ref = None
    for strategy in names:  # build and compile every strategy first (first call = compile + run)
        cu = training.make_plan_updates(model, cfg, auto if strategy == "auto" else strategy, batch_size=B)
        t0 = time.perf_counter()
        U, _ = cu(variables, x, y, plans[0], flip)
        U.block_until_ready()
        first[strategy] = time.perf_counter() - t0
        if ref is None:
            ref = np.asarray(U)
        err[strategy] = float(np.abs(np.asarray(U) - ref).max())
        fns[strategy] = cu
    # Timed rounds interleave the strategies (rotating order): on a shared, busy machine the load
    # then drifts over all of them alike instead of favouring whichever ran in a quiet minute.
    times = {s: [] for s in names}
    r = 0
    t_start = time.perf_counter()
    while r < rounds or (time.perf_counter() - t_start < min_time * len(names) and r < max_rounds):
        r += 1
        for k in range(len(names)):
            strategy = names[(k + r) % len(names)]
            t0 = time.perf_counter()
            U, _ = fns[strategy](variables, x, y, plans[r], flip)
            U.block_until_ready()
            times[strategy].append(time.perf_counter() - t0)
    rows = []
    for strategy in names:
        med = statistics.median(times[strategy])
        resolved = fns[strategy].strategy
        rows.append(dict(case=name, model=case["model"], n=n, S=S, B=B, d=d, real_steps=real_steps,
                         strategy=strategy, resolved=resolved, rounds=len(times[strategy]),
                         padded_fraction=padded.get(resolved, 0.0),
                         median_s=med, min_s=min(times[strategy]), first_call_s=first[strategy],
                         max_abs_diff_vs_first=err[strategy]))
        print(f"  {strategy:6s} ({resolved:6s}) median {med * 1e3:9.1f} ms  first call {first[strategy]:6.1f} s  "
              f"rounds {len(times[strategy])}  padded {padded.get(resolved, 0.0):5.1%}  max|dU| {err[strategy]:.1e}",
              flush=True)
    return rows


def _pct(x) -> str:
    return "—" if x is None else f"{x:.1%}"  # rows merged from a run before the padded fraction was recorded


def to_markdown(rows, meta):
    lines = [f"# Local-training strategies, one round ({meta['backend']}: {meta['device']})", "",
             "Median wall time of one round (all clients) after compilation; `first` = first call "
             "(compilation included); `auto` = `training.resolve_auto`'s pick; `padded` = idle share of the lane "
             "steps. Generated by `python -m experiments.bench_strategies` "
             f"({meta.get('command', '')}); machine load at the start: {meta.get('load', '?')}.", ""]
    by_case: dict[str, list] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    lines.append("| case | model | n | S | B | d | real steps | strategy | padded | rounds | median ms | first s | vs fastest |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, rs in by_case.items():
        fastest = min(r["median_s"] for r in rs if r["strategy"] != "auto")
        for r in rs:
            label = r["strategy"] if r["strategy"] != "auto" else f"auto ({r['resolved']})"
            lines.append(
                f"| {case} | {r['model']} | {r['n']} | {r['S']} | {r['B']} | {r['d']:,} | {r['real_steps']} | "
                f"{label} | {_pct(r.get('padded_fraction'))} | {r['rounds']} | {r['median_s'] * 1e3:.1f} | "
                f"{r['first_call_s']:.1f} | {r['median_s'] / fastest:.2f}x |")
    lines += ["", "| case | `auto` picks | its strategy's median / fastest | measured estimates (s per round; "
              "rows from before `resolve_auto`) |", "|---|---|---|---|"]
    worst = 0.0
    for case, rs in by_case.items():
        explicit = {r["strategy"]: r["median_s"] for r in rs if r["strategy"] != "auto"}
        fastest = min(explicit.values())
        for r in rs:
            if r["strategy"] == "auto" and r["resolved"] in explicit:
                ratio = explicit[r["resolved"]] / fastest
                worst = max(worst, ratio)
                est = ", ".join(f"{k} {v:.3g}" for k, v in (r.get("estimates") or {}).items())
                lines.append(f"| {case} | {r['resolved']} | {ratio:.2f}x | {est} |")
    lines += ["", f"The strategy `auto` picks is at worst {worst:.2f}x the fastest (target: within 1.10x).", ""]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", choices=list(CASES),
                    help="default: every case but the slow ones (cifar_alexnet)")
    ap.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per strategy (after the first call)")
    ap.add_argument("--min-time", type=float, default=2.0, help="keep timing cheap cases until this many seconds")
    ap.add_argument("--max-rounds", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--suffix", default="", help="appended to the results' file name")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the re-run cases' rows in an existing results file")
    args = ap.parse_args()
    cases = args.cases or [c for c in CASES if not CASES[c].get("slow")]
    backend = jax.default_backend()
    device = jax.devices()[0].device_kind
    meta = dict(backend=backend, device=device, jax=jax.__version__, cpu_count=os.cpu_count(),
                platform=platform.platform(), rounds=args.rounds, load=_load(),
                command="python -m experiments.bench_strategies " + " ".join(
                    f"--cases {' '.join(cases)}".split() + [f"--rounds {args.rounds}"]))
    rows = []
    for name in cases:
        rows += run_case(name, CASES[name], args.strategies, args.rounds, min_time=args.min_time,
                         max_rounds=args.max_rounds)
    base = os.path.join(args.out, f"bench_strategies_{backend}{args.suffix}")
    if args.merge and os.path.exists(base + ".json"):
        with open(base + ".json") as fh:
            old = json.load(fh)
        rerun = {r["case"] for r in rows}
        rows = [r for r in old["rows"] if r["case"] not in rerun] + rows
        rows.sort(key=lambda r: list(CASES).index(r["case"]) if r["case"] in CASES else len(CASES))
        meta["merged"] = True
    atomic.write_json(base + ".json", dict(meta=meta, rows=rows))
    atomic.write_text(base + ".md", to_markdown(rows, meta))
    print(f"wrote {base}.json and {base}.md")


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
