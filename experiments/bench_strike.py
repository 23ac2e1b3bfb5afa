"""STRIKE's cost per pass on this machine, before and after the fused first pass (issue 9).

    python -m experiments.bench_strike                       # n = 50, f = 10, d = 2.47e6 and 11.2e6
    python -m experiments.bench_strike --dims 1e6 --repeats 3 --tag quick

For every `d`, on the synthetic skewed updates of `experiments/bench_attacks.py`, interleaved in
the same process (so both columns see the same machine load):

* `strike`: `strike_vector(..., fused=False)` (before: the code as it was: mean, median and scores
  as separate passes, the Gram matrix of all n rows) against `fused=True` (after: stage 1 as one
  blocked pass, `strike._search_and_scores`, and the Gram matrix of the rows of S only); the Byzantine vectors and alphas are compared;
* the parts: one pass over `U` (`ones(n) @ U`, the memory floor of a pass), stage 1 unfused and
  fused, the one-pass centred statistics with the Gram matrix of all rows (`hidden_vector`), of
  the rows of S only (`compact=True`) and without it.

Each time is the median over `--repeats` calls after compilation, as wall time and as this
process's CPU time (all threads; on a machine shared with other jobs the CPU time is the steadier
figure, the wall time what a user waits). Writes `experiments/results/bench_strike_<tag>.{json,md}`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments._machine import loaded  # noqa: E402
from experiments.bench_attacks import PAPER_DIMS, _parse_dims, skewed_updates  # noqa: E402
from strike_jax import ops  # noqa: E402
from strike_jax.atomic import write_json, write_text  # noqa: E402
from strike_jax.attacks import strike as st  # noqa: E402


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _timed(fn, args, repeats):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, walls, cpus


def bench_dim(n: int, f: int, d: int, repeats: int, rounds: int) -> dict:
    u = jnp.asarray(skewed_updates(n, d))
    byz = jnp.zeros(n, bool).at[:f].set(True)
    ref = ~byz
    backend = ops.resolve(None)
    parts = {
        "strike (before: fused=False)": (jax.jit(lambda x, m: st.strike_vector(x, m, fused=False)[:2]), (u, byz)),
        "strike (after: fused=True)": (jax.jit(lambda x, m: st.strike_vector(x, m, fused=True)[:2]), (u, byz)),
        "one pass: ones(n) @ U": (jax.jit(lambda x: jnp.ones((n,), x.dtype) @ x), (u,)),
        "stage 1 unfused: mean, median, scores": (
            jax.jit(lambda x, m: st._search_and_scores_unfused(x, m, backend)), (u, ref)),
        "stage 1 fused": (jax.jit(lambda x, m: st._search_and_scores(x, m, None, backend)), (u, ref)),
    }
    sel = jax.jit(lambda x, m: st.select_skewed(x, m, st.search_direction(x, m).direction, (n - f) - f))(u, ref)
    mean = jax.jit(ops.masked_mean)(u, ref)
    parts["hidden_vector (stats + Gram)"] = (jax.jit(st.hidden_vector), (u, sel.skewed_mask, mean))
    parts["hidden_vector, Gram of S only (compact)"] = (
        jax.jit(lambda x, s, mu: st.hidden_vector(x, s, mu, compact=True)), (u, sel.skewed_mask, mean))
    parts["stats without Gram"] = (
        jax.jit(lambda x, s, mu: ops.column_stats(x, ops.mean_weights(s, x.dtype), mu, gram=False)[:3]),
        (u, sel.skewed_mask, mean))
    rec = {"n": n, "f": f, "d": d, "bytes": int(n * d * 4), "compile_s": {}, "wall_s": {}, "cpu_s": {}}
    outs = {}
    for name, (fn, args) in parts.items():
        t0 = time.perf_counter()
        outs[name] = jax.block_until_ready(fn(*args))
        rec["compile_s"][name] = time.perf_counter() - t0
        rec["wall_s"][name], rec["cpu_s"][name] = [], []
    for _ in range(rounds):  # interleaved: every part sees the same stretch of machine load
        for name, (fn, args) in parts.items():
            _, walls, cpus = _timed(fn, args, repeats)
            rec["wall_s"][name] += walls
            rec["cpu_s"][name] += cpus
        print(f"  d={d:,} round done, load {_load()}", flush=True)
    (v0, a0), (v1, a1) = outs["strike (before: fused=False)"], outs["strike (after: fused=True)"]
    v0, v1 = np.asarray(v0, np.float64), np.asarray(v1, np.float64)
    rec["alpha_before"], rec["alpha_after"] = float(a0), float(a1)
    rec["vector_rel_diff"] = float(np.linalg.norm(v1 - v0) / max(np.linalg.norm(v0), 1e-30))
    s0, s1 = outs["stage 1 unfused: mean, median, scores"], outs["stage 1 fused"]
    rec["median_equal"] = bool(np.array_equal(np.asarray(s0[1]), np.asarray(s1[1])))
    rec["mean_max_abs_diff"] = float(np.max(np.abs(np.asarray(s0[0]) - np.asarray(s1[0]))))
    del u, outs, parts
    gc.collect()
    return rec


# ------------------------------------------------- before/after across two source trees (--baseline-src)

#: What each worker times (`--baseline-src`): STRIKE as its tree's default and both stage-1 forms,
#: the masked median alone and the one-pass floor. A tree without `fused=` gets only the default.
WORKER_PARTS = ("one pass: ones(n) @ U", "masked median", "strike (default)", "strike fused=True",
                "strike fused=False", "strike fused=False, compact=True")


def worker(n: int, f: int, d: int) -> int:
    """Line protocol on stdin/stdout: `time NAME REPEATS` -> one JSON line of walls and CPU times;
    `out` -> the default STRIKE vector's path (a .npy) for the comparison; `quit`. Compiles every
    part once first, so the parent can interleave two trees' calls round by round."""
    import inspect
    import tempfile

    u = jnp.asarray(skewed_updates(n, d))
    byz = jnp.zeros(n, bool).at[:f].set(True)
    ref = ~byz
    parts = {
        "one pass: ones(n) @ U": (jax.jit(lambda x: jnp.ones((n,), x.dtype) @ x), (u,)),
        "masked median": (jax.jit(lambda x, m: ops.masked_lower_median(x, m)), (u, ref)),
        "strike (default)": (jax.jit(lambda x, m: st.strike_vector(x, m)[:2]), (u, byz)),
    }
    if "fused" in inspect.signature(st.strike_vector).parameters:
        parts["strike fused=True"] = (jax.jit(lambda x, m: st.strike_vector(x, m, fused=True)[:2]), (u, byz))
        parts["strike fused=False"] = (jax.jit(lambda x, m: st.strike_vector(x, m, fused=False)[:2]), (u, byz))
    if "compact" in inspect.signature(st.strike_vector).parameters:
        parts["strike fused=False, compact=True"] = (
            jax.jit(lambda x, m: st.strike_vector(x, m, fused=False, compact=True)[:2]), (u, byz))
    outs = {}
    for name, (fn, args) in parts.items():
        t0 = time.perf_counter()
        outs[name] = jax.block_until_ready(fn(*args))
        print(json.dumps({"compiled": name, "s": time.perf_counter() - t0}), flush=True)
    print(json.dumps({"ready": list(parts)}), flush=True)
    for line in iter(input, "quit"):
        cmd = line.split()
        if cmd[0] == "time":
            name, reps = " ".join(cmd[1:-1]), int(cmd[-1])
            if name not in parts:
                print(json.dumps({"walls": [], "cpus": []}), flush=True)
                continue
            _, walls, cpus = _timed(*parts[name], reps)
            print(json.dumps({"walls": walls, "cpus": cpus}), flush=True)
        elif cmd[0] == "out":
            path = os.path.join(tempfile.gettempdir(), f"bench_strike_{os.getpid()}.npy")
            np.save(path, np.asarray(outs["strike (default)"][0]))
            print(json.dumps({"path": path, "alpha": float(outs["strike (default)"][1])}), flush=True)
    return 0


def bench_trees(n: int, f: int, d: int, baseline_src: str, repeats: int, rounds: int) -> dict:
    """Times `WORKER_PARTS` in a worker on `baseline_src` (before) and one on this tree (after),
    alternating part by part and round by round so that both see the same machine load."""
    import subprocess
    import sys

    def start(src):
        env = dict(os.environ, PYTHONPATH=src)
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--n", str(n), "--f", str(f),
                              "--dims", str(d)], cwd=src, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        compile_s = {}
        while True:
            msg = json.loads(p.stdout.readline())
            if "ready" in msg:
                return p, compile_s
            compile_s[msg["compiled"]] = msg["s"]

    def ask(p, line):
        p.stdin.write(line + "\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())

    procs = {}
    rec = {"n": n, "f": f, "d": d, "bytes": int(n * d * 4), "baseline_src": baseline_src, "trees": {}}
    for tree, src in (("before", baseline_src), ("after", REPO_ROOT)):
        procs[tree], comp = start(src)
        rec["trees"][tree] = {"compile_s": comp, "wall_s": {}, "cpu_s": {}}
    for r in range(rounds):
        for name in WORKER_PARTS:
            for tree in ("before", "after") if r % 2 == 0 else ("after", "before"):
                res = ask(procs[tree], f"time {name} {repeats}")
                t = rec["trees"][tree]
                t["wall_s"].setdefault(name, []).extend(res["walls"])
                t["cpu_s"].setdefault(name, []).extend(res["cpus"])
        print(f"  d={d:,} round {r + 1} done, load {_load()}", flush=True)
    vecs = {}
    for tree, p in procs.items():
        res = ask(p, "out")
        vecs[tree] = np.load(res["path"]).astype(np.float64)
        os.remove(res["path"])
        rec["trees"][tree]["alpha"] = res["alpha"]
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait()
    rec["vector_rel_diff"] = float(np.linalg.norm(vecs["after"] - vecs["before"])
                                   / max(np.linalg.norm(vecs["before"]), 1e-30))
    return rec


def trees_markdown(res: dict) -> str:
    env = res["env"]
    L = ["# STRIKE before/after (`experiments/bench_strike.py --baseline-src`)", "",
         f"Command: `{res['command']}`. Backend `{env['backend']}`, jax {env['jax']}, {env['platform']}, "
         f"{env['date']}. n = {res['n']}, f = {res['f']}; synthetic skewed updates "
         "(`experiments/bench_attacks.py`). *before*: the tree at `--baseline-src`; *after*: this tree; one "
         "worker process each, compiled once, their calls alternated part by part and round by round "
         f"({res['rounds']} rounds of {res['repeats']} calls; medians). **Shared, loaded machine**: load "
         f"average {env['load_start']} at start, {env['load_end']} at end, on 2 cores shared with other jobs; "
         "wall times carry that load (the process rarely has both cores), process CPU time (all threads) is "
         "the steadier figure. *passes*: CPU time over the same tree's one-pass CPU time (`ones(n) @ U`).", ""]
    for r in res["runs"]:
        L += [f"## d = {r['d']:,} ({r['bytes'] / 1e9:.2f} GB)", "",
              "| part | before wall (s) | before CPU (s) | before passes | after wall (s) | after CPU (s) | "
              "after passes |", "|---|---|---|---|---|---|---|"]
        one = {t: statistics.median(r["trees"][t]["cpu_s"]["one pass: ones(n) @ U"]) for t in ("before", "after")}
        for name in WORKER_PARTS:
            cells = []
            for t in ("before", "after"):
                w, c = r["trees"][t]["wall_s"].get(name), r["trees"][t]["cpu_s"].get(name)
                if not w:
                    cells += ["-", "-", "-"]
                    continue
                cm = statistics.median(c)
                cells += [f"{statistics.median(w):.3f}", f"{cm:.3f}", f"{cm / one[t]:.1f}"]
            L.append(f"| {name} | " + " | ".join(cells) + " |")
        L += ["", f"alpha before / after: {r['trees']['before']['alpha']:.6f} / {r['trees']['after']['alpha']:.6f}; "
              f"relative distance of the default Byzantine vectors: {r['vector_rel_diff']:.1e}."]
        forms = {k: statistics.median(v) for k, v in r["trees"]["after"]["wall_s"].items()
                 if k.startswith("strike fused")}
        if forms:
            best = min(forms, key=forms.get)
            L.append(f"Fastest form after, by wall time: `{best}` ("
                     + ", ".join(f"{k.split(' ', 1)[1]} {v:.3f} s" for k, v in forms.items()) + ").")
        L.append("")
    L += ["What limits it (after): the median's sorting network (now pruned to the one static rank, "
          "`ops.order._median_pads`: 4.6-7.7 passes' worth of CPU time), the Gram product of the ~30 rows "
          "of S and the centred statistics of stage 2 (together ~12-14), and stage 1's mean and scores. "
          "Every part works on blocks in cache; memory traffic is 2-3 reads of `U`. On this loaded machine a "
          "process rarely gets both cores (wall ~ CPU time), so the quiet-machine effect reported in issue "
          "24 (the unfused stage 1 spreading over both cores) cannot be seen here.", ""]
    return "\n".join(L)


def to_markdown(res: dict) -> str:
    env = res["env"]
    L = ["# STRIKE per pass, before and after the fused first pass (`experiments/bench_strike.py`)", "",
         f"Backend `{env['backend']}` ({env['device']}), jax {env['jax']}, {env['platform']}, "
         f"{env['date']}. n = {res['n']}, f = {res['f']}. Median of {res['repeats'] * res['rounds']} calls "
         f"per row after compilation, the rows interleaved ({res['rounds']} rounds of {res['repeats']}). "
         + (f"**Shared machine**: load average (1, 5, 15 min) {env['load_start']} at start, {env['load_end']} "
            "at end, on 2 CPUs; the wall times carry that load (compare within a column, same run); the process "
            "CPU time (both threads) is the steadier comparison." if loaded(env["load_start"], env["load_end"]) else
            f"Load average (1, 5, 15 min) {env['load_start']} at start, {env['load_end']} at end, on 2 CPUs "
            "(this benchmark's own threads included)."), ""]
    for r in res["runs"]:
        before, after = r["wall_s"]["strike (before: fused=False)"], r["wall_s"]["strike (after: fused=True)"]
        L += [f"## d = {r['d']:,} ({r['bytes'] / 1e9:.2f} GB)", "",
              "| part | wall (s) | CPU (s) | CPU / one pass |", "|---|---|---|---|"]
        one = statistics.median(r["cpu_s"]["one pass: ones(n) @ U"])
        for name in r["wall_s"]:
            w, c = statistics.median(r["wall_s"][name]), statistics.median(r["cpu_s"][name])
            L.append(f"| {name} | {w:.3f} | {c:.3f} | {c / one:.1f} |")
        L += ["", f"Before / after (wall): {statistics.median(before):.3f} s / {statistics.median(after):.3f} s. "
              f"alpha {r['alpha_before']:.6f} / {r['alpha_after']:.6f}; relative distance of the Byzantine "
              f"vectors {r['vector_rel_diff']:.1e}; medians identical: {r['median_equal']}; largest mean "
              f"difference {r['mean_max_abs_diff']:.1e}.", ""]
        cb = statistics.median(r["cpu_s"]["strike (before: fused=False)"])
        ca = statistics.median(r["cpu_s"]["strike (after: fused=True)"])
        L += [f"CPU time before / after: {cb:.3f} s / {ca:.3f} s ({cb / ca:.2f}x).", ""]
        L += _limits(r)
    return "\n".join(L)


def _limits(r: dict) -> list[str]:
    """What the parts say about STRIKE's cost, in passes (wall and CPU) of this run's one pass."""
    med = {k: {t: statistics.median(r[t][k]) for t in ("wall_s", "cpu_s")} for k in r["wall_s"]}
    one = med["one pass: ones(n) @ U"]
    need = ("strike (after: fused=True)", "stage 1 fused", "hidden_vector, Gram of S only (compact)",
            "stats without Gram")
    if any(k not in med for k in need):
        return []

    def passes(name, kind="wall_s"):
        return med[name][kind] / one[kind]

    gram = {t: (med[need[2]][t] - med[need[3]][t]) / one[t] for t in ("wall_s", "cpu_s")}
    return [f"Where STRIKE's time goes, in passes (wall / CPU): the whole attack {passes(need[0]):.1f} / "
            f"{passes(need[0], 'cpu_s'):.1f}; stage 1 (mean, the median's sorting network, scores) "
            f"{passes(need[1]):.1f} / {passes(need[1], 'cpu_s'):.1f}; stage 2's Gram product of S (compact "
            f"minus the statistics alone) {gram['wall_s']:.1f} / {gram['cpu_s']:.1f}; its centred statistics "
            f"{passes(need[3]):.1f} / {passes(need[3], 'cpu_s'):.1f}. `U` is read twice (stage 1, stage 2); "
            "the rest is arithmetic on blocks in cache.", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=_parse_dims, default=list(PAPER_DIMS),
                   help="comma-separated dimensions d (default: the paper's 2472266,11182668)")
    p.add_argument("--repeats", type=int, default=3, help="calls per part per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the parts")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--f", type=int, default=10)
    p.add_argument("--results-dir", default=os.path.join(REPO_ROOT, "experiments", "results"))
    p.add_argument("--tag", default="", help="suffix of the output files (default: the backend)")
    p.add_argument("--markdown-from", default="", help="rewrite the .md from this .json (no timing)")
    p.add_argument("--baseline-src", default="", help="time this tree against the source tree at this path "
                   "(e.g. /work/main), alternating calls in two worker processes")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.n, args.f, args.dims[0])
    if args.baseline_src:
        import sys

        env = dict(backend=jax.default_backend(), jax=jax.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC",
                   time.gmtime()), platform=f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
                   load_start=_load())
        res = {"n": args.n, "f": args.f, "repeats": args.repeats, "rounds": args.rounds, "env": env, "runs": [],
               "command": " ".join(["python -m experiments.bench_strike"] + sys.argv[1:])}
        for d in args.dims:
            print(f"d = {d:,} ...", flush=True)
            res["runs"].append(bench_trees(args.n, args.f, d, args.baseline_src, args.repeats, args.rounds))
        env["load_end"] = _load()
        base = os.path.join(args.results_dir, f"bench_strike_{args.tag or env['backend']}")
        write_json(base + ".json", res, indent=2)
        write_text(base + ".md", trees_markdown(res))
        print(f"wrote {base}.json and {base}.md")
        return 0
    if args.markdown_from:
        with open(args.markdown_from) as fh:
            res = json.load(fh)
        render = trees_markdown if res["runs"] and "trees" in res["runs"][0] else to_markdown
        write_text(args.markdown_from[:-len(".json")] + ".md", render(res))
        return 0
    if args.repeats < 1 or args.rounds < 1:
        p.error("--repeats and --rounds must be >= 1")
    if not 0 <= args.f < args.n:
        p.error(f"--f {args.f}: need 0 <= f < n = {args.n}")
    env = dict(backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), jax=jax.__version__,
               platform=f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
               date=time.strftime("%Y-%m-%d %H:%M"), load_start=_load())
    res = {"n": args.n, "f": args.f, "repeats": args.repeats, "rounds": args.rounds, "env": env, "runs": []}
    for d in args.dims:
        print(f"d = {d:,} ...", flush=True)
        rec = bench_dim(args.n, args.f, d, args.repeats, args.rounds)
        res["runs"].append(rec)
        for name in rec["wall_s"]:
            print(f"  {name:40s} wall {statistics.median(rec['wall_s'][name]):7.3f} s  "
                  f"cpu {statistics.median(rec['cpu_s'][name]):7.3f} s", flush=True)
    env["load_end"] = _load()
    base = os.path.join(args.results_dir, f"bench_strike_{args.tag or env['backend']}")
    write_json(base + ".json", res, indent=2)
    write_text(base + ".md", to_markdown(res))
    print(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
