"""`python -m strike_jax.data info NAME [--clients N] [--beta B | --iid | --natural] ...`.

Prints shapes, dtypes, preprocessing, load time, and a summary of the per-client counts;
`python -m strike_jax.data names` lists the data sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from strike_jax import data


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strike_jax.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("names", help="list the data sets")
    info = sub.add_parser("info", help="load a data set and summarise it and a client split")
    info.add_argument("name", help=f"one of {', '.join(data.names())}")
    info.add_argument("--data-dir", default=None, help="data folder (source-specific)")
    info.add_argument("--dtype", default=None, choices=("float32", "uint8"), help="storage dtype")
    info.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                      help="extra loader argument (JSON value), e.g. --opt image_size=32")
    info.add_argument("--clients", type=int, default=None, help="number of clients (Dirichlet/IID)")
    group = info.add_mutually_exclusive_group()
    group.add_argument("--beta", type=float, default=0.5, help="Dirichlet concentration (default 0.5)")
    group.add_argument("--iid", action="store_true", help="IID split")
    group.add_argument("--natural", action="store_true", help="the data set's natural clients")
    info.add_argument("--seed", type=int, default=0)
    info.add_argument("--batch-size", type=int, default=128)
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    if args.command == "names":
        print("\n".join(data.names()))
        return 0

    kwargs = {}
    if args.data_dir is not None:
        kwargs["data_dir"] = args.data_dir
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    for item in args.opt:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--opt expects KEY=VALUE, got {item!r}")
        kwargs[key] = _parse_value(value)
    t0 = time.perf_counter()
    try:
        ds = data.load(args.name, **kwargs)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {"dataset": ds.summary(), "load_seconds": round(load_s, 3)}

    # --natural / --iid explicit; else Dirichlet when --clients is given; else the natural split
    # when the data set has one; else no split.
    if args.natural or (args.clients is None and not args.iid and ds.client_ids is not None):
        split = "natural"
    else:
        split = "iid" if args.iid else "dirichlet"
    if split == "natural" or args.clients is not None:
        t0 = time.perf_counter()
        try:
            part = data.make_partition(ds, args.clients if split != "natural" else None,
                                       split=split, beta=args.beta, seed=args.seed)
            cd = data.make_client_data(part, args.batch_size)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        out["partition"] = part.summary(ds.y_train)
        out["partition"]["beta"] = args.beta if split == "dirichlet" else None
        out["partition_seconds"] = round(time.perf_counter() - t0, 3)
        out["client_data"] = {
            "index_shape": list(cd.index.shape),
            "index_bytes": int(cd.index.nbytes),
            "batch_size": cd.batch_size,
            "num_steps": cd.num_steps,
            "schedule_bytes_all_clients": data.schedule_nbytes(cd.num_clients, cd),
        }

    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    d = out["dataset"]
    print(f"{d['name']}: loaded in {out['load_seconds']:.2f} s ({d['nbytes'] / 2**20:.1f} MiB)")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        print(f"  {key:8s} {tuple(d[key][0])} {d[key][1]}")
    print(f"  classes  {d['num_classes']}")
    print(f"  preprocessing: {d['preprocessing']}")
    if d["natural_clients"] is not None:
        print(f"  natural clients: {d['natural_clients']}")
    if "partition" in out:
        p = out["partition"]
        how = f"Dirichlet beta={p['beta']}" if p["kind"] == "dirichlet" else p["kind"]
        print(f"split: {how}, {p['num_clients']} clients, seed {args.seed} "
              f"({out['partition_seconds']:.2f} s, {p['tries']} draw(s))")
        print(f"  samples per client: min {p['min']}  median {p['median']:g}  mean {p['mean']:.1f}  max {p['max']}")
        print(f"  classes per client: mean {p['classes_per_client_mean']:.2f}  min {p['classes_per_client_min']}")
        c = out["client_data"]
        print(f"  index table {tuple(c['index_shape'])} int32 = {c['index_bytes'] / 2**20:.2f} MiB; "
              f"B={c['batch_size']}, S={c['num_steps']} steps/round; schedule for all clients "
              f"{c['schedule_bytes_all_clients'] / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    np.set_printoptions(linewidth=120)
    sys.exit(main())
