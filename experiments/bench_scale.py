"""Round time and peak memory against the clients per round `n`, on 1 and several devices (issue 13).

Every point runs in a fresh subprocess (the host device count, `XLA_FLAGS`, is fixed when jax
starts, and the peak resident memory, `resource.getrusage(...).ru_maxrss`, is the process's own):
`simulate` of a config with `n` clients sampled among `n` (synthetic data, one natural client per
sampled client, an MLP), `--rounds` rounds; the round time is the median of the rounds after the
first (compiling) one, split into local training and the server step (attack + rule + update: the
aggregators' share of the round). With several devices the clients are sharded over a
`jax.sharding.Mesh` (`Config.num_devices`), and the server step runs on the row-sharded `[n, d]`
matrix in each `--layouts` layout (`simulation.Settings.server_layout`: "rows", XLA's partitioner on the
training's sharding; "columns", re-sharded along the coordinates first; "replicated", gathered):
the measured comparison of gathered vs sharded for the rule.

CPU numbers: the "devices" of one host share its cores (`--xla_force_host_platform_device_count`),
so several devices measure the sharded program's overhead, not a speed-up; a multi-GPU host or
several hosts are where sharding pays. Timings on a shared machine are noisy: compare the rows of
one run only. Writes `experiments/results/bench_scale_<backend>.{json,md,png}`.

Usage:
  python -m experiments.bench_scale                                   # n in 10..10000, 1 and 4 devices
  python -m experiments.bench_scale --n 10,100 --devices 1 --rounds 3 --tag quick
  python -m experiments.bench_scale --dataset fashion_mnist --n 10000 --devices 1   # d = 101,770
  python -m experiments.bench_scale --rules --rules-n 10000 --rules-d 1000          # every rule alone
  python -m experiments.bench_scale --server-parts --n 10000 --server-d 20000 --server-f 2000 --baseline-src ../main
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _config(args, n: int, devices: int):
    from strike_jax.config import Config

    extra = {} if args.local_steps is None else {"local_steps": args.local_steps}
    common = dict(**extra, model=args.model, clients_per_round=n, num_clients=n, rounds=args.rounds, attack=args.attack,
                  defence=args.defence, byzantine_ratio=0.1, strategy=args.strategy, eval_every=1,
                  max_test_samples=200, seed=0, num_devices=devices, batch_size=args.batch_size,
                  partition="natural" if args.dataset == "synthetic" else "iid")
    if args.dataset == "synthetic":
        return Config(dataset="synthetic", dataset_params={"num_clients": n, "samples_per_client": args.samples,
                                                           "image_shape": [8, 8, 1], "num_test": 200}, **common)
    return Config(dataset=args.dataset, **common)


def _device_peak_gib():
    """The first device's peak allocation where the backend reports one (GPU; None on CPU)."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    return stats["peak_bytes_in_use"] / (1 << 30) if "peak_bytes_in_use" in stats else None


def child(args) -> None:
    """One point, in this (fresh) process: prints one JSON line."""
    import resource

    import jax
    import numpy as np

    from strike_jax import simulation

    # The two halves of a round are dispatched back to back; here the host waits for each, to time
    # them apart (a few ms of lost overlap, the same for every point).
    settings = simulation.Settings(server_layout=args.layout, time_halves=True)
    t0 = time.perf_counter()
    r = simulation.simulate(_config(args, args.n, args.num_devices), settings=settings)
    wall = time.perf_counter() - t0
    steady = r["rounds"][1:]  # the first round compiles
    med = lambda xs: float(np.median(xs)) if len(xs) else None  # noqa: E731
    out = {"n": args.n, "devices": args.num_devices, "layout": args.layout,
           "round_s": med([h["time_round_s"] for h in steady]),
           "train_s": med([h["time_train_s"] for h in steady]), "server_s": med([h["time_server_s"] for h in steady]),
           "first_round_s": r["rounds"][0]["time_round_s"], "wall_s": wall,
           "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20),
           "lanes": r["batch"]["lanes"], "batch_slots": r["batch"]["batch_slots"],
           "strategy": r["batch"]["strategy"],
           "device_peak_gib": _device_peak_gib(),
           "final_accuracy": r["final_accuracy"], "backend": jax.default_backend(),
           "device_kind": jax.devices()[0].device_kind}
    print("RESULT " + json.dumps(out), flush=True)


def rules(args) -> None:
    """Every rule and pre-aggregator (then the mean) alone on a random `[n, d]` matrix, `f = n / 10`
    traced, in this process: compile and run time, peak RSS. Bulyan (cubic in n) is skipped above
    `--bulyan-max-rows`; rules with a row limit report its error."""
    import resource

    import jax
    import jax.numpy as jnp

    from strike_jax import aggregators

    n, d = args.rules_n, args.rules_d
    U = jax.random.normal(jax.random.PRNGKey(0), (n, d))
    lines = [f"# Every rule at n = {n:,}, d = {d:,} (f = n/10, traced), {jax.default_backend()}", "",
             f"One process, rules one after another; {os.cpu_count()} cores shared with other jobs (noisy). Peak RSS "
             "is the process's so far (monotone).", "", "| rule | compile (s) | run (s) | peak RSS (GiB) | note |",
             "|---|---|---|---|---|"]
    for name in aggregators.names() + aggregators.PREAGGREGATORS:
        if name == "bulyan" and n > args.bulyan_max_rows:
            lines.append(f"| {name} | - | - | - | not run: O(n^3) (n - 2f Krum selections over [n, n]) |")
            continue
        try:
            agg = aggregators.get(name, **({"num_clients": n} if name == "foolsgold" else {}))
            if name in aggregators.PREAGGREGATORS:
                agg = aggregators.chain(agg, aggregators.get("mean"))
            st = agg.init(U)

            def run(U, st, f, key, agg=agg):
                return agg.aggregate(U, st, f=f, key=key, clients=jnp.arange(n), root_update=U[0])[0]

            t0 = time.perf_counter()
            c = jax.jit(run).lower(U, st, jnp.int32(n // 10), jax.random.PRNGKey(1)).compile()
            tc = time.perf_counter() - t0
            t0 = time.perf_counter()
            g = jax.block_until_ready(c(U, st, jnp.int32(n // 10), jax.random.PRNGKey(1)))
            tr = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
            note = "" if bool(jnp.isfinite(g).all()) else "non-finite output"
            lines.append(f"| {name} | {tc:.2f} | {tr:.3f} | {rss:.2f} | {note} |")
        except ValueError as e:
            lines.append(f"| {name} | - | - | - | refused: {str(e).splitlines()[0]} |")
        print(lines[-1], flush=True)
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"bench_scale_rules_{jax.default_backend()}.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


#: The median's radix search cut to 8 of its 32 steps (for the cost of one step). An older
#: `--baseline-src` tree lacks the helper argument it needs, so this part may be missing.
RADIX8 = "median's radix search, 8 of its 32 bits"
SERVER_PARTS = ("one pass: ones(n) @ U", "Gram of the skewed rows", "median", RADIX8, "lie + median",
                "strike + median")


def server_parts(args) -> None:
    """The server step's parts at `--n` x `--server-d` with `f = --server-f` Byzantine rows, in this
    process (one JSON line): one pass over `U` (`ones(n) @ U`, the unit of "passes"), the Gram
    product of STRIKE's `n - 2f` skewed rows (`S @ S.T`, its floor), the Median alone, and the
    whole server step (`server.server_step`: attack, rule, metrics) for LIE + Median and STRIKE +
    Median. Each part is compiled first, then timed `--server-repeats` times (wall and process CPU
    time, which includes the kernel's page faults); the peak RSS is read after each part (monotone)."""
    import resource

    import jax
    import jax.numpy as jnp

    from experiments.bench_attacks import skewed_updates
    from strike_jax import aggregators, attacks, ops, server, stages

    n, d, f = args.n if isinstance(args.n, int) else int(args.n), args.server_d, args.server_f
    U = jnp.asarray(skewed_updates(n, d))
    byz = jnp.arange(n) < f
    key = jax.random.PRNGKey(1)
    w = jnp.zeros((d,), jnp.float32)

    def step(attack):
        pipe = stages.chain(attacks.get(attack), aggregators.get("median"))
        st = pipe.init(U)
        return jax.jit(lambda u: server.server_step(w, u, byz, st, key, pipe)[0])

    parts = {
        "one pass: ones(n) @ U": jax.jit(lambda u: jnp.ones((n,), u.dtype) @ u),
        "Gram of the skewed rows": jax.jit(lambda u: (lambda s: s @ s.T)(u[2 * f:])),
        "median": jax.jit(lambda u: ops.lower_median(u)),
    }
    from strike_jax.ops import order as order_mod
    from strike_jax.ops.blocks import scan_columns

    if (ops.sort_method(n, U.dtype) == "radix"
            and "bits" in inspect.signature(order_mod._radix_select_block).parameters):
        # The median's own blocks and keys, with its 32-step bit search cut to 8 steps (not a median:
        # (median - this) / 24 is what one step of the search costs).
        chunk = ops.resolve(None).column_chunk(n, d)

        def radix8(u):
            piece = lambda xb, cols: (order_mod._radix_select_block(xb, ((n - 1) // 2,), bits=8)[0], ())  # noqa: E731
            return scan_columns(u, piece, (), chunk=chunk)[0]

        parts[RADIX8] = jax.jit(radix8)
    parts |= {
        "lie + median": step("lie"),
        "strike + median": step("strike"),
    }
    out = {"n": n, "d": d, "f": f, "parts": {}}
    for name, fn in parts.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(U))
        rec = {"first_s": time.perf_counter() - t0, "wall_s": [], "cpu_s": []}
        for _ in range(args.server_repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(U))
            rec["wall_s"].append(time.perf_counter() - t0)
            rec["cpu_s"].append(time.process_time() - c0)
        rec["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
        out["parts"][name] = rec
        print(name, json.dumps(rec), file=sys.stderr, flush=True)
    print("RESULT " + json.dumps(out), flush=True)


def server_table(results: list[tuple[str, dict]], args) -> str:
    """Markdown of `server_parts` results (one column pair per source tree)."""
    import statistics

    r0 = results[0][1]
    lines = [f"# The server step's parts at n = {r0['n']:,}, d = {r0['d']:,}, f = {r0['f']:,} (Median rule)", "",
             f"`python -m experiments.bench_scale --server-parts --n {r0['n']} --server-d {r0['d']} --server-f "
             f"{r0['f']} --server-repeats {args.server_repeats}" + (" --baseline-src <main checkout>"
                                                                  if len(results) > 1 else "") + "`; "
             f"{os.cpu_count()} cores, shared (load at the start: {_load()}). Median of the repeats; passes = "
             "time / time of one pass (`ones(n) @ U`) in the same process; CPU time is the process's (all "
             "threads, page faults included). Peak RSS: the process's so far (monotone, parts in this order); "
             f"the update matrix is {r0['n'] * r0['d'] * 4 / (1 << 30):.2f} GiB.", "",
             "| tree | part | wall (s) | CPU (s) | passes (wall) | passes (CPU) | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|"]
    for tree, res in results:
        p = res["parts"]
        one_w = statistics.median(p[SERVER_PARTS[0]]["wall_s"])
        one_c = statistics.median(p[SERVER_PARTS[0]]["cpu_s"])
        for name in SERVER_PARTS:
            if name == RADIX8 and name not in p:
                continue
            wl, cp = statistics.median(p[name]["wall_s"]), statistics.median(p[name]["cpu_s"])
            lines.append(f"| {tree} | {name} | {wl:.3f} | {cp:.3f} | {wl / one_w:.1f} | {cp / one_c:.1f} | "
                         f"{p[name]['max_rss_gib']:.2f} |")
        bound = {}
        for kind, one in (("wall_s", one_w), ("cpu_s", one_c)):
            gram = statistics.median(p["Gram of the skewed rows"][kind])
            bound[kind] = (1.5 * gram + 40 * one, statistics.median(p["strike + median"][kind]))
        if RADIX8 in p:
            med, short = statistics.median(p["median"]["wall_s"]), statistics.median(p[RADIX8]["wall_s"])
            step = (med - short) / 24
            lines.append(f"| {tree} | one step of the median's radix search: (median - 8 steps) / 24 | {step:.3f} | | "
                         f"{step / one_w:.2f} | | 32 steps: {32 * step / one_w:.1f} passes of the median's "
                         f"{med / one_w:.1f} |")
        verdict = ", ".join(f"{'met' if t >= v else 'not met'} by {k[:-2]} time" for k, (t, v) in bound.items())
        lines.append(f"| {tree} | target: STRIKE + Median <= 1.5 x Gram + 40 passes | {bound['wall_s'][0]:.3f} | "
                     f"{bound['cpu_s'][0]:.3f} | | | {verdict} |")
    return "\n".join(lines) + "\n"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_server_parts(args) -> None:
    """`--server-parts`: a fresh process per source tree (`--baseline-src` first when given)."""
    trees = [("after", ROOT)]
    if args.baseline_src:
        trees.insert(0, (f"before ({args.baseline_src})", args.baseline_src))
    results = []
    for tree, src in trees:
        # This file runs as a script; `strike_jax` (and experiments.bench_attacks) come from `src`.
        env = dict(os.environ, PYTHONPATH=src, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        cmd = [sys.executable, os.path.abspath(__file__), "--server-parts-child", "--n", str(args.n), "--server-d",
               str(args.server_d), "--server-f", str(args.server_f), "--server-repeats", str(args.server_repeats)]
        proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=args.timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{tree}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        results.append((tree, json.loads(lines[-1][len("RESULT "):])))
    os.makedirs(args.results_dir, exist_ok=True)
    name = f"bench_scale_server_{args.tag or 'cpu'}"
    from strike_jax import atomic

    atomic.write_json(os.path.join(args.results_dir, name + ".json"), {"args": vars(args), "results": results})
    md = server_table(results, args)
    atomic.write_text(os.path.join(args.results_dir, name + ".md"), md)
    print(md)


def _point(args, n: int, devices: int, layout: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    if args.backend == "cpu":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "experiments.bench_scale", "--child", "--n", str(n), "--num-devices", str(devices),
           "--layout", layout, "--rounds", str(args.rounds), "--dataset", args.dataset, "--model", args.model,
           "--attack", args.attack, "--defence", args.defence, "--samples", str(args.samples),
           "--batch-size", str(args.batch_size), "--strategy", args.strategy]
    if args.local_steps is not None:
        cmd += ["--local-steps", str(args.local_steps)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"n": n, "devices": devices, "layout": layout, "error": err[:300], "wall_s": time.perf_counter() - t0}
    return json.loads(lines[-1][len("RESULT "):])


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def write_tables(rows: list[dict], args, path: str) -> None:
    lines = [f"# Round time and peak memory against n ({args.dataset}, {args.model}, attack {args.attack}, "
             f"rule {args.defence}, {args.rounds} rounds)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, backend "
             f"{args.backend}; shared with other jobs while measured (noisy: compare rows of this table only). "
             "Round time: median of the rounds after the first (compiling) one; memory: the process's peak "
             "resident set (`ru_maxrss`, host memory; on CPU the devices' buffers live there).", "",
             "| n | devices | server layout | round (s) | training (s) | server (s) | server share | first round (s) "
             "| peak RSS (GiB) | device peak (GiB) | strategy | lanes | accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['devices']} | {r['layout']} | error: {r['error']} |||||||||")
            continue
        share = r["server_s"] / r["round_s"] if r.get("server_s") and r.get("round_s") else None
        lines.append(f"| {r['n']} | {r['devices']} | {r['layout']} | {_fmt(r['round_s'])} | {_fmt(r['train_s'])} | "
                     f"{_fmt(r['server_s'])} | {_fmt(share, '.0%')} | {_fmt(r['first_round_s'], '.1f')} | "
                     f"{_fmt(r['max_rss_gib'], '.2f')} | {_fmt(r.get('device_peak_gib'), '.2f')} | "
                     f"{r.get('strategy', 'packed')} | {r['lanes']} | "
                     f"{_fmt(r['final_accuracy'])} |")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    keys = sorted({(r["devices"], r["layout"]) for r in rows if "error" not in r})
    for D, layout in keys:
        pts = sorted((r["n"], r) for r in rows if "error" not in r and r["devices"] == D and r["layout"] == layout)
        ns = [p[0] for p in pts]
        label = f"{D} device{'s' if D > 1 else ''}" + (f", {layout}" if D > 1 else "")
        ax1.plot(ns, [p[1]["round_s"] for p in pts], "o-", label=label)
        ax1.plot(ns, [p[1]["server_s"] for p in pts], "x:", color=ax1.lines[-1].get_color())
        ax2.plot(ns, [p[1]["max_rss_gib"] for p in pts], "o-", label=label)
    for ax, title in ((ax1, "round time (s); dotted: server step"), (ax2, "peak resident memory (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients per round n")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", default="10,100,1000,10000", help="clients per round, comma-separated")
    p.add_argument("--devices", default="1,4", help="device counts, comma-separated")
    p.add_argument("--layouts", default="rows,replicated", help="server layouts measured with several devices")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--model", default="mlp")
    p.add_argument("--attack", default="lie")
    p.add_argument("--defence", default="median")
    p.add_argument("--samples", type=int, default=16, help="synthetic: samples per client")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--strategy", default="auto", help="the training strategy (Config.strategy)")
    p.add_argument("--local-steps", dest="local_steps", type=int, default=None,
                   help="every client takes this many steps (Config.local_steps); default: one epoch")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    p.add_argument("--backend", default=None, help="cpu (host devices from XLA_FLAGS) or gpu (default: jax's)")
    p.add_argument("--tag", default=None, help="suffix of the result files")
    p.add_argument("--results-dir", dest="results_dir", default=os.path.join(HERE, "results"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--rules", action="store_true", help="instead: time every rule alone at --rules-n x --rules-d")
    p.add_argument("--rules-n", dest="rules_n", type=int, default=10000)
    p.add_argument("--rules-d", dest="rules_d", type=int, default=1000)
    p.add_argument("--bulyan-max-rows", dest="bulyan_max_rows", type=int, default=2000)
    p.add_argument("--server-parts", dest="server_parts", action="store_true",
                   help="instead: time the server step's parts (pass, Gram of S, Median, LIE/STRIKE + Median)")
    p.add_argument("--server-d", dest="server_d", type=int, default=20000)
    p.add_argument("--server-f", dest="server_f", type=int, default=2000)
    p.add_argument("--server-repeats", dest="server_repeats", type=int, default=2)
    p.add_argument("--baseline-src", dest="baseline_src", default=None,
                   help="--server-parts: also run these parts on another checkout's strike_jax (before)")
    p.add_argument("--server-parts-child", dest="server_parts_child", action="store_true", help=argparse.SUPPRESS)
    # child mode (one point per fresh process)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--num-devices", dest="num_devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--layout", default="rows", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.n = int(args.n)
        return child(args)
    if args.server_parts_child:
        args.n = int(args.n)
        return server_parts(args)
    if args.server_parts:
        args.n = int(args.n)
        return run_server_parts(args)
    if args.rules:
        return rules(args)
    if args.backend is None:
        import jax

        args.backend = jax.default_backend()
    rows = []
    for n in [int(x) for x in args.n.split(",")]:
        for D in [int(x) for x in args.devices.split(",")]:
            for layout in (args.layouts.split(",") if D > 1 else ["rows"]):
                r = _point(args, n, D, layout)
                rows.append(r)
                print(json.dumps(r), flush=True)
    name = f"bench_scale_{args.backend}" + (f"_{args.tag}" if args.tag else "")
    os.makedirs(args.results_dir, exist_ok=True)
    out = os.path.join(args.results_dir, name)
    with open(out + ".json", "w") as fh:
        json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    write_tables(rows, args, out + ".md")
    if not args.no_plot:
        plot(rows, out + ".png")
    print(open(out + ".md").read())


if __name__ == "__main__":
    main()
