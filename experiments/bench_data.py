"""Data-layer benchmark: load time and memory of a data set, and the cost of splitting it over
clients (partition, index table, per-round batch schedules).

    python experiments/bench_data.py                       # Fashion-MNIST, 50 and 1000 clients
    python experiments/bench_data.py --dataset digits --clients 10,100

For each storage dtype (float32 final values, uint8 raw) the load is timed (median of
`--repeats`) and its memory reported as the arrays' bytes and the process RSS growth. For each
client count and split (Dirichlet beta=0.5 and IID) it reports the partition time and retries,
the per-client sample counts, the index table (`[N, max_m]` int32) and the time and bytes of one
round's plan (`strike_jax.training.schedule`: sampling, permutations, the per-client `[n, S, B]`
layout, drawn on the device; compiled once before timing) for `n = min(N, 50)` sampled clients and
for all `N` clients.
Writes `experiments/results/bench_data.{json,md}` (atomically).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from strike_jax.atomic import write_text  # noqa: E402
from strike_jax import data  # noqa: E402
from strike_jax.training import schedule  # noqa: E402


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def bench_load(name, kwargs, repeats):
    rows = []
    for dtype in ("float32", "uint8"):
        gc.collect()
        before = _rss()
        ds, med, times = _timed(lambda: data.load(name, dtype=dtype, **kwargs), repeats)
        after = _rss()
        rows.append({
            "dtype": dtype,
            "load_s_median": med,
            "load_s_all": times,
            "array_bytes": ds.nbytes,
            "x_train_bytes": int(ds.x_train.nbytes),
            "rss_growth_bytes": after - before,
            "rss_bytes": after,
            "summary": ds.summary(),
        })
        if dtype == "float32":
            kept = ds
        del ds
    return kept, rows


def bench_split(ds, num_clients, split, beta, seed, batch_size, sample, repeats):
    part, t_part, _ = _timed(
        lambda: data.make_partition(ds, num_clients, split=split, beta=beta, seed=seed), repeats)
    cd, t_cd, _ = _timed(lambda: data.make_client_data(part, batch_size), repeats)
    n = min(num_clients, sample)
    _, t_sched, _ = _timed(_round_plan(cd, n, seed), repeats)
    _, t_all, _ = _timed(_round_plan(cd, num_clients, seed), repeats)
    counts = part.counts()
    return {
        "clients": num_clients,
        "split": "dirichlet" if split == "dirichlet" else "iid",
        "beta": beta if split == "dirichlet" else None,
        "partition_s": t_part,
        "tries": part.tries,
        "counts_min": int(counts.min()),
        "counts_median": float(np.median(counts)),
        "counts_max": int(counts.max()),
        "classes_per_client_mean": float((part.class_counts(ds.y_train, ds.num_classes) > 0).sum(1).mean()),
        "client_data_s": t_cd,
        "index_shape": list(cd.index.shape),
        "index_bytes": int(cd.index.nbytes),
        "num_steps": cd.num_steps,
        "sampled": n,
        "schedule_s": t_sched,
        "schedule_bytes": data.schedule_nbytes(n, cd),
        "schedule_all_s": t_all,
        "schedule_all_bytes": data.schedule_nbytes(num_clients, cd),
    }


def _round_plan(cd, per_round, seed):
    """A call drawing round 1's plan of `per_round` clients on the device (compiled here, not timed)."""
    B, E, S = cd.batch_size, cd.local_epochs, cd.num_steps

    @jax.jit
    def plan(index, counts, r):
        cb = schedule.client_batches(index, counts, seed, r, per_round=per_round, batch_size=B, local_epochs=E)
        return schedule.padded_schedule(cb, batch_size=B, num_steps=S)

    index, counts = jnp.asarray(cd.index), jnp.asarray(cd.counts)
    jax.block_until_ready(plan(index, counts, 0))
    return lambda: jax.block_until_ready(plan(index, counts, 1))


def _mib(b):
    return f"{b / 2**20:.2f}"


def to_markdown(result) -> str:
    lines = [
        f"# Data-layer benchmark: {result['dataset']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; timings under contention from other jobs, compare within this file only.",
        "",
        "## Load (median of repeats)",
        "",
        "| storage | load (s) | arrays (MiB) | x_train (MiB) | RSS growth (MiB) | preprocessing |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["load"]:
        lines.append(
            f"| {r['dtype']} | {r['load_s_median']:.2f} | {_mib(r['array_bytes'])} | {_mib(r['x_train_bytes'])} | "
            f"{_mib(r['rss_growth_bytes'])} | {r['summary']['preprocessing']} |"
        )
    lines += [
        "",
        f"## Splits (batch size {result['batch_size']}, seed {result['seed']})",
        "",
        "| clients | split | partition (s) | tries | m min / median / max | classes/client | index table | "
        "index (MiB) | S | schedule n (ms) | schedule n (MiB) | schedule all N (ms) | all N (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["splits"]:
        split = f"Dirichlet {r['beta']}" if r["split"] == "dirichlet" else "IID"
        lines.append(
            f"| {r['clients']} | {split} | {r['partition_s']:.3f} | {r['tries']} | "
            f"{r['counts_min']} / {r['counts_median']:g} / {r['counts_max']} | {r['classes_per_client_mean']:.2f} | "
            f"{r['index_shape'][0]}x{r['index_shape'][1]} | {_mib(r['index_bytes'])} | {r['num_steps']} | "
            f"{1e3 * r['schedule_s']:.1f} (n={r['sampled']}) | {_mib(r['schedule_bytes'])} | "
            f"{1e3 * r['schedule_all_s']:.1f} | {_mib(r['schedule_all_bytes'])} |"
        )
    lines += [
        "",
        "Index table = N x max_m x 4 bytes; a schedule = n x S x B x 5 bytes (int32 index + bool mask).",
        "Images are never copied per client: training gathers from the one shared x_train.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--clients", default="50,1000", help="comma-separated client counts")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sample", type=int, default=50, help="clients per round for the schedule timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results-dir", default=os.path.join(REPO_ROOT, "experiments", "results"))
    args = parser.parse_args(argv)

    kwargs = {} if args.data_dir is None else {"data_dir": args.data_dir}
    rss0 = _rss()
    try:
        ds, load_rows = bench_load(args.dataset, kwargs, args.repeats)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits = []
    for n in (int(s) for s in args.clients.split(",")):
        for split in ("dirichlet", "iid"):
            row = bench_split(ds, n, split, args.beta, args.seed, args.batch_size, args.sample, args.repeats)
            splits.append(row)
            print(f"{n:5d} clients {split:9s}: partition {row['partition_s']:.3f}s ({row['tries']} tries), "
                  f"m {row['counts_min']}..{row['counts_max']}, index {_mib(row['index_bytes'])} MiB, "
                  f"S={row['num_steps']}, schedule(n={row['sampled']}) {1e3 * row['schedule_s']:.1f} ms")
    result = {
        "dataset": args.dataset,
        "command": ("python experiments/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "batch_size": args.batch_size,
        "seed": args.seed,
        "rss_start_bytes": rss0,
        "rss_end_bytes": _rss(),
        "load": load_rows,
        "splits": splits,
    }
    for r in load_rows:
        print(f"load {r['dtype']}: {r['load_s_median']:.2f} s, arrays {_mib(r['array_bytes'])} MiB, "
              f"RSS +{_mib(r['rss_growth_bytes'])} MiB")
    base = os.path.join(args.results_dir, "bench_data")
    write_text(base + ".json", json.dumps(result, indent=1) + "\n")
    write_text(base + ".md", to_markdown(result))
    print(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
