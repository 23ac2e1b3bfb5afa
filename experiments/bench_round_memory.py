"""A large round's memory traffic: minor page faults, process CPU time, wall time and peak memory per
round, this tree against a baseline tree in the same invocation (issue 24, item 1).

    python -m experiments.bench_round_memory --baseline-src /path/to/older/checkout
    python -m experiments.bench_round_memory --n 2000 --attack ipm        # smaller, any attack

Setting: Fashion-MNIST, the MLP (d = 101,770), `n` clients all sampled (IID, one local step each,
B = 16), f = 0.1 n, `attack` + `defence`, no evaluation until the end. Each tree runs in a fresh
process: a 1-round `simulate` (compiles), then a 1-round and a 3-round one; the figures per round
are the difference between the last two divided by 2 (so compilation, data loading and the final
evaluation cancel). Minor page faults count the fresh memory a round touches (on XLA:CPU every
program output is a new allocation, and first-touch faults cost ~1 s per GB here); they do not
depend on the machine's load, unlike the times. `train` / `server` are the two programs' median
times over the 3-round run's rounds (`Settings(time_halves=True)`: each half waited for).

Writes `experiments/results/bench_round_memory_cpu.{md,json}` (or `--tag`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "experiments", "results")

_CHILD = r"""
import json, resource, statistics, sys, time
from strike_jax import config, simulate
from strike_jax.simulation import Settings
n, attack, defence = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def cfg(rounds):
    return config.Config(dataset="fashion_mnist", model="mlp", num_clients=n, clients_per_round=n, partition="iid",
                         rounds=rounds, batch_size=16, lr=0.05, momentum=0.9, clip_norm=2.0, byzantine_ratio=0.1,
                         attack=attack, defence=defence, eval_every=1000, local_steps=1)
try:
    settings = Settings(time_halves=True)
except TypeError:
    settings = None
def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt, time.perf_counter()
run = lambda rounds: simulate(cfg(rounds), settings=settings) if settings else simulate(cfg(rounds))
run(1)
a = usage(); run(1); b = usage(); res = run(3); c = usage()
per = [((c[i] - b[i]) - (b[i] - a[i])) / 2 for i in range(3)]
halves = [(h.get("time_train_s"), h.get("time_server_s")) for h in res["rounds"] if h["round"] >= 0]
med = lambda xs: statistics.median(xs) if xs and None not in xs else None
print(json.dumps({"cpu_s": per[0], "minor_faults": per[1], "wall_s": per[2],
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "train_s": med([t for t, _ in halves]), "server_s": med([s for _, s in halves]),
                  "strategy": res["batch"]["strategy"], "final_accuracy": res["final_accuracy"]}))
"""


def measure(src: str, n: int, attack: str, defence: str, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, str(n), attack, defence], cwd=src, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{src}: exit {p.returncode}\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    return out


def _commit(src: str) -> str:
    p = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return p.stdout.strip() or src


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="clients per round (default 10,000)")
    ap.add_argument("--attack", default="lie")
    ap.add_argument("--defence", default="median")
    ap.add_argument("--baseline-src", default=None, help="another checkout, measured first in the same invocation")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args(argv)
    trees = [("baseline", os.path.abspath(args.baseline_src))] if args.baseline_src else []
    trees.append(("this tree", REPO_ROOT))
    d = 101_770
    matrix_gib = args.n * d * 4 / 2**30
    load0 = os.getloadavg()
    rows = []
    for label, src in trees:
        r = measure(src, args.n, args.attack, args.defence, args.timeout)
        r.update(label=label, commit=_commit(src))
        rows.append(r)
        print(f"{label} ({r['commit']}): {r['minor_faults'] * 4096 / 2**30:.2f} GiB of page faults a round, "
              f"CPU {r['cpu_s']:.2f} s, wall {r['wall_s']:.2f} s, train {r['train_s']} s, server {r['server_s']} s, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    load1 = os.getloadavg()
    cmd = "python -m experiments.bench_round_memory " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# A large round's memory traffic (`{cmd.strip()}`)", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs; load average "
             f"{', '.join(f'{x:.1f}' for x in load0)} at start, {', '.join(f'{x:.1f}' for x in load1)} at end. "
             f"Fashion-MNIST MLP (d = {d:,}), n = {args.n:,} clients (IID, one local step each), "
             f"{args.attack} + {args.defence}, f = {args.n // 10:,}; the update matrix is {matrix_gib:.2f} GiB. "
             "Per round: the difference between a 3-round and a 1-round run in one process, halved. Page "
             "faults do not depend on the load; times do.", "",
             "| tree | commit | strategy | page faults a round (GiB) | process CPU a round (s) | wall a round (s) "
             "| train program (s) | server program (s) | peak RSS (GiB) | peak RSS / matrix | final accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['label']} | {r['commit']} | {r['strategy']} | {r['minor_faults'] * 4096 / 2**30:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['wall_s']:.2f} | {fmt(r['train_s'])} | {fmt(r['server_s'])} | "
                     f"{r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / matrix_gib:.2f}x | {r['final_accuracy']:.4f} |")
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, f"bench_round_memory_{args.tag}")
    from strike_jax.atomic import write_text

    write_text(stem + ".md", "\n".join(lines) + "\n")
    write_text(stem + ".json", json.dumps({"command": cmd.strip(), "n": args.n, "d": d, "attack": args.attack,
                                           "defence": args.defence, "matrix_gib": matrix_gib, "rows": rows,
                                           "load": [load0, load1]}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
