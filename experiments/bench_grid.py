"""Time to a table: where an attack x defence grid's wall time goes (issue 18), before vs after.

Each case runs in a fresh process (imports included), with a persistent compilation cache that is
empty ("cold") or filled by the cold run ("warm"), from this checkout and, with `--baseline-src`,
from another one (e.g. a `git worktree` of an older commit) in the same invocation. The wall time
is split into:

- imports + data: from the process start to the first compiled program's tracing;
- tracing + lowering: JAX's `jaxpr_trace_duration` + `jaxpr_to_mlir_module_duration` events;
- XLA compile: `backend_compile_duration` events (on the compiling threads too: programs compiled
  ahead of time overlap with rounds, so the parts can add up to more than the wall);
- strategy choice: `auto`'s timing calibration where it ran (`calibration_s` of the results);
- rounds: the runs' round times after their first round;
- host overhead: the rest.

It also counts the programs compiled (and those taking 0.5 s or more to compile).

  python -m experiments.bench_grid                                  # demo, table1_quick, worst_case_small
  python -m experiments.bench_grid --cases demo --baseline-src /tmp/strike_jax_before
  python -m experiments.bench_grid --forms                          # the cost model of ops.Backend.for_run

Writes experiments/results/bench_grid_<platform>.md and .json (with `--out`, elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

CASES = {
    # The README's main job: 8 attacks x 3 defences, digits, 20 rounds.
    "demo": ["strike_jax.cli", "demo"],
    # The quick Table 1: python -m experiments.table1 --seeds 1 --nu-grid 1.0 (49 runs).
    "table1_quick": ["experiments.table1", "--seeds", "1", "--nu-grid", "1.0"],
    # The worst-case protocol on digits over 8 rules x every default attack (5 rounds, STRIKE at nu = 1).
    "worst_case_small": ["experiments.worst_case", "--quick", "--defences",
                         "mean,median,trmean,krum,multikrum,rfa,dnc,cclip"],
    # The full worst-case digits table (20 rules x 15 attacks + none, 20 rounds, STRIKE nu in {0.5, 1, 2}).
    "worst_case": ["experiments.worst_case"],
    # The demo's grid on the generated `synthetic` data (no scikit-learn: the GPU machine's case).
    "synthetic_demo": ["synthetic"],
}
DEFAULT_CASES = ("demo", "table1_quick", "worst_case_small")
SUBSTANTIAL_S = 0.5


def child(case: str, results_dir: str) -> None:
    """One case in this fresh process; prints one JSON line of measurements."""
    t_start = time.perf_counter()
    import jax

    events: dict[str, list[float]] = {"trace": [], "lower": [], "compile": []}
    first_trace = []
    names = {"/jax/core/compile/jaxpr_trace_duration": "trace",
             "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
             "/jax/core/compile/backend_compile_duration": "compile"}

    def listener(event, duration, **kwargs):
        if event in names:
            if not first_trace:
                first_trace.append(time.perf_counter() - duration)
            events[names[event]].append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    import importlib

    module, *argv = CASES[case]
    if module == "strike_jax.cli":
        argv = argv + ["--out-dir", os.path.join(results_dir, "demo")]
    else:
        argv = argv + ["--results-dir", results_dir]
    import contextlib
    import io

    t0 = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if module == "synthetic":
            code = _synthetic_demo(results_dir)
        else:
            code = importlib.import_module(module).main(argv)
    wall = time.perf_counter() - t_start
    rounds_s = calibration_s = 0.0
    runs = 0
    for root, _, files in os.walk(results_dir):
        if "result.json" in files:
            with open(os.path.join(root, "result.json")) as fh:
                res = json.load(fh)
            runs += 1
            compile_rounds = set(res.get("compile_rounds", []))
            rounds_s += sum(h.get("time_round_s") or 0.0 for h in res["rounds"] if h["round"] not in compile_rounds)
            calibration_s += (res.get("batch") or {}).get("calibration_s") and sum(
                res["batch"]["calibration_s"].values()) if isinstance((res.get("batch") or {}).get("calibration_s"),
                                                                     dict) else 0.0
    imports = (first_trace[0] - t_start) if first_trace else t0 - t_start
    print(json.dumps({
        "case": case, "exit": code, "runs": runs, "wall_s": wall, "imports_data_s": imports,
        "trace_lower_s": sum(events["trace"]) + sum(events["lower"]), "compile_s": sum(events["compile"]),
        "programs": len(events["compile"]),
        "substantial_programs": sum(1 for c in events["compile"] if c >= SUBSTANTIAL_S),
        "calibration_s": calibration_s, "rounds_s": rounds_s,
    }))


def _synthetic_demo(results_dir: str) -> int:
    from strike_jax import simulate_many
    from strike_jax.cli import DEMO_ATTACKS, DEMO_DEFENCES
    from strike_jax.config import Config

    base = Config(dataset="synthetic", model="mlp", num_clients=20, clients_per_round=20, rounds=20,
                  byzantine_ratio=0.2, batch_size=32)
    configs = [base.replace(attack=a, defence=d) for a in DEMO_ATTACKS for d in DEMO_DEFENCES]
    simulate_many(configs, run_dirs=[os.path.join(results_dir, f"{c.attack}__{c.defence}") for c in configs])
    return 0


def measure(case: str, src: str, cache_dir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src, STRIKE_JAX_CACHE_DIR=cache_dir, JAX_PLATFORMS=os.environ.get(
        "JAX_PLATFORMS", "cpu"))
    with tempfile.TemporaryDirectory() as results:
        # This file runs the child whatever `src` is (an older checkout has no bench_grid); `src`
        # comes first on the path, so strike_jax and experiments are that checkout's.
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", case, "--results", results],
                           cwd=src, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{case} from {src} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["overhead_s"] = max(0.0, out["wall_s"] - out["imports_data_s"] - out["rounds_s"] - out["calibration_s"]
                            - out["trace_lower_s"] - out["compile_s"])
    return out


def forms(out_path: str | None) -> None:
    """Measures what `ops.Backend.for_run` trades: compile and run time of the median (an order
    statistic per coordinate) by sorting network vs radix selection on CPU shapes."""
    import jax
    import jax.numpy as jnp

    from strike_jax import aggregators, ops

    rows = []
    for n in (10, 20, 50):
        for d in (10_000, 100_000):
            U = jax.random.normal(jax.random.PRNGKey(0), (n, d))
            for sort in ("network", "radix"):
                rule = aggregators.get("median", backend=ops.Backend(sort=sort))
                f = jax.jit(lambda u: rule.aggregate(u, (), f=n // 5, key=None)[0])
                t0 = time.perf_counter()
                compiled = f.lower(U).compile()
                c = time.perf_counter() - t0
                compiled(U).block_until_ready()
                reps = 20
                t0 = time.perf_counter()
                for _ in range(reps):
                    compiled(U).block_until_ready()
                r = (time.perf_counter() - t0) / reps
                rows.append({"n": n, "d": d, "sort": sort, "compile_s": c, "run_s": r})
                print(json.dumps(rows[-1]), flush=True)
    if out_path:
        with open(out_path, "w") as fh:
            json.dump(rows, fh, indent=1)


def _table(rows: list[dict]) -> str:
    cols = ("case", "code", "cache", "runs", "wall_s", "imports_data_s", "trace_lower_s", "compile_s",
            "calibration_s", "rounds_s", "overhead_s", "programs", "substantial_programs")
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = ""
    for r in rows:
        body += "| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |\n"
    return head + body


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(DEFAULT_CASES))
    p.add_argument("--baseline-src", help="another checkout to measure in the same run (e.g. the commit before)")
    p.add_argument("--warm", action="store_true", help="also rerun each case on the cache its cold run filled")
    p.add_argument("--out", help="result file stem (default experiments/results/bench_grid_<platform>)")
    p.add_argument("--forms", action="store_true", help="measure the network/radix cost model instead")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.results)
        return 0
    if args.forms:
        forms(args.out and args.out + ".json")
        return 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = [("after", here)] + ([("before", os.path.abspath(args.baseline_src))] if args.baseline_src else [])
    rows = []
    for case in args.cases:
        for code, src in sources:
            with tempfile.TemporaryDirectory() as cache:
                for cache_state in ("cold", "warm") if args.warm else ("cold",):
                    r = measure(case, src, cache)
                    r.update(code=code, cache=cache_state)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    import jax

    plat = jax.default_backend()
    stem = args.out or os.path.join(here, "experiments", "results", f"bench_grid_{plat}")
    from strike_jax import atomic

    atomic.write_json(stem + ".json", {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                       "rows": rows})
    cmd = "python -m experiments.bench_grid " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic.write_text(stem + ".md", f"# Time to a table ({plat}, {os.cpu_count()} CPUs)\n\n`{cmd}`\n\n" + _table(rows))
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
