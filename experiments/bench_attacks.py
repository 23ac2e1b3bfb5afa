"""The attacks' cost (SPEC §8 "The attack's cost"; paper Appendix C: 12.11 s per STRIKE call,
13.47 s MinMax, 13.35 s MinSum on ImageNet-12, A100).

    python experiments/bench_attacks.py                          # paper sizes: d = 2.47e6, 11.2e6
    python experiments/bench_attacks.py --dims 1e5,1e6 --repeats 3

For every `d` (n = 50 clients, f = 10 Byzantine by default) on synthetic skewed updates it times,
as the median of `--repeats` calls after compilation:

* `strike`, `minmax`, `minsum`: the registry attacks' jitted `apply` (the whole `[n, d]` result,
  the input buffer donated as in the simulation; a fresh copy is made before each call, untimed);
* `strike` stages: mean + lower median (`search_direction`), the centred one-pass statistics
  (`hidden_vector`), and the bisection alone;
* `numpy_strike`: STRIKE written straightforwardly in NumPy as the reference code does it (direct
  distances for the diameter and for every bisection step, a lower median by `np.partition`, a
  Python bisection loop), fewer repeats (`--numpy-repeats`) since it is slow;

and checks that the NumPy and JAX Byzantine rows agree. Writes
`experiments/results/bench_attacks_<backend>.{json,md}` (atomically).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from strike_jax.atomic import write_json, write_text  # noqa: E402
from strike_jax import attacks  # noqa: E402
from strike_jax.attacks import strike as strike_stages  # noqa: E402

PAPER_DIMS = (2_472_266, 11_182_668)  # AlexNet-CIFAR, ResNet-18 (SPEC §5)


# ------------------------------------------------------------------------------------ NumPy STRIKE


def numpy_strike(u: np.ndarray, byz: np.ndarray, nu: float = 1.0, tol: float = 1e-5):
    """STRIKE as the reference code writes it (SPEC §6), in NumPy. Returns (matrix, alpha)."""
    honest = u[~byz]
    f = int(byz.sum())
    h = honest.shape[0]
    mu = honest.mean(axis=0)
    k = (h - 1) // 2
    med = np.partition(honest, k, axis=0)[k]
    direction = med - mu
    proj = honest @ (direction / np.linalg.norm(direction))
    order = np.argsort(-proj, kind="stable")[: h - f]
    s = honest[order]
    g_s = s.mean(axis=0)
    dev = np.sign(g_s - mu) * s.std(axis=0)
    diameter = max(float(np.linalg.norm(s - s[i], axis=1).max()) for i in range(s.shape[0]))

    def F(a):
        return float(np.linalg.norm(g_s + a * dev - s, axis=1).max()) - diameter

    lo, hi = 0.0, 1.0
    for _ in range(60):
        if F(hi) >= 0:
            break
        lo, hi = hi, 2.0 * hi
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if F(mid) <= 0:
            lo = mid
        else:
            hi = mid
    out = u.copy()
    out[byz] = g_s + nu * lo * dev
    return out, lo


# ---------------------------------------------------------------------------------------- helpers


def skewed_updates(n: int, d: int, seed: int = 0) -> np.ndarray:
    """`[n, d]` float32 updates with a skewed (exponential) component, like non-IID FL updates."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(d, dtype=np.float32) * 1e-2
    direction = rng.standard_normal(d, dtype=np.float32) * 1e-2
    e = rng.exponential(size=(n, 1)).astype(np.float32)
    u = rng.standard_normal((n, d), dtype=np.float32)
    u *= 5e-3
    u += base
    u += e * direction
    return u


def _median_time(fn, repeats, setup=None):
    times = []
    out = None
    for _ in range(repeats):
        args = setup() if setup is not None else ()
        gc.collect()
        t0 = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
        del args
    return out, statistics.median(times), times


def _parse_dims(text: str) -> list[int]:
    dims = []
    for part in text.split(","):
        part = part.strip()
        if part:
            dims.append(int(round(float(part))))
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"--dims {text!r}: need positive numbers, e.g. 1e5,1e6")
    return dims


# ------------------------------------------------------------------------------------------ bench


def bench_dim(n: int, f: int, d: int, repeats: int, numpy_repeats: int) -> dict:
    u_host = skewed_updates(n, d)
    byz_host = np.zeros(n, bool)
    byz_host[:f] = True
    u = jnp.asarray(u_host)
    byz = jnp.asarray(byz_host)
    copy = jax.jit(lambda x: x + 0.0)
    rec: dict = {"n": n, "f": f, "d": d, "bytes": int(u_host.nbytes), "times_s": {}, "compile_s": {}}

    def fresh():
        x = copy(u)
        x.block_until_ready()
        return (x,)

    for name in ("strike", "minmax", "minsum"):
        attack = attacks.get(name)
        fn = jax.jit(lambda x, m, _a=attack: _a.apply(x, m, (), key=None)[0], donate_argnums=0)
        t0 = time.perf_counter()
        compiled = fn.lower(u, byz).compile()
        rec["compile_s"][name] = time.perf_counter() - t0
        out, med, times = _median_time(lambda x: compiled(x, byz), repeats, fresh)
        rec["times_s"][name] = {"median": med, "all": times}
        if name == "strike":
            strike_row = np.asarray(out[0])
        del out

    # STRIKE's stages, separately (the median dominates on CPU).
    ref = ~byz
    search = jax.jit(strike_stages.search_direction)
    sd, med, times = _median_time(lambda: search(u, ref), repeats)
    rec["times_s"]["strike/search_direction"] = {"median": med, "all": times}
    sel = jax.jit(strike_stages.select_skewed)(u, ref, sd.direction, (n - f) - f)
    hidden = jax.jit(strike_stages.hidden_vector)
    hv, med, times = _median_time(lambda: hidden(u, sel.skewed_mask, sd.mean), repeats)
    rec["times_s"]["strike/hidden_vector"] = {"median": med, "all": times}
    bis = lambda: strike_stages.bisect_alpha(hv.sq_dists, hv.dots, hv.dev_sq_norm, hv.diameter_sq,
                                              sel.skewed_mask)
    alpha, med, times = _median_time(bis, repeats)
    rec["times_s"]["strike/bisection"] = {"median": med, "all": times}
    rec["alpha_jax"] = float(alpha)
    del sd, sel, hv

    if numpy_repeats > 0:
        (np_out, np_alpha), med, times = _median_time(lambda: numpy_strike(u_host, byz_host), numpy_repeats)
        rec["times_s"]["numpy_strike"] = {"median": med, "all": times}
        rec["alpha_numpy"] = float(np_alpha)
        diff = np.linalg.norm(np_out[0].astype(np.float64) - strike_row)
        rec["rel_diff_numpy_vs_jax"] = float(diff / max(np.linalg.norm(np_out[0].astype(np.float64)), 1e-30))
        del np_out
    del u, byz, u_host
    gc.collect()
    return rec


def to_markdown(result: dict) -> str:
    lines = [
        "# Attack cost (`experiments/bench_attacks.py`)",
        "",
        f"Backend `{result['backend']}` ({result['device']}), jax {result['jax_version']}, "
        f"{result['platform']}; n = {result['n']}, f = {result['f']}; median of {result['repeats']} "
        f"calls after compilation (NumPy: {result['numpy_repeats']}). Seconds.",
        "",
        "| d | STRIKE | MinMax | MinSum | NumPy STRIKE | speed-up | STRIKE: mean+median | "
        "one-pass stats | bisection | alpha (JAX / NumPy) | rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        t = r["times_s"]
        get = lambda k: t[k]["median"] if k in t else float("nan")
        np_t = get("numpy_strike")
        speed = np_t / get("strike") if math.isfinite(np_t) else float("nan")
        lines.append(
            f"| {r['d']:,} | {get('strike'):.3f} | {get('minmax'):.3f} | {get('minsum'):.3f} | "
            f"{np_t:.3f} | {speed:.1f}x | {get('strike/search_direction'):.3f} | "
            f"{get('strike/hidden_vector'):.3f} | {get('strike/bisection') * 1e3:.2f} ms | "
            f"{r['alpha_jax']:.5f} / {r.get('alpha_numpy', float('nan')):.5f} | "
            f"{r.get('rel_diff_numpy_vs_jax', float('nan')):.1e} |"
        )
    lines += [
        "",
        "Paper (Appendix C, one A100, ImageNet-12 / ResNet-18): STRIKE 12.11 s, MinMax 13.47 s, "
        "MinSum 13.35 s per call.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=_parse_dims, default=list(PAPER_DIMS),
                   help="comma-separated dimensions d (default: the paper's 2472266,11182668)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    p.add_argument("--numpy-repeats", type=int, default=None,
                   help="timed NumPy STRIKE calls (default min(repeats, 3); 0 skips it)")
    p.add_argument("--n", type=int, default=50, help="clients per round (default 50)")
    p.add_argument("--f", type=int, default=10, help="Byzantine clients (default 10)")
    p.add_argument("--results-dir", default=os.path.join(REPO_ROOT, "experiments", "results"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not 0 <= args.f < args.n:
        p.error("need 0 <= f < n")
    numpy_repeats = min(args.repeats, 3) if args.numpy_repeats is None else args.numpy_repeats
    backend = jax.default_backend()
    result = {
        "backend": backend,
        "device": str(jax.devices()[0].device_kind),
        "jax_version": jax.__version__,
        "platform": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "n": args.n,
        "f": args.f,
        "repeats": args.repeats,
        "numpy_repeats": numpy_repeats,
        "runs": [],
    }
    for d in args.dims:
        print(f"d = {d:,} ...", flush=True)
        rec = bench_dim(args.n, args.f, d, args.repeats, numpy_repeats)
        result["runs"].append(rec)
        print("  " + ", ".join(f"{k} {v['median']:.4f}s" for k, v in rec["times_s"].items()), flush=True)
    base = os.path.join(args.results_dir, f"bench_attacks_{backend}")
    write_json(base + ".json", result, indent=2)
    write_text(base + ".md", to_markdown(result))
    print(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
