"""The training half of a 10,000-client round alone: strategies and chunk sizes side by side (issue 24).

Fashion-MNIST (the real images), `n` IID clients of `m` images, one step each (B = 8), the MLP;
`training.make_plan_updates` of every (strategy, lanes) pair on the same round plans, interleaved
(two rounds each, a fresh plan each round); wall and process CPU time (all threads, the kernel's
page faults included: on this machine a fresh 4 GiB update matrix costs seconds of first-touch
faults). Checks that the strategies' rows agree (every 97th row).

  python -m experiments.bench_train_chunks --strategies packed,vmap --lanes 128,1024
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import data, models, training
from strike_jax.training import schedule

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--m", type=int, default=6, help="images per client")
    p.add_argument("--strategies", default="packed,vmap")
    p.add_argument("--lanes", default="128,1024", help="lanes (packed) / clients per chunk (vmap)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    args = p.parse_args(argv)
    n, m, B = args.n, args.m, 8
    ds = data.load("fashion_mnist")
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    index = np.arange(n * m, dtype=np.int32).reshape(n, m) % x.shape[0]
    counts = np.full(n, m, np.int32)
    model = models.get("mlp", 10, (28, 28, 1))
    cfg = training.LocalConfig(lr=0.05, momentum=0.9, weight_decay=1e-4, clip_norm=2.0, num_classes=10)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0))
    plan = jax.jit(lambda r: schedule.client_batches(jnp.asarray(index), jnp.asarray(counts), 0, r, per_round=n,
                                                     batch_size=B, local_epochs=1))
    flip = np.zeros(n, bool)
    ways = [(s, int(L)) for s in args.strategies.split(",") for L in args.lanes.split(",")]
    fns = {w: training.make_plan_updates(model, cfg, w[0], batch_size=B, lanes=w[1]) for w in ways}
    res: dict = {f"{s}/{L}": {"wall_s": [], "cpu_s": []} for s, L in ways}
    rows = {}
    for r in range(args.rounds):
        cb = plan(r)
        for w in ways:
            t0, c0 = time.perf_counter(), time.process_time()
            U, _ = fns[w](variables, x, y, cb, flip)
            U.block_until_ready()
            res[f"{w[0]}/{w[1]}"]["wall_s"].append(time.perf_counter() - t0)
            res[f"{w[0]}/{w[1]}"]["cpu_s"].append(time.process_time() - c0)
            if r == 0:
                rows[w] = np.asarray(U[::97])
            print(w, r, {k: round(v[-1], 2) for k, v in res[f"{w[0]}/{w[1]}"].items()}, flush=True)
            del U
            gc.collect()
    first = rows[ways[0]]
    diff = max(float(np.abs(v - first).max()) for v in rows.values())
    out = {"n": n, "m": m, "load": os.getloadavg(), "results": res, "max_abs_row_diff": diff,
           "note": "round 0 of each way includes its compilation"}
    print(json.dumps(out))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
