"""Peer timings for `bench_aggregators.py --suite byzpy`: ByzFL and ByzPy on ByzPy's workloads.

Runs in the *peers'* interpreter (a separate virtual environment with torch, byzfl 0.0.11 and
byzpy 0.1.4; never the project's), started by `bench_aggregators.py --suite byzpy` as

    PEER_PYTHON experiments/peers_byzpy.py --spec SPEC.json --out OUT.json

`SPEC.json` lists the workloads (`key`, `n`, `d`, `f`, `data`: a `.npy` file of the `[n, d]`
float32 inputs that strike_jax also gets), the repeats, the ActorPool sizes and the timeout.
For every workload and library it times the call as ByzPy's `benchmarks/` scripts do (a list
of `n` torch vectors; ByzFL's `__call__`, ByzPy's `aggregate` / `pre_aggregate` / `apply` for the
direct path, and `NodeScheduler.run` over a single-operator graph on an `ActorPool` of process
actors for the pool path), after one warm-up call; it records the median wall and process CPU
time of the timed calls and saves each output next to the data (`<data>.<lib>.npy`) so that the
caller can compare it with strike_jax's. Imports only NumPy, torch and the peers: a library that
does not import is reported as such (`error`), not raised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time
import traceback

import numpy as np


def _byzfl_ops():
    from byzfl.aggregators import aggregators as A
    from byzfl.aggregators import preaggregators as P
    from byzfl.attacks import attacks as K

    return {
        "mda": lambda w: A.MDA(f=w["f"]),
        "smea": lambda w: A.SMEA(f=w["f"]),
        "arc": lambda w: P.ARC(f=w["f"]),
        "trmean": lambda w: A.TrMean(f=w["f"]),
        "median": lambda w: A.Median(),
        "multikrum": lambda w: A.MultiKrum(f=w["f"]),
        "geomed": lambda w: A.GeometricMedian(),
        "caf": lambda w: A.CAF(f=w["f"]),
        "monna": lambda w: A.MoNNA(f=w["f"], idx=0),
        "cclip": lambda w: A.CenteredClipping(L=w["iters"], tau=w["tau"]),
        "ipm": lambda w: K.InnerProductManipulation(tau=w["tau"]),
        "lie": lambda w: K.ALittleIsEnough(tau=w["tau"]),
        "gaussian": lambda w: K.Gaussian(mu=0.0, sigma=1.0),
        "nnm": lambda w: P.NNM(f=w["f"]),
        "meamed": lambda w: A.Meamed(f=w["f"]),
        "bucketing": lambda w: P.Bucketing(s=w["s"]),
        "clipping": lambda w: P.Clipping(c=w["c"]),
    }


def _byzpy_ops():
    """`key -> (constructor, kind)`; chunk sizes as in ByzPy's README commands."""
    from byzpy.aggregators.coordinate_wise.mean_of_medians import MeanOfMedians
    from byzpy.aggregators.coordinate_wise.median import CoordinateWiseMedian
    from byzpy.aggregators.coordinate_wise.trimmed_mean import CoordinateWiseTrimmedMean
    from byzpy.aggregators.geometric_wise.geometric_median import GeometricMedian
    from byzpy.aggregators.geometric_wise.krum import MultiKrum
    from byzpy.aggregators.geometric_wise.minimum_diameter_average import MinimumDiameterAveraging
    from byzpy.aggregators.geometric_wise.monna import MoNNA
    from byzpy.aggregators.geometric_wise.smea import SMEA
    from byzpy.aggregators.norm_wise.caf import CAF
    from byzpy.aggregators.norm_wise.center_clipping import CenteredClipping
    from byzpy.aggregators.norm_wise.comparative_gradient_elimination import ComparativeGradientElimination
    from byzpy.attacks.empire import EmpireAttack
    from byzpy.attacks.gaussian import GaussianAttack
    from byzpy.attacks.little import LittleAttack
    from byzpy.pre_aggregators.arc import ARC
    from byzpy.pre_aggregators.bucketing import Bucketing
    from byzpy.pre_aggregators.clipping import Clipping
    from byzpy.pre_aggregators.nnm import NearestNeighborMixing

    return {
        "mda": (lambda w: MinimumDiameterAveraging(f=w["f"], chunk_size=256), "agg"),
        "smea": (lambda w: SMEA(f=w["f"], chunk_size=256), "agg"),
        "arc": (lambda w: ARC(f=w["f"], chunk_size=256), "pre"),
        "trmean": (lambda w: CoordinateWiseTrimmedMean(f=w["f"], chunk_size=8192), "agg"),
        "median": (lambda w: CoordinateWiseMedian(chunk_size=8192), "agg"),
        "multikrum": (lambda w: MultiKrum(f=w["f"], q=w["q"], chunk_size=20), "agg"),
        "geomed": (lambda w: GeometricMedian(chunk_size=8), "agg"),
        "caf": (lambda w: CAF(f=w["f"], chunk_size=32), "agg"),
        "monna": (lambda w: MoNNA(f=w["f"], reference_index=0, chunk_size=32), "agg"),
        "cclip": (lambda w: CenteredClipping(c_tau=w["tau"], M=w["iters"], chunk_size=32), "agg"),
        "cge": (lambda w: ComparativeGradientElimination(f=w["f"], chunk_size=16384), "agg"),
        "ipm": (lambda w: EmpireAttack(scale=-w["tau"], chunk_size=32), "attack"),
        "lie": (lambda w: LittleAttack(f=w["f"], chunk_size=8192), "attack"),
        "gaussian": (lambda w: GaussianAttack(seed=0, chunk_size=16384), "attack"),
        "nnm": (lambda w: NearestNeighborMixing(f=w["f"], feature_chunk_size=2048), "pre"),
        "meamed": (lambda w: MeanOfMedians(f=w["f"], chunk_size=8192), "agg"),
        "bucketing": (lambda w: Bucketing(bucket_size=w["s"]), "pre"),
        "clipping": (lambda w: Clipping(threshold=w["c"]), "pre"),
    }


def _as_array(out) -> np.ndarray:
    if isinstance(out, (list, tuple)):
        return np.stack([_as_array(o) for o in out])
    if hasattr(out, "detach"):
        return out.detach().cpu().numpy()
    return np.asarray(out)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def _time(call, repeats: int, timeout: float) -> dict:
    """Warm-up call, then up to `repeats` timed calls; the whole stops after `timeout` seconds
    (SIGALRM: the peers' loops are Python, so the alarm interrupts them)."""
    walls, cpus, out = [], [], None
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        out = call()  # warm-up (also the output we keep)
        for _ in range(repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            call()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    except _Timeout:
        if not walls:
            return {"status": f"timeout: no timed call finished within {timeout:g} s"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"status": "ok", "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "walls": walls, "out": out}


def _run_one(lib: str, w: dict, grads, repeats: int, timeout: float, loop, pool) -> dict:
    if lib == "byzfl":
        ops = _byzfl_ops()
        if w["key"] not in ops:
            return {"status": "not implemented in ByzFL 0.0.11"}
        op = ops[w["key"]](w)
        return _time(lambda: op(grads), repeats, timeout)
    ops = _byzpy_ops()
    if w["key"] not in ops:
        return {"status": "not implemented in ByzPy 0.1.4"}
    make, kind = ops[w["key"]]
    op = make(w)
    if pool is None:
        if kind == "agg":
            return _time(lambda: op.aggregate(grads), repeats, timeout)
        if kind == "pre":
            return _time(lambda: op.pre_aggregate(grads), repeats, timeout)
        return _time(lambda: op.apply(honest_grads=grads), repeats, timeout)
    from byzpy.engine.graph.ops import make_single_operator_graph
    from byzpy.engine.graph.scheduler import NodeScheduler

    key = "honest_grads" if kind == "attack" else op.input_key
    graph = make_single_operator_graph(node_name="op", operator=op, input_keys=(key,))
    sched = NodeScheduler(graph, pool=pool)
    return _time(lambda: loop.run_until_complete(sched.run({key: grads}))["op"], repeats, timeout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    with open(args.spec) as fh:
        spec = json.load(fh)
    report = {"versions": {}, "results": []}
    libs = []
    try:
        import torch

        report["versions"]["torch"] = torch.__version__
        report["versions"]["torch_threads"] = torch.get_num_threads()
    except Exception as exc:  # noqa: BLE001 - any import failure means: no peer columns
        report["error"] = f"torch does not import: {exc!r}"
        with open(args.out, "w") as fh:
            json.dump(report, fh)
        return 0
    for lib, mod in (("byzfl", "byzfl"), ("byzpy", "byzpy")):
        try:
            __import__(mod)
            from importlib.metadata import version  # the installed distribution (byzpy's __version__ lags)

            report["versions"][lib] = version(mod)
            libs.append(lib)
        except Exception as exc:  # noqa: BLE001
            report["versions"][lib] = f"does not import: {exc!r}"
    loop = asyncio.new_event_loop()
    pools = {}
    if "byzpy" in libs:
        for count in spec["pool_workers"]:
            try:
                from byzpy.engine.graph.pool import ActorPool, ActorPoolConfig

                pool = ActorPool([ActorPoolConfig(backend="process", count=count)])
                loop.run_until_complete(pool.start())
                pools[count] = pool
            except Exception as exc:  # noqa: BLE001
                report["versions"][f"byzpy pool x{count}"] = f"does not start: {exc!r}"
    for w in spec["workloads"]:
        x = np.load(w["data"])
        grads = [torch.from_numpy(row.copy()) for row in x]
        columns = [("byzfl", None)] if "byzfl" in libs else []
        if "byzpy" in libs:
            columns += [("byzpy", None)] + [(f"byzpy pool x{c}", pool) for c, pool in pools.items()]
        for name, pool in columns:
            lib = name.split()[0]
            try:
                res = _run_one(lib, w, grads, spec["repeats"], spec["timeout"], loop, pool)
            except Exception as exc:  # noqa: BLE001 - a peer failing on a row is a result
                res = {"status": f"error: {type(exc).__name__}: {exc}"[:300]}
                traceback.print_exc()
            out = res.pop("out", None)
            if out is not None:
                path = f"{w['data']}.{name.replace(' ', '_')}.npy"
                np.save(path, _as_array(out).astype(np.float32))
                res["out"] = path
            res.update(workload=w["key"], lib=name)
            report["results"].append(res)
            print(f"  {w['key']:10s} {name:14s} {res['status'][:40]:40s} "
                  f"{res.get('wall_s', float('nan')) * 1e3:9.2f} ms", flush=True)
    for pool in pools.values():
        loop.run_until_complete(pool.shutdown())
    loop.close()
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
